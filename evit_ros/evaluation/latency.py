"""End-to-end latency of a running node, measured from a recording of its inputs and outputs.

The node stamps each ``segmentation/labels`` message with the header stamp of the camera image it came
from. In a ``ros2 bag record`` of both topics, therefore:

* per-frame latency = record time of the output message - its header stamp (= the input's stamp): camera
  stamp to the moment the recorder received the result, i.e. transport + queueing + inference + publish;
* dropped frames = inputs whose stamp never appears on an output;
* output rate = (outputs - 1) / (last output record time - first output record time).

If the camera stamps with its own clock (not the recording machine's), latencies include the clock offset.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evit_ros.io.bagio import iter_bag_messages

__all__ = ["LatencyStats", "latency_from_bag", "latency_from_stamps", "merge_latency"]


@dataclass
class LatencyStats:
    """Latency summary; ``latencies_ms`` holds one value per output frame, in record order."""

    latencies_ms: np.ndarray
    inputs: int
    outputs: int
    dropped: int
    output_rate_hz: float
    input_rate_hz: float
    unmatched_outputs: int = 0
    percentiles: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        lat = self.latencies_ms
        for p in (50, 90, 99):
            self.percentiles[f"p{p}"] = float(np.percentile(lat, p)) if lat.size else math.nan

    @property
    def drop_ratio(self) -> float:
        return self.dropped / self.inputs if self.inputs else math.nan

    def to_dict(self) -> dict[str, float | int]:
        lat = self.latencies_ms
        out: dict[str, float | int] = dict(self.percentiles)
        out.update(
            mean=float(lat.mean()) if lat.size else math.nan,
            min=float(lat.min()) if lat.size else math.nan,
            max=float(lat.max()) if lat.size else math.nan,
        )
        return out


def _rate(times_ns: list[int]) -> float:
    if len(times_ns) < 2:
        return math.nan
    span = (max(times_ns) - min(times_ns)) / 1e9
    return (len(times_ns) - 1) / span if span > 0 else math.nan


def latency_from_stamps(inputs: list[tuple[int, int]], outputs: list[tuple[int, int]]) -> LatencyStats:
    """From ``(stamp_ns, recv_ns)`` of input and output messages (record order).

    Outputs whose stamp matches no input are counted in ``unmatched_outputs`` but still give a latency
    (their own record time minus stamp).
    """
    in_stamps = {s for s, _ in inputs}
    out_stamps = {s for s, _ in outputs}
    latencies = np.array([(recv - stamp) / 1e6 for stamp, recv in outputs], dtype=np.float64)
    return LatencyStats(
        latencies_ms=latencies,
        inputs=len(inputs),
        outputs=len(outputs),
        dropped=len(in_stamps - out_stamps),
        output_rate_hz=_rate([r for _, r in outputs]),
        input_rate_hz=_rate([r for _, r in inputs]),
        unmatched_outputs=len(out_stamps - in_stamps),
    )


def latency_from_bag(path: str | Path, input_topic: str, output_topic: str) -> LatencyStats:
    """Latency of ``output_topic`` relative to ``input_topic`` in a recording (see the module docstring)."""
    inputs: list[tuple[int, int]] = []
    outputs: list[tuple[int, int]] = []
    for topic, _, recv_ns, msg in iter_bag_messages(path, [input_topic, output_topic]):
        stamp = int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)
        (inputs if topic == input_topic else outputs).append((stamp, int(recv_ns)))
    if not outputs:
        raise ValueError(f"no messages on {output_topic} in {path}: cannot measure latency")
    return latency_from_stamps(inputs, outputs)


def merge_latency(stats: list[LatencyStats]) -> LatencyStats | None:
    """Several recordings as one: raw latencies concatenated (percentiles over all of them), counts summed.

    Rates combine as total intervals over total span, each recording's span being ``(n - 1) / rate``.
    """
    if not stats:
        return None
    if len(stats) == 1:
        return stats[0]

    def rate(pairs: list[tuple[int, float]]) -> float:
        spans = [(n - 1) / r for n, r in pairs if n > 1 and math.isfinite(r) and r > 0]
        intervals = sum(n - 1 for n, r in pairs if n > 1 and math.isfinite(r) and r > 0)
        return intervals / sum(spans) if spans and sum(spans) > 0 else math.nan

    return LatencyStats(
        latencies_ms=np.concatenate([s.latencies_ms for s in stats]),
        inputs=sum(s.inputs for s in stats),
        outputs=sum(s.outputs for s in stats),
        dropped=sum(s.dropped for s in stats),
        output_rate_hz=rate([(s.outputs, s.output_rate_hz) for s in stats]),
        input_rate_hz=rate([(s.inputs, s.input_rate_hz) for s in stats]),
        unmatched_outputs=sum(s.unmatched_outputs for s in stats),
    )
