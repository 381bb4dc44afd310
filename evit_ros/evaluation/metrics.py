"""Semantic segmentation metrics: confusion matrix, per-class IoU, mIoU, pixel accuracy.

Definitions (identical to the official Cityscapes pixel-level evaluation, ``cityscapesscripts``
``evalPixelLevelSemanticLabeling``, when its predictions use only evaluated classes):

* Pixels whose ground truth is the ignore index (or any value outside ``0 .. num_classes - 1``, which
  :func:`confusion_matrix` rejects unless it is the ignore index) are not counted at all.
* The confusion matrix has ``num_classes`` rows (ground truth) and ``num_classes + 1`` columns (prediction):
  the last column, *void*, counts valid ground-truth pixels whose prediction is not an evaluation class
  (e.g. a model class the class map drops). Such pixels are false negatives of their ground-truth class and
  false positives of no class -- exactly how Cityscapes treats a prediction with an ``ignoreInEval`` id.
* ``IoU_c = TP / (TP + FP + FN)`` with ``TP = C[c, c]``, ``FN = sum(C[c, :]) - TP`` (void included),
  ``FP = sum(C[:num_classes, c]) - TP``.
* A class with ``TP + FP + FN == 0`` (absent from both the ground truth and the prediction) has IoU ``nan``
  and is excluded from the mean: ``mIoU = nanmean(IoU)``. This is what cityscapesscripts does
  (``getScoreAverage`` skips nan scores).
* Pixel accuracy = ``trace(C) / sum(C)``: correct pixels over all valid (non-ignored) pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "ConfusionAccumulator",
    "SegmentationScores",
    "confusion_matrix",
    "iou_per_class",
    "mean_iou",
    "pixel_accuracy",
    "scores_from_confusion",
]


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """``num_classes x (num_classes + 1)`` int64 counts; rows = ground truth, columns = prediction (+ void).

    ``gt`` values must be ``0 .. num_classes - 1`` or ``ignore_index`` (a ``ValueError`` names any other
    value: usually a missing ground-truth class map). ``pred`` values outside ``0 .. num_classes - 1`` go to
    the void column.
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if num_classes <= 0:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    if not (np.issubdtype(gt.dtype, np.integer) and np.issubdtype(pred.dtype, np.integer)):
        raise ValueError(f"labels must be integer arrays, got {gt.dtype} and {pred.dtype}")
    gt = gt.reshape(-1).astype(np.int64, copy=False)
    pred = pred.reshape(-1).astype(np.int64, copy=False)
    valid = gt != ignore_index
    gt_valid = gt[valid]
    bad = (gt_valid < 0) | (gt_valid >= num_classes)
    if bad.any():
        values = np.unique(gt_valid[bad])[:10].tolist()
        raise ValueError(
            f"ground truth holds values {values} outside 0..{num_classes - 1} that are not the ignore index "
            f"{ignore_index}; use a ground-truth class map (e.g. --gt-map cityscapes for labelIds)"
        )
    pred_valid = pred[valid]
    pred_valid = np.where((pred_valid >= 0) & (pred_valid < num_classes), pred_valid, num_classes)
    counts = np.bincount(gt_valid * (num_classes + 1) + pred_valid, minlength=num_classes * (num_classes + 1))
    return counts.reshape(num_classes, num_classes + 1).astype(np.int64)


def _square(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(conf, dtype=np.int64)
    n = conf.shape[0]
    if conf.ndim != 2 or conf.shape[1] not in (n, n + 1):
        raise ValueError(f"confusion matrix must be N x N or N x (N+1), got {conf.shape}")
    return conf, conf[:, :n]


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """Per-class IoU (float64, ``nan`` for classes absent from both ground truth and prediction)."""
    conf, square = _square(conf)
    tp = np.diag(square).astype(np.float64)
    gt_total = conf.sum(axis=1).astype(np.float64)
    pred_total = square.sum(axis=0).astype(np.float64)
    denom = gt_total + pred_total - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, tp / np.where(denom > 0, denom, 1.0), np.nan)


def mean_iou(conf: np.ndarray) -> float:
    """Mean of the per-class IoUs that are defined (nan-aware); ``nan`` when none is."""
    iou = iou_per_class(conf)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else math.nan


def pixel_accuracy(conf: np.ndarray) -> float:
    """Correctly labelled pixels over all counted (non-ignored) pixels; ``nan`` when none are counted."""
    conf, square = _square(conf)
    total = conf.sum()
    return float(np.trace(square) / total) if total else math.nan


@dataclass
class SegmentationScores:
    """Scores derived from one confusion matrix."""

    confusion: np.ndarray
    iou: np.ndarray
    miou: float
    pixel_accuracy: float
    pixels: int


def scores_from_confusion(conf: np.ndarray) -> SegmentationScores:
    conf, _ = _square(conf)
    return SegmentationScores(conf, iou_per_class(conf), mean_iou(conf), pixel_accuracy(conf), int(conf.sum()))


class ConfusionAccumulator:
    """Accumulates a confusion matrix frame by frame: ``acc.update(gt, pred)``, then ``acc.scores()``."""

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.confusion = np.zeros((num_classes, num_classes + 1), dtype=np.int64)
        self.frames = 0

    def update(self, gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """Add one frame; returns that frame's own confusion matrix."""
        conf = confusion_matrix(gt, pred, self.num_classes, self.ignore_index)
        self.confusion += conf
        self.frames += 1
        return conf

    def scores(self) -> SegmentationScores:
        return scores_from_confusion(self.confusion)
