"""Evaluation of segmentation outputs: metrics, class maps, folder/bag sources, latency and reports.

The ROS-free core of ``evit-ros eval`` (:mod:`evit_ros.cli.eval`): :mod:`.plan` turns sources into work units,
:mod:`.runner` scores units and merges them exactly, :mod:`.distributed` runs the units on Ray.
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
