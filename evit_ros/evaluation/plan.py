"""What an evaluation run scores: its sources (bags, dataset folders), and the work units they split into.

A *work unit* is a whole source or a frame range ``[start, stop)`` of one (frames are counted in the order the
source yields them, so the ranges of one source partition its frames exactly). Units are small, picklable
descriptions: a worker anywhere (in this process, or a Ray actor on another machine that sees the same paths)
opens its unit with :meth:`WorkUnit.open` and scores it; summing the units' confusion matrices gives exactly
the whole-source result, whatever the split.

Sources on the command line (:func:`expand_sources`):

* a rosbag2 recording: a directory with ``metadata.yaml``, a directory with ``<dir name>[_<N>].mcap|.db3``
  storage files but no metadata (flagged), or a single ``.mcap`` / ``.db3`` file;
* a dataset folder (Cityscapes, CamVid or paired layout, see :mod:`evit_ros.evaluation.sources`);
* a folder of recordings: every bag directly inside it, by name;
* a text file listing sources, one per line (blank lines and ``#`` comments skipped; relative paths are
  relative to the list file).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evit_ros.evaluation.sources import BagModelSource, BagRecordedSource, FolderSource, detect_layout
from evit_ros.io.bagio import bag_message_count, bag_topics, is_bag_path

__all__ = [
    "EvalOptions",
    "SourceFailure",
    "SourcePlan",
    "WorkUnit",
    "auto_chunk_frames",
    "expand_sources",
    "plan_sources",
    "resolve_topic",
    "split_units",
]

_LIST_DEPTH = 4  # list files may name list files, but not forever


@dataclass(frozen=True)
class EvalOptions:
    """How every source of a run is read (the ``evit-ros eval`` source options)."""

    mode: str = "auto"  # bags: auto | model | recorded
    images_topic: str = "image"
    labels_topic: str = "segmentation/labels"
    gt_topic: str = "gt/labels"
    latency: bool = True
    dataset_layout: str = "auto"
    split: str | None = None
    predictions: str | None = None
    max_frames: int | None = None  # per source
    samples: int = 4  # overlay samples kept for the report

    def __post_init__(self) -> None:
        if self.mode not in ("auto", "model", "recorded"):
            raise ValueError(f"mode must be auto, model or recorded, got {self.mode!r}")
        if self.max_frames is not None and self.max_frames <= 0:
            raise ValueError("--max-frames must be positive")
        if self.samples < 0:
            raise ValueError("--samples must be >= 0")


@dataclass(frozen=True)
class WorkUnit:
    """Frames ``[start, stop)`` of one source (``stop=None``: to its end), with everything needed to read them."""

    source: str
    index: int  # the source's position in the run
    kind: str  # bag | folder
    mode: str  # model | recorded | predictions
    topics: tuple[tuple[str, str], ...] = ()
    start: int = 0
    stop: int | None = None
    chunk: int = 0
    chunks: int = 1
    frames_hint: int | None = None
    latency: bool = False  # measure the bag's end-to-end latency (first chunk only)

    def open(self, options: EvalOptions) -> Any:
        """The sample source for this unit (raises ``ValueError``/``OSError`` when it cannot be read)."""
        topics = dict(self.topics)
        if self.kind == "folder":
            return FolderSource(self.source, options.dataset_layout, options.split, options.predictions,
                                options.max_frames, self.start, self.stop)  # fmt: skip
        if self.mode == "recorded":
            return BagRecordedSource(self.source, topics["labels"], topics["gt"], topics["images"],
                                     options.max_frames, options.samples, self.start, self.stop)  # fmt: skip
        return BagModelSource(self.source, topics["images"], topics["gt"], options.max_frames, self.start, self.stop)


@dataclass
class SourcePlan:
    """One source as planned: how it is read, how many frames it has (when its index says), its health."""

    source: str
    index: int
    kind: str
    mode: str
    gt_kind: str
    topics: dict[str, str] = field(default_factory=dict)
    frames: int | None = None
    latency: bool = False
    layout: str | None = None  # dataset folders
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class SourceFailure:
    """A source that could not be used at all, and why."""

    source: str
    index: int
    reason: str


def _read_list(path: Path, depth: int) -> list[Path]:
    if depth > _LIST_DEPTH:
        raise ValueError(f"{path}: list files nested more than {_LIST_DEPTH} deep")
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is neither a recording nor a text file listing sources") from exc
    entries = [line.strip() for line in lines]
    return [(path.parent / e).expanduser() for e in entries if e and not e.startswith("#")]


def expand_sources(paths: Sequence[str | Path], _depth: int = 0) -> list[Path]:
    """The sources named by ``paths`` (see the module docstring), in order, duplicates dropped.

    A path that does not exist is kept: planning reports it as a failed source, like any unreadable one.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.exists() or is_bag_path(path):
            out.append(path)
        elif path.is_file():
            out.extend(expand_sources(_read_list(path, _depth + 1), _depth + 1))
        else:
            try:
                detect_layout(path)
                out.append(path)
            except ValueError:
                bags = sorted(child for child in path.iterdir() if is_bag_path(child))
                out.extend(bags or [path])  # no bags either: planning says what was looked for
    seen: set[Path] = set()
    unique = []
    for path in out:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def resolve_topic(available: Sequence[str], name: str) -> str:
    """A topic in the bag matching ``name``: exact, with a leading ``/``, or a unique ``.../name`` suffix."""
    if name in available:
        return name
    for candidate in (f"/{name.lstrip('/')}", name.lstrip("/")):
        if candidate in available:
            return candidate
    tail = "/" + name.strip("/")
    hits = [t for t in available if t.endswith(tail)]
    return hits[0] if len(hits) == 1 else name  # else the source reports it missing, listing what the bag has


