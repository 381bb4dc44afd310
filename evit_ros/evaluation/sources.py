"""Where evaluation samples come from: image/label folders or rosbag2 recordings.

Every source yields :class:`EvalSample` objects. A sample carries the raw ground truth (before the class
map) plus either the input image (to be run through a model) or an already computed prediction (raw model
class ids: a recorded ``segmentation/labels`` message, or a PNG from ``evit-ros predict``).

Folder layouts (``detect_layout``):

* ``cityscapes``: ``ROOT/leftImg8bit/**/<name>_leftImg8bit.png`` with
  ``ROOT/gtFine/**/<name>_gtFine_labelIds.png`` (or ``_gtFine_labelTrainIds.png`` when no labelIds exist).
* ``camvid``: ``ROOT/<split>/*.png`` with ``ROOT/<split>annot/*.png`` of the same name (SegNet release).
* ``paired``: ``ROOT/images/<stem>.<ext>`` with ``ROOT/labels/<stem>.png``.

Bags (``BagModelSource``, ``BagRecordedSource``) pair messages of two topics by header stamp.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from evit_ros.io.bagio import (
    IMAGE_MSGTYPE,
    BagHealth,
    bag_topics,
    frame_from_message,
    iter_bag_messages,
)
from evit_ros.pipeline.processing import IMAGE_SUFFIXES

__all__ = [
    "BagModelSource",
    "BagRecordedSource",
    "EvalSample",
    "FolderSource",
    "detect_layout",
    "find_pairs",
    "read_label_png",
]

LAYOUTS = ("cityscapes", "camvid", "paired")
_PENDING_LIMIT = 512  # unmatched messages kept per topic while pairing by stamp


@dataclass
class EvalSample:
    """One frame to score: raw ground truth plus an input image and/or a raw prediction."""

    name: str
    gt: np.ndarray
    image: np.ndarray | None = None  # RGB uint8
    prediction: np.ndarray | None = None  # raw model class ids
    stamp_ns: int | None = None


def read_label_png(path: Path) -> np.ndarray:
    """A single-channel label image as stored (uint8 or uint16); colour label images are rejected."""
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise ValueError(f"cannot read label image {path}")
    if labels.ndim == 3:
        raise ValueError(
            f"{path} is a {labels.shape[2]}-channel image; labels must be single-channel class ids "
            "(colour-coded labels are not supported)"
        )
    return labels


def read_image_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _frame_window(start: int, stop: int | None, max_frames: int | None) -> tuple[int, int | None]:
    """Frames ``[start, stop)`` of a source, within its first ``max_frames``."""
    if start < 0 or (stop is not None and stop < start):
        raise ValueError(f"bad frame range [{start}, {stop})")
    ends = [x for x in (stop, max_frames) if x is not None]
    return start, (min(ends) if ends else None)


def _camvid_splits(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and (root / f"{d.name}annot").is_dir())


def detect_layout(root: Path) -> str:
    """``cityscapes``, ``camvid`` or ``paired``; ``ValueError`` naming what was looked for otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"evaluation source not found: {root}")
    if (root / "leftImg8bit").is_dir() and (root / "gtFine").is_dir():
        return "cityscapes"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "paired"
    if _camvid_splits(root):
        return "camvid"
    raise ValueError(
        f"cannot tell the layout of {root}: expected leftImg8bit/ + gtFine/ (Cityscapes), <split>/ + <split>annot/ "
        "(CamVid), or images/ + labels/ (paired), or a rosbag2 recording"
    )


def _cityscapes_pairs(root: Path) -> tuple[list[tuple[str, Path, Path]], str]:
    images = sorted((root / "leftImg8bit").rglob("*_leftImg8bit.png"))
    if not images:
        raise ValueError(f"no *_leftImg8bit.png under {root / 'leftImg8bit'}")
    gt: dict[str, dict[str, Path]] = {"labelIds": {}, "labelTrainIds": {}}
    for kind, found in gt.items():
        for p in (root / "gtFine").rglob(f"*_gtFine_{kind}.png"):
            found[p.name[: -len(f"_gtFine_{kind}.png")]] = p
    prefixes = [p.name[: -len("_leftImg8bit.png")] for p in images]
    kind = "labelIds" if all(k in gt["labelIds"] for k in prefixes) else "labelTrainIds"
    missing = [k for k in prefixes if k not in gt[kind]]
    if missing:
        raise ValueError(f"{len(missing)} Cityscapes image(s) have no gtFine labelIds/labelTrainIds, e.g. {missing[0]}")
    return [(pre, img, gt[kind][pre]) for pre, img in zip(prefixes, images)], kind


def _by_stem(folder: Path, suffixes: frozenset[str] | tuple[str, ...]) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in suffixes}


