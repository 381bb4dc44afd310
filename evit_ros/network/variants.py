"""Registry of the official EfficientViT-Seg variants (no torch needed to read it).

Figures are the ones the EfficientViT authors publish for the released checkpoints:
mIoU at the evaluation resolution, parameters, MACs and Jetson AGX Orin TensorRT FP16
batch-1 latency.
"""

from __future__ import annotations

from dataclasses import dataclass

HF_REPO_ID = "han-cai/efficientvit-seg"


@dataclass(frozen=True)
class HeadSpec:
    width: int
    depth: int
    expand_ratio: float
    middle_op: str  # "mbconv" or "fmbconv"
    final_expand: int | None


@dataclass(frozen=True)
class Variant:
    name: str  # e.g. "b0-cityscapes"
    size: str  # b0 .. l2
    dataset: str  # cityscapes | ade20k
    num_classes: int
    head: HeadSpec
    default_resolution: tuple[int, int]  # (H, W) the official evaluation uses
    official_miou: float
    params_m: float
    macs_g: float
    orin_latency_ms: float
    sha256: str | None = None  # of the released checkpoint, where known

    @property
    def family(self) -> str:
        return "l" if self.size.startswith("l") else "b"

    @property
    def checkpoint_filename(self) -> str:
        return f"efficientvit_seg_{self.size}_{self.dataset}.pt"

    @property
    def bn_eps(self) -> float:
        # Upstream trains the L series with BatchNorm eps 1e-7; B keeps PyTorch's 1e-5.
        return 1e-7 if self.family == "l" else 1e-5

    @property
    def activation(self) -> str:
        return "gelu" if self.family == "l" else "hswish"


_CITY = (1024, 2048)
_ADE = (512, 512)

_B_WIDTHS = {"b0": 32, "b1": 64, "b2": 96, "b3": 128}
_B_HEAD_DEPTH = {"b0": 1, "b1": 3, "b2": 3, "b3": 3}

# size -> (mIoU, params M, MACs G, Orin ms) as published.
_CITY_FIGURES = {
    "b0": (75.653, 0.7, 4.4, 9.9),
    "b1": (80.547, 4.8, 25.0, 24.3),
    "b2": (82.073, 15.0, 74.0, 46.5),
    "b3": (83.016, 40.0, 179.0, 81.8),
    "l1": (82.716, 40.0, 282.0, 45.9),
    "l2": (83.228, 53.0, 396.0, 60.0),
}
_ADE_FIGURES = {
    "b1": (42.840, 4.8, 3.1, 4.0),
    "b2": (45.941, 15.0, 9.1, 7.3),
    "b3": (49.013, 39.0, 22.0, 12.5),
    "l1": (49.191, 40.0, 36.0, 7.2),
    "l2": (50.702, 51.0, 45.0, 9.0),
}

KNOWN_SHA256 = {
    "efficientvit_seg_b0_cityscapes.pt": "923d6fdd5e93640cc0c2f3f213764f34e80b477cd98a6b294d870ea6df5acc50",
}


def _head(size: str, dataset: str) -> HeadSpec:
    if size.startswith("b"):
        width = _B_WIDTHS[size]
        return HeadSpec(width, _B_HEAD_DEPTH[size], 4, "mbconv", 4 if dataset == "cityscapes" else None)
    if dataset == "cityscapes":
        return HeadSpec(256, 3 if size == "l1" else 5, 1, "fmbconv", None)
    return HeadSpec(128, 3, 4, "fmbconv", 8)


def _build_registry() -> dict[str, Variant]:
    registry: dict[str, Variant] = {}
    for dataset, figures, classes, res in (
        ("cityscapes", _CITY_FIGURES, 19, _CITY),
        ("ade20k", _ADE_FIGURES, 150, _ADE),
    ):
        for size, (miou, params, macs, orin) in figures.items():
            filename = f"efficientvit_seg_{size}_{dataset}.pt"
            registry[f"{size}-{dataset}"] = Variant(
                name=f"{size}-{dataset}",
                size=size,
                dataset=dataset,
                num_classes=classes,
                head=_head(size, dataset),
                default_resolution=res,
                official_miou=miou,
                params_m=params,
                macs_g=macs,
                orin_latency_ms=orin,
                sha256=KNOWN_SHA256.get(filename),
            )
    return registry


VARIANTS: dict[str, Variant] = _build_registry()
DEFAULT_MODEL = "b0-cityscapes"


def get_variant(name: str) -> Variant:
    key = name.strip().lower().replace("_", "-")
    if key.startswith("efficientvit-seg-"):
        key = key[len("efficientvit-seg-") :]
    if key not in VARIANTS:
        hint = " (there is no official B0 ADE20K model)" if key == "b0-ade20k" else ""
        raise ValueError(f"unknown model '{name}'{hint}; choose one of: {', '.join(sorted(VARIANTS))}")
    return VARIANTS[key]


def parse_resolution(text: str | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Parse "HxW" into (H, W); both sides must be positive multiples of 32."""
    if isinstance(text, (tuple, list)):
        h, w = (int(v) for v in text)
    else:
        parts = str(text).lower().replace(" ", "").split("x")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ValueError(f"resolution must look like HxW (e.g. 512x1024), got '{text}'")
        h, w = int(parts[0]), int(parts[1])
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise ValueError(f"resolution sides must be positive multiples of 32 (network stride), got {h}x{w}")
    if h > 4096 or w > 4096:
        raise ValueError(f"resolution {h}x{w} is larger than 4096 on a side")
    return h, w
