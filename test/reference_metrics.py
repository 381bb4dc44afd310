"""An independent, deliberately naive IoU computation the package's metrics are checked against."""

from __future__ import annotations

import math

import numpy as np


def independent_scores(
    pairs: list[tuple[np.ndarray, np.ndarray]], n: int, ignore: int
) -> tuple[list[float], float, float]:
    """(per-class IoU, mIoU over classes present, pixel accuracy) by a per-class loop over the dataset.

    IoU_c = |GT_c & P_c| / |GT_c | P_c| on pixels whose ground truth is not `ignore`; a prediction outside
    0..n-1 is simply wrong; classes absent from both are nan and left out of the mean.
    """
    ious = []
    for c in range(n):
        inter = union = 0
        for gt, pred in pairs:
            valid = gt != ignore
            inter += int(np.sum((gt == c) & (pred == c) & valid))
            union += int(np.sum(((gt == c) | (pred == c)) & valid))
        ious.append(inter / union if union else math.nan)
    present = [v for v in ious if not math.isnan(v)]
    correct = sum(int(np.sum((gt == pred) & (gt != ignore))) for gt, pred in pairs)
    total = sum(int(np.sum(gt != ignore)) for gt, _ in pairs)
    return ious, sum(present) / len(present), correct / total
