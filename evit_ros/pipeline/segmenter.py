"""The ROS-free segmentation API: image in, label map (and optional confidence) out."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from evit_ros.network.classes import class_table
from evit_ros.network.variants import DEFAULT_MODEL, Variant, get_variant, parse_resolution
from evit_ros.pipeline.processing import POSTPROCESS_MODES, fit_resolution, postprocess, preprocess
from evit_ros.runtime import Backend, BackendConfig, create_backend, resolve_backend_name


@dataclass
class Segmentation:
    labels: np.ndarray  # H x W uint8 (uint16 when classes > 256)
    confidence: np.ndarray | None  # H x W float32 probability of the winning class
    logits: np.ndarray | None  # C x H/8 x W/8 float32 straight from the network, when asked for


def default_resolution(variant: Variant, image_shape: tuple[int, int] | None = None) -> tuple[int, int]:
    if variant.dataset == "ade20k" and image_shape is not None:
        return fit_resolution(*image_shape)
    return variant.default_resolution


class Segmenter:
    """EfficientViT-Seg inference with the official pre/post-processing.

    ``order`` states the channel order of the images you pass ("rgb" or "bgr"). Output labels
    are at the input image's size (``output_size=None``), a given (H, W), or the network's
    stride-1 resolution (``output_size="network"``).
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        weights: str | os.PathLike | None = None,
        resolution: str | tuple[int, int] | None = None,
        backend: str = "auto",
        precision: str = "fp32",
        device: str | None = None,
        num_threads: int | None = None,
        engine_cache_dir: str | None = None,
        postprocess_mode: str = "exact",
        allow_random_weights: bool = False,
        backend_options: dict | None = None,
    ) -> None:
        self.variant = get_variant(model)
        if weights is not None and str(weights) == "random" and not allow_random_weights:
            raise ValueError("random weights requested without allow_random_weights=True")
        self.resolution = parse_resolution(resolution) if resolution else default_resolution(self.variant)
        if postprocess_mode not in POSTPROCESS_MODES:
            raise ValueError(
                f"postprocess_mode must be one of {', '.join(POSTPROCESS_MODES)}, got '{postprocess_mode}'"
            )
        self.postprocess_mode = postprocess_mode
        self.class_names, self.palette = class_table(self.variant.dataset)
        self.backend_name = resolve_backend_name(backend)
        config = BackendConfig(
            model=self.variant.name,
            weights=None if weights is None else str(weights),
            resolution=self.resolution,
            precision=precision,
            device=device,
            num_threads=num_threads,
            engine_cache_dir=engine_cache_dir,
            options=dict(backend_options or {}),
        )
        self.backend: Backend = create_backend(self.backend_name, config)
        self._input = np.empty(self.backend.input_shape, dtype=np.float32)

    @property
    def num_classes(self) -> int:
        return self.variant.num_classes

    def logits(self, image: np.ndarray, order: str = "rgb") -> np.ndarray:
        """C x H/8 x W/8 float32 logits for one HxWx3 uint8 image."""
        batch = preprocess(image, self.resolution, order=order, out=self._input)
        return self.backend.infer(batch)[0]

    def segment(
        self,
        image: np.ndarray,
        order: str = "rgb",
        output_size: tuple[int, int] | str | None = None,
        return_confidence: bool = False,
        return_logits: bool = False,
    ) -> Segmentation:
        logits = self.logits(image, order)
        if output_size is None:
            size = image.shape[:2]
        elif output_size == "network":
            size = self.resolution
        else:
            size = tuple(int(v) for v in output_size)
        labels, conf = postprocess(logits, size, self.postprocess_mode, return_confidence)
        return Segmentation(labels, conf, logits if return_logits else None)

    def describe(self) -> dict[str, str]:
        info = {"model": self.variant.name, "resolution": f"{self.resolution[0]}x{self.resolution[1]}"}
        info.update(self.backend.describe())
        return info

    def close(self) -> None:
        self.backend.close()
