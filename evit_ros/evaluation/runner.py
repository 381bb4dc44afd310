"""The scoring loop shared by every evaluation front end: work units in, exact per-source and total results out.

:func:`score_unit` scores one :class:`~evit_ros.evaluation.plan.WorkUnit` (in this process, or inside a Ray
actor: the same function); :func:`merge_results` sums the units' integer confusion matrices per source and
over the run, so the scores do not depend on how the work was split or where it ran, and concatenates the
raw latency samples (percentiles are taken over all of them, never averaged).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from evit_ros.evaluation.classmap import ClassMap
from evit_ros.evaluation.latency import LatencyStats, latency_from_bag, merge_latency
from evit_ros.evaluation.metrics import ConfusionAccumulator, scores_from_confusion
from evit_ros.evaluation.plan import EvalOptions, SourceFailure, SourcePlan, WorkUnit
from evit_ros.evaluation.report import EvalResult, Sample, SourceResult

__all__ = ["Progress", "UnitResult", "merge_results", "score_unit", "score_units"]


@dataclass
class UnitResult:
    """What scoring one unit gave: an integer confusion matrix and its frame count, or the error."""

    unit: WorkUnit
    frames: int = 0
    confusion: np.ndarray | None = None
    resized: int = 0
    samples: list[Sample] = field(default_factory=list)
    latency: LatencyStats | None = None
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    worker: str = ""


def _fit(pred: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    if pred.shape == shape:
        return pred, False
    return cv2.resize(pred, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST), True


def score_unit(
    unit: WorkUnit,
    options: EvalOptions,
    class_map: ClassMap,
    segmenter: Any | None = None,
    on_frame: Callable[[], None] | None = None,
) -> UnitResult:
    """Score one unit; the model runs on samples without a prediction.

    A source that cannot be read (or holds bad data) gives a result with ``error`` set rather than an
    exception, so one bad recording never stops a fleet run; ``KeyboardInterrupt`` still propagates.
    """
    t0 = time.perf_counter()
    out = UnitResult(unit, worker=f"{socket.gethostname()}:{os.getpid()}")
    source = None
    try:
        source = unit.open(options)
        acc = ConfusionAccumulator(class_map.num_classes, class_map.ignore_index)
        for sample in source:
            raw_pred = sample.prediction
            if raw_pred is None:
                if segmenter is None:
                    raise ValueError(f"frame {sample.name} has no prediction and no model was loaded")
                if sample.image is None:
                    raise ValueError(f"frame {sample.name} has neither an image nor a prediction")
                raw_pred = segmenter.segment(sample.image, order="rgb", output_size=sample.gt.shape[:2]).labels
            raw_pred, was_resized = _fit(np.asarray(raw_pred), sample.gt.shape[:2])
            out.resized += was_resized
            gt = class_map.apply_to_ground_truth(sample.gt)
            pred = class_map.apply_to_prediction(raw_pred)
            try:
                acc.update(gt, pred)
            except ValueError as exc:
                raise ValueError(f"frame {sample.name}: {exc}") from exc
            if len(out.samples) < options.samples:
                out.samples.append(Sample(sample.name, sample.image, gt, pred))
            if on_frame is not None:
                on_frame()
        out.confusion, out.frames = acc.confusion, acc.frames
        if unit.latency:
            topics = dict(unit.topics)
            out.latency = latency_from_bag(unit.source, topics["images"], topics["labels"])
    except (ValueError, TypeError, OSError, ImportError, RuntimeError) as exc:
        out.error = str(exc) or type(exc).__name__
    finally:
        health = getattr(source, "health", None)
        if health is not None:
            out.flags, out.notes = list(health.flags), list(health.notes)
        out.seconds = time.perf_counter() - t0
    return out


class Progress:
    """One bar counting frames, with sources done / total beside it (tqdm; silent when disabled)."""

    def __init__(self, units: Sequence[WorkUnit], enabled: bool = True) -> None:
        from tqdm import tqdm

        hints = [u.frames_hint for u in units]
        total = sum(h for h in hints if h is not None) if all(h is not None for h in hints) else None
        self._left = {}
        for unit in units:
            self._left[unit.index] = self._left.get(unit.index, 0) + 1
        self.sources = len(self._left)
        self.done = 0
        self.bar = tqdm(total=total, desc="eval", unit="frame", disable=not enabled, dynamic_ncols=True)
        try:
            self.bar.set_postfix_str(f"bags 0/{self.sources}")
        except BaseException:  # Ctrl-C right now: the caller never gets the bar to close
            self.bar.close()
            raise

    def frames(self, n: int = 1) -> None:
        self.bar.update(n)

    def unit_done(self, unit: WorkUnit) -> None:
        self._left[unit.index] -= 1
        if self._left[unit.index] == 0:
            self.done += 1
            self.bar.set_postfix_str(f"bags {self.done}/{self.sources}")

    def close(self) -> None:
        self.bar.close()


def score_units(
    units: Sequence[WorkUnit],
    options: EvalOptions,
    class_map: ClassMap,
    segmenter: Any | None = None,
    progress: Progress | None = None,
) -> list[UnitResult]:
    """Score the units one after another in this process."""
    results = []
    for unit in units:
        results.append(score_unit(unit, options, class_map, segmenter, progress.frames if progress else None))
        if progress is not None:
            progress.unit_done(unit)
    return results


def merge_results(
    plans: Sequence[SourcePlan],
    failures: Sequence[SourceFailure],
    results: Sequence[UnitResult],
    class_map: ClassMap,
    keep_samples: int = 4,
) -> EvalResult:
    """Per-source and total results from unit results (any order, any split).

    A source with a failed unit is excluded and listed with the reason, as is one without a single frame.
    Raises ``ValueError`` (listing every reason) when no source could be scored.
    """
    by_source: dict[int, list[UnitResult]] = {}
    for result in results:
        by_source.setdefault(result.unit.index, []).append(result)
    rows: list[SourceResult] = [SourceResult(f.source, f.index, "failed", error=f.reason, errors=1) for f in failures]
    total = np.zeros((class_map.num_classes, class_map.num_classes + 1), dtype=np.int64)
    frames = resized = 0
    latencies: list[LatencyStats] = []
    samples: list[Sample] = []
    for plan in sorted(plans, key=lambda p: p.index):
        units = sorted(by_source.get(plan.index, []), key=lambda r: r.unit.chunk)
        flags = list(dict.fromkeys(plan.flags + [f for r in units for f in r.flags]))
        notes = list(dict.fromkeys(plan.notes + [n for r in units for n in r.notes]))
        row = SourceResult(plan.source, plan.index, plan.mode, flags=flags, notes=notes,
                           seconds=sum(r.seconds for r in units))  # fmt: skip
        errors = [r.error for r in units if r.error]
        if len(units) != max((r.unit.chunks for r in units), default=1) or not units:
            errors.append("not every part of the source was scored")
        if not errors and sum(r.frames for r in units) == 0:
            cut = " before the cut" if "truncated" in flags else ""
            errors.append(f"no frames to evaluate{cut} (no matching image / label pairs found)")
        if errors:
            row.error = errors[0]
            row.errors = len(errors)
            rows.append(row)
            continue
        conf = np.zeros_like(total)
        for r in units:
            conf += r.confusion
        row.frames = sum(r.frames for r in units)
        row.scores = scores_from_confusion(conf)
        row.latency = next((r.latency for r in units if r.latency is not None), None)
        rows.append(row)
        total += conf
        frames += row.frames
        resized += sum(r.resized for r in units)
        if row.latency is not None:
            latencies.append(row.latency)
        for r in units:
            samples.extend(r.samples[: max(0, keep_samples - len(samples))])
    if frames == 0:
        reasons = "; ".join(f"{r.source}: {r.error}" for r in sorted(rows, key=lambda r: r.index) if r.error)
        raise ValueError(f"nothing could be scored: {reasons}" if reasons else "no sources to evaluate")
    rows.sort(key=lambda r: r.index)
    result = EvalResult(class_map, scores_from_confusion(total), frames, merge_latency(latencies), samples)
    result.sources = rows
    result.resized = resized
    return result
