"""Scoring loop shared by every evaluation front end: samples in, summed confusion matrix and report data out."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np

from evit_ros.evaluation.classmap import ClassMap
from evit_ros.evaluation.metrics import ConfusionAccumulator
from evit_ros.evaluation.report import EvalResult, Sample
from evit_ros.evaluation.sources import EvalSample

__all__ = ["evaluate", "resolve_topic"]


def resolve_topic(available: Iterable[str], name: str) -> str:
    """A topic in the bag matching ``name``: exact, with a leading ``/``, or a unique ``.../name`` suffix."""
    available = list(available)
    if name in available:
        return name
    for candidate in (f"/{name.lstrip('/')}", name.lstrip("/")):
        if candidate in available:
            return candidate
    tail = "/" + name.strip("/")
    hits = [t for t in available if t.endswith(tail)]
    if len(hits) == 1:
        return hits[0]
    return name  # let the source report it as missing, listing what the bag has


def _fit(pred: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    if pred.shape == shape:
        return pred, False
    return cv2.resize(pred, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST), True


def evaluate(
    samples: Iterable[EvalSample],
    class_map: ClassMap,
    segmenter: Any | None = None,
    total: int | None = None,
    keep_samples: int = 4,
    progress: bool = True,
) -> tuple[EvalResult, int]:
    """Score every sample; the model runs on samples without a prediction. Returns (result, resized count)."""
    from tqdm import tqdm

    acc = ConfusionAccumulator(class_map.num_classes, class_map.ignore_index)
    kept: list[Sample] = []
    resized = 0
    for sample in tqdm(samples, total=total, desc="eval", unit="frame", disable=not progress):
        raw_pred = sample.prediction
        if raw_pred is None:
            if segmenter is None:
                raise ValueError(f"frame {sample.name} has no prediction and no model was loaded")
            if sample.image is None:
                raise ValueError(f"frame {sample.name} has neither an image nor a prediction")
            raw_pred = segmenter.segment(sample.image, order="rgb", output_size=sample.gt.shape[:2]).labels
        raw_pred, was_resized = _fit(np.asarray(raw_pred), sample.gt.shape[:2])
        resized += was_resized
        gt = class_map.apply_to_ground_truth(sample.gt)
        pred = class_map.apply_to_prediction(raw_pred)
        try:
            acc.update(gt, pred)
        except ValueError as exc:
            raise ValueError(f"frame {sample.name}: {exc}") from exc
        if len(kept) < keep_samples:
            kept.append(Sample(sample.name, sample.image, gt, pred))
    if acc.frames == 0:
        raise ValueError("no frames to evaluate (no matching image / label pairs found)")
    return EvalResult(class_map, acc.scores(), acc.frames, samples=kept), resized