def _plan_bag(path: Path, index: int, options: EvalOptions) -> SourcePlan:
    if options.predictions is not None:
        raise ValueError(
            "--predictions applies to folder sources; a bag's recorded labels are used with --mode recorded"
        )
    available = list(bag_topics(path))
    topics = {
        "images": resolve_topic(available, options.images_topic),
        "labels": resolve_topic(available, options.labels_topic),
        "gt": resolve_topic(available, options.gt_topic),
    }
    mode = options.mode
    if mode == "auto":
        mode = "recorded" if topics["labels"] in available else "model"
    plan = SourcePlan(str(path), index, "bag", mode, "ids", topics)
    source = WorkUnit(plan.source, index, "bag", mode, tuple(topics.items())).open(options)  # validates the topics
    plan.flags, plan.notes = source.health.flags, list(source.health.notes)
    count = bag_message_count(path, topics["gt"])
    if count is not None:
        plan.frames = min(count, options.max_frames) if options.max_frames else count
    plan.latency = options.latency and topics["images"] in available and topics["labels"] in available
    return plan


def plan_sources(paths: Sequence[Path], options: EvalOptions) -> tuple[list[SourcePlan], list[SourceFailure]]:
    """Open every source once (topics, modes, frame counts); the ones that cannot be used become failures."""
    plans: list[SourcePlan] = []
    failures: list[SourceFailure] = []
    for index, path in enumerate(paths):
        try:
            if not path.exists():
                raise FileNotFoundError(f"source not found: {path}")
            if is_bag_path(path):
                plans.append(_plan_bag(path.resolve(), index, options))
            else:
                folder = FolderSource(path, options.dataset_layout, options.split, options.predictions,
                                      options.max_frames)  # fmt: skip
                mode = "predictions" if options.predictions is not None else "model"
                plans.append(SourcePlan(str(path.resolve()), index, "folder", mode, folder.gt_kind, frames=len(folder),
                                        layout=folder.layout))  # fmt: skip
        except (ValueError, OSError, ImportError) as exc:
            failures.append(SourceFailure(str(path), index, str(exc) or type(exc).__name__))
    return plans, failures


def auto_chunk_frames(plans: Sequence[SourcePlan], workers: int, per_worker: int = 4, minimum: int = 16) -> int | None:
    """A chunk size giving about ``per_worker`` units per worker, so no single long source is the tail."""
    known = [p.frames for p in plans if p.frames]
    if not known or workers <= 1:
        return None
    return max(minimum, math.ceil(sum(known) / (per_worker * workers)))


def split_units(plans: Sequence[SourcePlan], chunk_frames: int | None = None) -> list[WorkUnit]:
    """One unit per source, or chunks of at most ``chunk_frames`` frames of the sources whose length is known.

    The last chunk of a source is open-ended, so frames beyond an index's count are still scored once.
    """
    if chunk_frames is not None and chunk_frames <= 0:
        raise ValueError("chunk size must be positive")
    units = []
    for plan in plans:
        topics = tuple(plan.topics.items())
        n = 1
        if chunk_frames and plan.frames:
            n = max(1, math.ceil(plan.frames / chunk_frames))
        for k in range(n):
            start = k * chunk_frames if n > 1 else 0
            stop = (k + 1) * chunk_frames if k < n - 1 else None
            hint = (plan.frames - start if stop is None else stop - start) if plan.frames is not None else None
            units.append(WorkUnit(plan.source, plan.index, plan.kind, plan.mode, topics, start, stop, k, n, hint,
                                  plan.latency and k == 0))  # fmt: skip
    return units