def _stem_pairs(image_dir: Path, label_dir: Path) -> list[tuple[str, Path, Path]]:
    images = _by_stem(image_dir, IMAGE_SUFFIXES)
    labels = _by_stem(label_dir, (".png",))
    if not images:
        raise ValueError(f"no images in {image_dir}")
    missing = sorted(set(images) - set(labels))
    if missing:
        raise ValueError(f"{len(missing)} image(s) in {image_dir} have no label PNG in {label_dir}, e.g. {missing[0]}")
    return [(stem, images[stem], labels[stem]) for stem in sorted(images)]


def find_pairs(root: Path, layout: str = "auto", split: str | None = None) -> tuple[list[tuple[str, Path, Path]], str]:
    """``([(name, image, label)], gt_kind)`` for a folder; gt_kind is ``labelIds``, ``labelTrainIds`` or ``ids``."""
    root = Path(root)
    if layout == "auto":
        layout = detect_layout(root)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown dataset layout {layout!r}; use auto, {', '.join(LAYOUTS)}")
    if layout == "cityscapes":
        return _cityscapes_pairs(root)
    if layout == "paired":
        return _stem_pairs(root / "images", root / "labels"), "ids"
    splits = _camvid_splits(root)
    if not splits:
        raise ValueError(f"{root} has no <split>/ + <split>annot/ folders (CamVid layout)")
    if split is None:
        split = "val" if "val" in splits else splits[0]
    if split not in splits:
        raise ValueError(f"CamVid split {split!r} not in {root}; found: {', '.join(splits)}")
    return _stem_pairs(root / split, root / f"{split}annot"), "ids"


class FolderSource:
    """Image/label pairs from a folder; with ``predictions`` the images are replaced by precomputed labels.

    ``predictions`` is a folder of ``<image stem>.png`` class-id maps (what ``evit-ros predict`` writes); for
    Cityscapes ``<name>.png`` (without ``_leftImg8bit``) is accepted too.
    """

    def __init__(
        self,
        root: str | Path,
        layout: str = "auto",
        split: str | None = None,
        predictions: str | Path | None = None,
        max_frames: int | None = None,
        start: int = 0,
        stop: int | None = None,
    ) -> None:
        self.root = Path(root)
        self.layout = detect_layout(self.root) if layout == "auto" else layout
        pairs, self.gt_kind = find_pairs(self.root, self.layout, split)
        first, last = _frame_window(start, stop, max_frames)
        self.pairs = pairs[first:last]
        self.predictions = Path(predictions) if predictions is not None else None
        if self.predictions is not None:
            if not self.predictions.is_dir():
                raise FileNotFoundError(f"predictions folder not found: {self.predictions}")
            missing = [name for name, img, _ in self.pairs if self._prediction_path(name, img) is None]
            if missing:
                raise ValueError(
                    f"{len(missing)} frame(s) have no prediction PNG in {self.predictions}, e.g. {missing[0]}"
                )

    def _prediction_path(self, name: str, image: Path) -> Path | None:
        assert self.predictions is not None
        for stem in (image.stem, name):
            path = self.predictions / f"{stem}.png"
            if path.is_file():
                return path
        return None

    def __len__(self) -> int:
        return len(self.pairs)

    def describe(self) -> str:
        what = f"predictions {self.predictions}" if self.predictions else "model"
        return f"{self.layout} folder {self.root} ({len(self)} frames, ground truth {self.gt_kind}, {what})"

    def __iter__(self) -> Iterator[EvalSample]:
        for name, image_path, label_path in self.pairs:
            gt = read_label_png(label_path)
            image = read_image_rgb(image_path)
            pred = None
            if self.predictions is not None:
                pred = read_label_png(self._prediction_path(name, image_path))  # type: ignore[arg-type]
            yield EvalSample(name, gt, image, pred)


def _require_topics(path: Path, topics: dict[str, str], health: BagHealth) -> dict[str, str]:
    available = bag_topics(path, health)
    for role, topic in topics.items():
        if topic not in available:
            raise ValueError(
                f"{role} topic {topic!r} not in bag {path}; it has: {', '.join(sorted(available)) or 'no topics'}"
            )
    return available


class _StampMatcher:
    """Pairs messages of several topics with equal header stamps, keeping a bounded backlog per topic."""

    def __init__(self, topics: list[str]) -> None:
        self.pending: dict[str, OrderedDict[int, object]] = {t: OrderedDict() for t in topics}

    def add(self, topic: str, stamp: int, item: object) -> dict[str, object] | None:
        self.pending[topic][stamp] = item
        if len(self.pending[topic]) > _PENDING_LIMIT:
            self.pending[topic].popitem(last=False)
        if all(stamp in p for p in self.pending.values()):
            return {t: p.pop(stamp) for t, p in self.pending.items()}
        return None


def _stamp_of(msg: object) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)  # type: ignore[attr-defined]


