"""The ROS-free segmentation API: image in, label map (and optional confidence) out."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from evit_ros.network.classes import class_table
from evit_ros.network.variants import DEFAULT_MODEL, Variant, get_variant, parse_resolution
from evit_ros.pipeline.processing import POSTPROCESS_MODES, check_image, fit_resolution, postprocess, preprocess
from evit_ros.runtime import (
    Backend,
    BackendConfig,
    check_frame_path,
    create_backend,
    resolve_backend_name,
    resolve_frame_path,
)

if TYPE_CHECKING:
    from evit_ros.pipeline.device import DeviceLogits


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

    ``batch_size`` > 1 lets :meth:`segment_batch` run up to that many images (of any sizes) in one
    network call; :attr:`max_batch` is what the backend accepted (1 for a fixed-batch-1 ONNX file).

    ``precision`` ``auto`` is fp16 on TensorRT and torch on CUDA, fp32 on the CPU backends. ``frame_path``
    ``device`` runs pre- and post-processing in torch on the network's device (evit_ros.pipeline.device; torch
    and TensorRT backends), ``host`` in numpy/OpenCV; ``auto`` is device on CUDA backends, host otherwise.
    :attr:`frame_path` holds the resolved choice.
    """

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        weights: str | os.PathLike | None = None,
        resolution: str | tuple[int, int] | None = None,
        backend: str = "auto",
        precision: str = "auto",
        device: str | None = None,
        num_threads: int | None = None,
        engine_cache_dir: str | None = None,
        postprocess_mode: str = "exact",
        allow_random_weights: bool = False,
        backend_options: dict | None = None,
        batch_size: int = 1,
        frame_path: str = "auto",
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
        reason = check_frame_path(frame_path, self.backend_name)  # before a model is loaded or an engine built
        if reason is not None:
            raise ValueError(reason)
        config = BackendConfig(
            model=self.variant.name,
            weights=None if weights is None else str(weights),
            resolution=self.resolution,
            precision=precision,
            device=device,
            num_threads=num_threads,
            engine_cache_dir=engine_cache_dir,
            batch_size=int(batch_size),
            options=dict(backend_options or {}),
        )
        self.backend: Backend = create_backend(self.backend_name, config)
        self.frame_path = resolve_frame_path(frame_path, self.backend)
        self.device_pipeline = None
        if self.frame_path == "device":
            from evit_ros.pipeline.device import DevicePipeline  # torch: only on this path

            self.device_pipeline = DevicePipeline(self.backend.device, self.resolution, self.palette, self.num_classes)
            self._input = self.device_pipeline.input_buffer(self.backend.input_shape)
        else:
            self._input = np.empty(self.backend.input_shape, dtype=np.float32)

    @property
    def num_classes(self) -> int:
        return self.variant.num_classes

    @property
    def max_batch(self) -> int:
        """The most images one network call takes."""
        return self.backend.config.batch_size

    def logits(self, image: np.ndarray, order: str = "rgb") -> np.ndarray:
        """C x H/8 x W/8 float32 logits for one HxWx3 uint8 image."""
        return self.logits_batch([image], [order])[0]

    def logits_batch(self, images: Sequence[np.ndarray], orders: Sequence[str] | str = "rgb") -> np.ndarray:
        """N x C x H/8 x W/8 float32 logits for N HxWx3 uint8 images of any sizes, ``max_batch`` per network call.

        ``orders`` is one channel order for all images or one per image. A bad image raises ValueError before
        the network runs.
        """
        if self.device_pipeline is not None:
            return self.device_logits_batch(images, orders).logits.cpu().numpy()
        orders = self._orders(images, orders)
        outputs = []
        for start, count in self._batches(len(images)):
            for i in range(count):
                preprocess(images[start + i], self.resolution, order=orders[start + i], out=self._input[i : i + 1])
            outputs.append(self.backend.infer(self._batch(count))[:count])
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    def device_logits_batch(self, images: Sequence[np.ndarray], orders: Sequence[str] | str = "rgb") -> DeviceLogits:
        """The device frame path's first half: each image uploaded once as uint8, resized and normalised on the
        device, the network batched (``max_batch`` per call) without a host round trip. Returns a
        :class:`~evit_ros.pipeline.device.DeviceLogits` (frames as uploaded, N x C x h x w float32 logits), for
        :meth:`DevicePipeline.postprocess` and friends. A bad image raises ValueError before anything runs."""
        import torch

        pipe = self.device_pipeline
        if pipe is None:
            raise RuntimeError("this Segmenter runs the host frame path (frame_path host)")
        orders = self._orders(images, orders)
        for image in images:
            check_image(image)
        frames = [pipe.upload(image, slot) for slot, image in enumerate(images)]
        outputs = []
        for start, count in self._batches(len(images)):
            for i in range(count):
                pipe.preprocess(frames[start + i], orders[start + i], out=self._input[i])
            # float32 and a copy of its own: the backend's output buffer is reused by its next call
            out = self.backend.infer_device(self._batch(count))[:count]
            outputs.append(out.clone() if out.dtype == torch.float32 else out.float())
        logits = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
        from evit_ros.pipeline.device import DeviceLogits

        return DeviceLogits(frames, orders, logits)

    def _orders(self, images: Sequence[np.ndarray], orders: Sequence[str] | str) -> list[str]:
        n = len(images)
        orders = [orders] * n if isinstance(orders, str) else list(orders)
        if len(orders) != n:
            raise ValueError(f"{n} images but {len(orders)} channel orders")
        if n == 0:
            raise ValueError("no images to segment")
        return orders

    def _batches(self, n: int) -> list[tuple[int, int]]:
        """(start, count) of each network call for n images."""
        return [(start, min(self.max_batch, n - start)) for start in range(0, n, self.max_batch)]

    def _batch(self, count: int):
        # A static engine takes exactly max_batch frames: the rest of the buffer is padding.
        return self._input[:count] if self.backend.dynamic_batch else self._input

    def segment(
        self,
        image: np.ndarray,
        order: str = "rgb",
        output_size: tuple[int, int] | str | None = None,
        return_confidence: bool = False,
        return_logits: bool = False,
    ) -> Segmentation:
        return self.segment_batch([image], order, [output_size], return_confidence, return_logits)[0]

    def segment_batch(
        self,
        images: Sequence[np.ndarray],
        orders: Sequence[str] | str = "rgb",
        output_sizes: Sequence[tuple[int, int] | str | None] | None = None,
        return_confidence: bool = False,
        return_logits: bool = False,
    ) -> list[Segmentation]:
        """:meth:`segment` for several images in batched network calls; each image keeps its own size, channel
        order and output size (``output_sizes`` None: every image at its own size)."""
        sizes = [None] * len(images) if output_sizes is None else list(output_sizes)
        if len(sizes) != len(images):
            raise ValueError(f"{len(images)} images but {len(sizes)} output sizes")
        if self.device_pipeline is not None:
            return self._segment_device(images, orders, sizes, return_confidence, return_logits)
        logits = self.logits_batch(images, orders)
        results = []
        for image, out, one in zip(images, sizes, logits, strict=True):
            labels, conf = postprocess(one, self.output_size(image.shape[:2], out), self.postprocess_mode,
                                       return_confidence)  # fmt: skip
            results.append(Segmentation(labels, conf, one if return_logits else None))
        return results

    def _segment_device(self, images, orders, sizes, return_confidence: bool, return_logits: bool):
        pipe = self.device_pipeline
        batch = self.device_logits_batch(images, orders)
        results = []
        for image, out, one in zip(images, sizes, batch.logits, strict=True):
            size = self.output_size(image.shape[:2], out)
            labels, conf = pipe.postprocess(one, size, self.postprocess_mode, return_confidence)
            results.append(
                Segmentation(
                    pipe.download(labels),
                    None if conf is None else pipe.download(conf),
                    one.cpu().numpy() if return_logits else None,
                )
            )
        return results

    def output_size(self, image_size: tuple[int, int], output_size: tuple[int, int] | str | None) -> tuple[int, int]:
        """(H, W) of the labels for an image of ``image_size`` given an ``output_size`` argument."""
        if output_size is None:
            return tuple(image_size)
        if output_size == "network":
            return tuple(self.resolution)
        return tuple(int(v) for v in output_size)

    def describe(self) -> dict[str, str]:
        info = {"model": self.variant.name, "resolution": f"{self.resolution[0]}x{self.resolution[1]}"}
        info.update(self.backend.describe())
        info["frame_path"] = self.frame_path
        return info

    def close(self) -> None:
        self.backend.close()
