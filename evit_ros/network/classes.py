"""Class names and colour palettes of the datasets the official models were trained on."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import yaml

CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train",
    "motorcycle", "bicycle",
)  # fmt: skip

CITYSCAPES_PALETTE = np.array(
    [
        (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
        (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
        (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100),
        (0, 80, 100), (0, 0, 230), (119, 11, 32),
    ],
    dtype=np.uint8,
)  # fmt: skip

# gtFine labelIds (0..33) -> trainIds; 255 is the ignore index (cityscapesScripts labels.py).
_CITYSCAPES_ID_TO_TRAIN = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip


def cityscapes_labelid_lut() -> np.ndarray:
    """256-entry lookup table mapping Cityscapes labelIds to trainIds (255 = ignore)."""
    lut = np.full(256, 255, dtype=np.uint8)
    for label_id, train_id in _CITYSCAPES_ID_TO_TRAIN.items():
        lut[label_id] = train_id
    return lut


ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug",
    "field", "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter",
    "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs",
    "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench",
    "countertop", "stove", "palm", "kitchen island", "computer", "swivel chair", "boat", "bar",
    "arcade machine", "hovel", "bus", "towel", "light", "truck", "tower", "chandelier", "awning",
    "streetlight", "booth", "television receiver", "airplane", "dirt track", "apparel", "pole",
    "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van",
    "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool",
    "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball",
    "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light",
    "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower",
    "radiator", "glass", "clock", "flag",
)  # fmt: skip


def _bit_interleaved_palette(n: int) -> np.ndarray:
    """The PASCAL VOC colour scheme: distinct, deterministic colours for any class count."""
    palette = np.zeros((n, 3), dtype=np.uint8)
    for idx in range(n):
        label, r, g, b = idx + 1, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= ((label >> 0) & 1) << shift
            g |= ((label >> 1) & 1) << shift
            b |= ((label >> 2) & 1) << shift
            label >>= 3
        palette[idx] = (r, g, b)
    return palette


ADE20K_PALETTE = _bit_interleaved_palette(len(ADE20K_CLASSES))


def class_table(dataset: str) -> tuple[tuple[str, ...], np.ndarray]:
    """(names, palette as N x 3 uint8 RGB) for 'cityscapes' or 'ade20k'."""
    if dataset == "cityscapes":
        return CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
    if dataset == "ade20k":
        return ADE20K_CLASSES, ADE20K_PALETTE
    raise ValueError(f"unknown dataset '{dataset}'")


_MASK_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")  # one token of a ROS topic name


def parse_class_masks(text: str, class_names: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """The ``class_masks`` parameter (a YAML mapping of mask names to class names, e.g.
    ``{drivable: [road, sidewalk], people: [person, rider]}``; one class may be given bare) as mask name -> class
    ids. ``ValueError`` with the reason, and the valid class names where a name is unknown."""
    if not text.strip():
        return {}
    example = "e.g. '{drivable: [road, sidewalk], people: [person, rider]}'"
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"class_masks is not valid YAML ({exc}); {example}") from exc
    if not isinstance(value, dict) or not value:
        raise ValueError(f"class_masks must map mask names to lists of class names, got {text!r}; {example}")
    ids = {name: i for i, name in enumerate(class_names)}
    masks = {}
    for name, classes in value.items():
        if not isinstance(name, str) or not _MASK_NAME.fullmatch(name):
            raise ValueError(
                f"class_masks: mask name {name!r} cannot be a topic name (letters, digits and '_', starting with a "
                "letter)"
            )
        classes = [classes] if isinstance(classes, str) else classes
        if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
            raise ValueError(f"class_masks: mask {name!r} must list class names, got {classes!r}; {example}")
        unknown = [c for c in classes if c not in ids]
        if unknown:
            raise ValueError(
                f"class_masks: mask {name!r} names unknown classes {unknown}; valid classes: {', '.join(class_names)}"
            )
        masks[name] = tuple(sorted({ids[c] for c in classes}))
    return masks