def _check_label_frame(frame, role: str) -> np.ndarray:
    if frame.image.ndim != 2:
        raise ValueError(f"{role} topic {frame.topic} carries {frame.encoding} images; labels must be mono8/mono16")
    return frame.image


class BagModelSource:
    """Mode (a): an image topic and a ground-truth label topic (mono8/mono16), matched by header stamp."""

    def __init__(
        self,
        path: str | Path,
        image_topic: str,
        gt_topic: str,
        max_frames: int | None = None,
        start: int = 0,
        stop: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.image_topic, self.gt_topic = image_topic, gt_topic
        self.start, self.stop = _frame_window(start, stop, max_frames)
        self.health = BagHealth()
        self.topics = _require_topics(self.path, {"image": image_topic, "ground-truth": gt_topic}, self.health)
        if self.topics[gt_topic] != IMAGE_MSGTYPE:
            raise ValueError(f"ground-truth topic {gt_topic} is {self.topics[gt_topic]}; expected mono8/mono16 Image")
        self.gt_kind = "ids"

    def describe(self) -> str:
        return f"bag {self.path}: model on {self.image_topic} vs ground truth {self.gt_topic}"

    def __iter__(self) -> Iterator[EvalSample]:
        if self.stop is not None and self.stop <= self.start:
            return
        matcher = _StampMatcher([self.image_topic, self.gt_topic])
        index = 0
        topics = [self.image_topic, self.gt_topic]
        for topic, msgtype, recv_ns, msg in iter_bag_messages(self.path, topics, self.health):
            stamp = _stamp_of(msg)
            match = matcher.add(topic, stamp, (msgtype, recv_ns, msg))
            if match is None:
                continue
            index += 1
            if index <= self.start:  # before this unit's frame range: paired but not decoded
                continue
            frames = {t: frame_from_message(t, *match[t]) for t in match}  # type: ignore[misc]
            gt = _check_label_frame(frames[self.gt_topic], "ground-truth")
            image = frames[self.image_topic].image
            if image.ndim != 3:
                raise ValueError(f"image topic {self.image_topic} carries {frames[self.image_topic].encoding} labels")
            yield EvalSample(f"{stamp}", gt, image, None, stamp)
            if self.stop is not None and index >= self.stop:
                return


class BagRecordedSource:
    """Mode (b): the node's recorded ``segmentation/labels`` vs a ground-truth topic, matched by header stamp.

    When ``image_topic`` is in the bag, the matching input image is attached for overlays (first
    ``images_for`` samples only, so long recordings are not all decoded).
    """

    def __init__(
        self,
        path: str | Path,
        labels_topic: str,
        gt_topic: str,
        image_topic: str | None = None,
        max_frames: int | None = None,
        images_for: int = 4,
        start: int = 0,
        stop: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.labels_topic, self.gt_topic = labels_topic, gt_topic
        self.start, self.stop = _frame_window(start, stop, max_frames)
        self.images_for = images_for
        self.health = BagHealth()
        self.topics = _require_topics(self.path, {"labels": labels_topic, "ground-truth": gt_topic}, self.health)
        self.image_topic = image_topic if image_topic in self.topics else None
        self.gt_kind = "ids"

    def describe(self) -> str:
        return f"bag {self.path}: recorded {self.labels_topic} vs ground truth {self.gt_topic}"

    def __iter__(self) -> Iterator[EvalSample]:
        if self.stop is not None and self.stop <= self.start:
            return
        matcher = _StampMatcher([self.labels_topic, self.gt_topic])
        images: OrderedDict[int, tuple] = OrderedDict()
        topics = [self.labels_topic, self.gt_topic] + ([self.image_topic] if self.image_topic else [])
        index = 0
        for topic, msgtype, recv_ns, msg in iter_bag_messages(self.path, topics, self.health):
            stamp = _stamp_of(msg)
            if topic == self.image_topic:
                if index - self.start < self.images_for:
                    images[stamp] = (msgtype, recv_ns, msg)
                    if len(images) > _PENDING_LIMIT:
                        images.popitem(last=False)
                continue
            match = matcher.add(topic, stamp, (msgtype, recv_ns, msg))
            if match is None:
                continue
            index += 1
            if index <= self.start:
                images.pop(stamp, None)
                continue
            pred = _check_label_frame(frame_from_message(self.labels_topic, *match[self.labels_topic]), "labels")
            gt = _check_label_frame(frame_from_message(self.gt_topic, *match[self.gt_topic]), "ground-truth")
            image = None
            if stamp in images:
                image = frame_from_message(self.image_topic, *images.pop(stamp)).image  # type: ignore[arg-type]
            yield EvalSample(f"{stamp}", gt, image, pred, stamp)
            if self.stop is not None and index >= self.stop:
                return
