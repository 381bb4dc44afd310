"""Class maps: how model outputs and ground-truth files become the evaluation classes.

A :class:`ClassMap` names the evaluation classes and holds two lookup tables:

* ``pred_lut``: model class id -> evaluation class id (``None`` = identity). Model classes without an
  evaluation class map to ``ignore_index`` and then count as *void* predictions (false negatives of the
  ground-truth class, see :mod:`evit_ros.evaluation.metrics`).
* ``gt_lut``: raw ground-truth pixel value -> evaluation class id or ``ignore_index`` (``None`` = identity).

Built-in ground-truth conversions:

* ``cityscapes``: gtFine ``labelIds`` (0..33) -> train ids 0..18, everything else -> 255.
* ``ade20k``: ADE20K annotation PNGs store ``class + 1`` with 0 = "other": value - 1, and 0 -> 255.

User YAML (``--class-map my_map.yaml``)::

    num_classes: 11            # evaluation classes 0..10
    ignore_index: 11           # ground-truth value that is not scored
    names: [Sky, Building, ...]
    palette: [[128, 128, 128], ...]   # optional RGB colours for plots
    map: {0: 3, 1: 4, ...}     # model class id -> evaluation class id (unlisted model classes: void)
    gt_map: {...}              # optional: raw ground-truth value -> evaluation class id (default identity)

The ground truth must then hold evaluation class ids (or ``ignore_index``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from evit_ros.network.classes import (
    ADE20K_CLASSES,
    ADE20K_PALETTE,
    CITYSCAPES_CLASSES,
    CITYSCAPES_PALETTE,
    cityscapes_labelid_lut,
)

__all__ = ["GT_MAPS", "ClassMap", "ade20k_gt_lut", "default_palette", "load_class_map"]

GT_MAPS = ("none", "cityscapes", "ade20k")
_LUT_SIZE = 65536  # covers uint8 and uint16 label images


def ade20k_gt_lut() -> np.ndarray:
    """ADE20K annotation value -> class id: ``v - 1``; 0 ("other") -> 255."""
    lut = np.full(256, 255, dtype=np.int64)
    lut[1:151] = np.arange(150)
    return lut


def _apply_lut(lut: np.ndarray, labels: np.ndarray, ignore_index: int, what: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{what} must be a 2-D label map, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must hold integer class ids, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError(f"{what} holds negative class ids")
    if labels.size and labels.max() >= len(lut):  # values beyond the table map to ignore
        big = np.full(int(labels.max()) + 1, ignore_index, dtype=np.int64)
        big[: len(lut)] = lut
        lut = big
    return lut[labels]


@dataclass
class ClassMap:
    """Evaluation classes plus the model-output and ground-truth lookup tables (see module docstring)."""

    num_classes: int
    names: list[str]
    ignore_index: int = 255
    pred_lut: np.ndarray | None = None
    gt_lut: np.ndarray | None = None
    name: str = "identity"
    gt_name: str = "none"
    palette: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {self.num_classes}")
        if len(self.names) != self.num_classes:
            raise ValueError(f"{len(self.names)} class names given for {self.num_classes} classes")
        if 0 <= self.ignore_index < self.num_classes:
            raise ValueError(f"ignore_index {self.ignore_index} collides with a class id (0..{self.num_classes - 1})")
        if self.palette is None:
            self.palette = default_palette(self.num_classes)
        self.palette = np.asarray(self.palette, dtype=np.uint8)
        if self.palette.shape != (self.num_classes, 3):
            raise ValueError(f"palette must be {self.num_classes} x 3 RGB, got shape {self.palette.shape}")

    @classmethod
    def identity(
        cls,
        num_classes: int,
        names: list[str] | tuple[str, ...] | None = None,
        ignore_index: int = 255,
        palette: np.ndarray | None = None,
    ) -> ClassMap:
        """Evaluate the model's own classes; ground truth already in the same ids."""
        names = list(names) if names is not None else [f"class_{i}" for i in range(num_classes)]
        return cls(num_classes, names, ignore_index, palette=palette)

    @classmethod
    def cityscapes(cls) -> ClassMap:
        """19 Cityscapes train ids; ground truth in gtFine labelIds."""
        gt_lut = cityscapes_labelid_lut().astype(np.int64)
        return cls(19, list(CITYSCAPES_CLASSES), 255, None, gt_lut, "cityscapes", "cityscapes", CITYSCAPES_PALETTE)

    @classmethod
    def ade20k(cls) -> ClassMap:
        """150 ADE20K classes; ground truth as ADE20K annotation PNGs (value - 1, 0 = ignore)."""
        return cls(150, list(ADE20K_CLASSES), 255, None, ade20k_gt_lut(), "ade20k", "ade20k", ADE20K_PALETTE)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ClassMap:
        """Load a user map (format in the module docstring); errors name the file and the problem."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"class map file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: invalid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise TypeError(f"{path}: expected a mapping with num_classes, ignore_index, names, map")
        missing = [k for k in ("num_classes", "map") if k not in data]
        if missing:
            raise ValueError(f"{path}: missing key(s) {', '.join(missing)}")
        n = data["num_classes"]
        if not isinstance(n, int) or n <= 0:
            raise ValueError(f"{path}: num_classes must be a positive integer, got {n!r}")
        ignore = data.get("ignore_index", 255)
        if not isinstance(ignore, int):
            raise TypeError(f"{path}: ignore_index must be an integer, got {ignore!r}")
        names = data.get("names") or [f"class_{i}" for i in range(n)]
        if not isinstance(names, list) or len(names) != n:
            raise ValueError(f"{path}: names must be a list of {n} names")
        pred_lut = cls._lut_from_mapping(data["map"], n, ignore, f"{path}: map")
        gt_lut = cls._lut_from_mapping(data["gt_map"], n, ignore, f"{path}: gt_map") if "gt_map" in data else None
        palette = data.get("palette")
        if palette is not None:
            try:
                palette = np.asarray(palette, dtype=np.int64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}: palette must be a list of [r, g, b]: {exc}") from exc
            if palette.shape != (n, 3) or palette.min() < 0 or palette.max() > 255:
                raise ValueError(f"{path}: palette must be {n} entries of [r, g, b] in 0..255")
        gt_name = "yaml" if gt_lut is not None else "none"
        return cls(n, [str(x) for x in names], ignore, pred_lut, gt_lut, path.name, gt_name, palette)

    @staticmethod
    def _lut_from_mapping(mapping: object, num_classes: int, ignore_index: int, where: str) -> np.ndarray:
        if not isinstance(mapping, dict) or not mapping:
            raise ValueError(f"{where} must be a non-empty mapping of source id -> evaluation class id")
        lut = np.full(_LUT_SIZE, ignore_index, dtype=np.int64)
        for src, dst in mapping.items():
            if not isinstance(src, int) or not 0 <= src < _LUT_SIZE:
                raise ValueError(f"{where}: source id {src!r} is not an integer in 0..{_LUT_SIZE - 1}")
            if not isinstance(dst, int) or not (0 <= dst < num_classes or dst == ignore_index):
                raise ValueError(
                    f"{where}: {src} -> {dst!r}: target must be in 0..{num_classes - 1} "
                    f"or the ignore index {ignore_index}"
                )
            lut[src] = dst
        return lut

    def with_gt_map(self, kind: str | Path | None) -> ClassMap:
        """A copy whose ground-truth conversion is ``none``, ``cityscapes``, ``ade20k`` or a YAML file's ``gt_map``
        (or its ``map`` if it has no ``gt_map``)."""
        if kind is None or str(kind) == "none":
            return replace(self, gt_lut=None, gt_name="none")
        if str(kind) == "cityscapes":
            return replace(self, gt_lut=cityscapes_labelid_lut().astype(np.int64), gt_name="cityscapes")
        if str(kind) == "ade20k":
            return replace(self, gt_lut=ade20k_gt_lut(), gt_name="ade20k")
        other = ClassMap.from_yaml(kind)
        lut = other.gt_lut if other.gt_lut is not None else other.pred_lut
        if other.num_classes != self.num_classes:
            raise ValueError(f"{kind}: maps to {other.num_classes} classes, the evaluation has {self.num_classes}")
        lut = np.where(lut == other.ignore_index, self.ignore_index, lut)
        return replace(self, gt_lut=lut, gt_name=Path(kind).name)

    def compact(self) -> ClassMap:
        """The same map with its tables cut after their last mapped entry (values beyond a table are ignored
        anyway), so it pickles small: a 65536-entry table is half a megabyte."""

        def trim(lut: np.ndarray | None) -> np.ndarray | None:
            if lut is None:
                return None
            mapped = np.flatnonzero(lut != self.ignore_index)
            return lut[: int(mapped[-1]) + 1 if mapped.size else 1].copy()

        return replace(self, pred_lut=trim(self.pred_lut), gt_lut=trim(self.gt_lut))

    def apply_to_prediction(self, labels: np.ndarray) -> np.ndarray:
        """Model class ids -> evaluation class ids (int64); unmapped -> ``ignore_index`` (scored as void)."""
        if self.pred_lut is None:
            return np.asarray(labels).astype(np.int64, copy=False)
        return _apply_lut(self.pred_lut, labels, self.ignore_index, "prediction")

    def apply_to_ground_truth(self, labels: np.ndarray) -> np.ndarray:
        """Raw ground-truth values -> evaluation class ids (int64) or ``ignore_index``."""
        labels = np.asarray(labels)
        if labels.ndim == 3 and labels.shape[2] in (3, 4):
            raise ValueError("ground truth is a colour image; evaluation needs single-channel class-id labels")
        if self.gt_lut is None:
            return labels.astype(np.int64, copy=False)
        return _apply_lut(self.gt_lut, labels, self.ignore_index, "ground truth")

    def describe(self) -> str:
        return f"{self.num_classes} classes ({self.name}), ground truth map: {self.gt_name}, ignore {self.ignore_index}"


def default_palette(n: int) -> np.ndarray:
    """``n`` distinct RGB colours (evenly spaced hues, alternating brightness)."""
    hsv = np.zeros((n, 1, 3), dtype=np.uint8)
    hsv[:, 0, 0] = (np.arange(n) * 180 // max(n, 1)).astype(np.uint8)
    hsv[:, 0, 1] = 200
    hsv[:, 0, 2] = np.where(np.arange(n) % 2 == 0, 230, 150).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(n, 3)


def load_class_map(
    spec: str | Path,
    num_model_classes: int | None = None,
    model_names: list[str] | tuple[str, ...] | None = None,
    model_palette: np.ndarray | None = None,
) -> ClassMap:
    """``none`` (model classes, needs ``num_model_classes``), ``cityscapes``, ``ade20k`` or a YAML path."""
    spec = str(spec)
    if spec == "cityscapes":
        return ClassMap.cityscapes()
    if spec == "ade20k":
        return ClassMap.ade20k()
    if spec in ("none", "identity"):
        if num_model_classes is None:
            raise ValueError("--class-map none needs the number of model classes (give --model or a YAML map)")
        return ClassMap.identity(num_model_classes, model_names, palette=model_palette)
    if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        return ClassMap.from_yaml(spec)
    raise ValueError(f"unknown class map {spec!r}: use none, cityscapes, ade20k or a .yaml file")
