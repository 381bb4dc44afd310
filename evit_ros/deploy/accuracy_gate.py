"""Accuracy gate for reduced-precision inference (TensorRT FP16/INT8, OpenVINO BF16/FP16), and the frames it
runs on.

A reduced-precision model is accepted only if it produces no NaN/Inf and its argmax labels agree with the
FP32 reference on at least a minimum share of pixels of sample frames: real frames from a folder when one
is given, else seeded smooth synthetic images.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evit_ros.pipeline.processing import list_images, preprocess

DEFAULT_MIN_LABEL_AGREEMENT = 0.995


@dataclass
class GateResult:
    nonfinite: int
    label_agreement: float | None  # None: no reference, only the NaN/Inf check ran
    max_abs_diff: float | None
    passed: bool

    def describe(self) -> str:
        if self.label_agreement is None:
            return f"non-finite outputs {self.nonfinite} (no FP32 reference: NaN/Inf check only)"
        return (
            f"non-finite outputs {self.nonfinite}, label agreement {self.label_agreement * 100:.3f}%, "
            f"max abs logit difference {self.max_abs_diff:.3g}"
        )


def accuracy_gate(
    candidate: Callable[[np.ndarray], np.ndarray],
    reference: Callable[[np.ndarray], np.ndarray] | None,
    batches: Iterable[np.ndarray],
    min_label_agreement: float,
) -> GateResult:
    """Compare a candidate model with the FP32 reference: no NaN/Inf and label agreement >= the minimum.

    Without a reference only the NaN/Inf check runs: a reduced-precision engine is never accepted unchecked.
    """
    if not 0.0 <= min_label_agreement <= 1.0:
        raise ValueError(f"min_label_agreement must be within [0, 1], got {min_label_agreement}")
    nonfinite, agree, total, max_abs = 0, 0, 0, 0.0
    for x in batches:
        got = candidate(x)
        bad = ~np.isfinite(got)
        nonfinite += int(bad.sum())
        if reference is None:
            continue
        ref = reference(x)
        labels_got, labels_ref = got.argmax(axis=1), ref.argmax(axis=1)
        agree += int((labels_got == labels_ref).sum())
        total += labels_ref.size
        if not bad.any():
            max_abs = max(max_abs, float(np.abs(got - ref).max()))
        else:
            max_abs = float("inf")
    if reference is None:
        return GateResult(nonfinite, None, None, nonfinite == 0)
    agreement = agree / total if total else 0.0
    return GateResult(nonfinite, agreement, max_abs, nonfinite == 0 and agreement >= min_label_agreement)


def calibration_images(folder: str | os.PathLike, limit: int) -> list[Path]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = list_images(root)
    if not files:
        raise FileNotFoundError(f"no images in {root}")
    return files[:limit]


class FrameBatches:
    """Preprocessed N x 3 x H x W batches of image files, read lazily one batch at a time into one reusable buffer.

    Iterating yields the same array each time, refilled: a consumer that keeps a batch must copy it. Nothing is
    read before iteration starts, so an INT8 calibrator holding this costs nothing when TensorRT uses its cache.
    Unreadable files are skipped; a partial last batch is padded with the batch's first frames.
    """

    def __init__(self, files: Sequence[Path], resolution: tuple[int, int], batch: int) -> None:
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        self.files = list(files)
        self.resolution = resolution
        self.batch = batch
        self.buffer: np.ndarray | None = None
        self.frames_read = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        import cv2

        filled = 0
        for path in self.files:
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                continue
            if self.buffer is None:
                self.buffer = np.empty((self.batch, 3, *self.resolution), dtype=np.float32)
            preprocess(bgr, self.resolution, order="bgr", out=self.buffer[filled : filled + 1])
            self.frames_read += 1
            filled += 1
            if filled == self.batch:
                yield self.buffer
                filled = 0
        if self.frames_read == 0:
            raise FileNotFoundError(f"no readable images among {len(self.files)} files")
        if filled:
            for i in range(filled, self.batch):
                self.buffer[i] = self.buffer[i % filled]
            yield self.buffer


def load_frames(folder: str | os.PathLike, resolution: tuple[int, int], batch: int, limit: int) -> list[np.ndarray]:
    """Preprocessed N x 3 x H x W batches from a folder of images, all held (a few gate frames, not calibration)."""
    return [b.copy() for b in FrameBatches(calibration_images(folder, limit), resolution, batch)]


def smooth_synthetic_image(resolution: tuple[int, int], seed: int = 0) -> np.ndarray:
    """A seeded H x W x 3 uint8 RGB image: 16x32 noise upscaled bicubically.

    White noise straight into the network is far off the image distribution: its logits, and so
    rounding differences, are several times larger than on real frames.
    """
    import cv2

    small = np.random.default_rng(seed).integers(0, 256, (16, 32, 3), dtype=np.uint8)
    return cv2.resize(small, (resolution[1], resolution[0]), interpolation=cv2.INTER_CUBIC)


def gate_batches(
    folder: str | os.PathLike | None, resolution: tuple[int, int], batch: int, frames: int
) -> list[np.ndarray]:
    """Sample batches for the gate: real frames from `folder`, else `frames` seeded smooth synthetic images."""
    if folder:
        return load_frames(folder, resolution, batch, frames)
    images = [preprocess(smooth_synthetic_image(resolution, seed), resolution)[0] for seed in range(max(frames, 1))]
    while len(images) % batch:
        images.append(images[len(images) % len(images)])
    return [np.ascontiguousarray(np.stack(images[i : i + batch])) for i in range(0, len(images), batch)]
