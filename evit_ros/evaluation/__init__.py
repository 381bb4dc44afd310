"""Evaluation of segmentation outputs: metrics, class maps, folder/bag sources, latency and reports.

The ROS-free core of ``evit-ros eval`` (see :mod:`evit_ros.evaluation.cli`).
"""

from evit_ros.evaluation.classmap import ClassMap, load_class_map
from evit_ros.evaluation.metrics import (
    ConfusionAccumulator,
    SegmentationScores,
    confusion_matrix,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
    scores_from_confusion,
)

__all__ = [
    "ClassMap",
    "ConfusionAccumulator",
    "SegmentationScores",
    "confusion_matrix",
    "iou_per_class",
    "load_class_map",
    "mean_iou",
    "pixel_accuracy",
    "scores_from_confusion",
]
