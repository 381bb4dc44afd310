"""The one interface every inference backend implements."""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np

BACKENDS = ("auto", "tensorrt", "torch", "openvino", "onnxruntime")
PRECISIONS = ("auto", "fp32", "fp16", "bf16", "int8")  # auto: by placement (resolve_precision); bf16: openvino only


def _on_cuda(backend: str, device: str | None, cuda_available: bool | None) -> bool:
    """Whether ``backend`` (a resolved name) on ``device`` runs on CUDA: TensorRT always; torch unless told cpu,
    where CUDA is there (``cuda_available`` None: asks torch, if installed)."""
    if backend == "tensorrt":
        return True
    if backend != "torch":
        return False
    from evit_ros.runtime.devices import parse_device

    kind, _ = parse_device(device)
    if kind:
        return kind == "cuda"
    if cuda_available is None:
        if importlib.util.find_spec("torch") is None:
            return False
        import torch

        cuda_available = torch.cuda.is_available()
    return cuda_available


def resolve_precision(
    precision: str, backend: str, device: str | None = None, cuda_available: bool | None = None
) -> str:
    """``auto`` by placement: fp16 (attention kept in fp32) on TensorRT and torch on CUDA, fp32 on the CPU
    backends (torch on the CPU, OpenVINO, ONNX Runtime); any other value as given. ``backend``: a resolved name."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision '{precision}'; choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    return "fp16" if _on_cuda(backend, device, cuda_available) else "fp32"


@dataclass
class BackendConfig:
    """What selects and shapes a backend; engine-affecting, so fixed for a backend's lifetime."""

    model: str = "b0-cityscapes"
    weights: str | None = None  # checkpoint path, "random", an .onnx file (not torch) or None (cache/Hub)
    resolution: tuple[int, int] = (512, 1024)
    precision: str = "auto"  # create_backend resolves auto (fp16 on CUDA backends, else fp32)
    device: str | None = None  # "cpu", "cuda", "cuda:1"; openvino: CPU, GPU, NPU, AUTO; None picks
    num_threads: int | None = None
    engine_cache_dir: str | None = None
    batch_size: int = 1  # the most frames one infer() call takes
    options: dict = field(default_factory=dict)  # backend-specific extras (cuda_graphs, dla_core, ...)


class Backend(ABC):
    """Maps a normalised N x 3 x H x W float32 batch to N x C x H/8 x W/8 float32 logits.

    ``dynamic_batch`` False (a static engine or graph) means infer() takes exactly ``config.batch_size`` frames,
    so callers pad a partial batch; True means any N from 1 to ``config.batch_size``.
    """

    name: str = "base"
    # Whether the network runs on a torch device (``self.device``) and takes a device batch (infer_device): the
    # device frame path of evit_ros.pipeline.device serves such a backend.
    device_frames: bool = False

    def __init__(self, config: BackendConfig) -> None:
        if config.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {config.batch_size}")
        config.precision = resolve_precision(config.precision, self.name, config.device)
        self.config = config
        self.checkpoint_sha256: str = ""
        self.dynamic_batch = False

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        h, w = self.config.resolution
        return (self.config.batch_size, 3, h, w)

    @abstractmethod
    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def infer_device(self, batch):
        """N x 3 x H x W float32 torch tensor on ``self.device`` -> N x C x H/8 x W/8 logits tensor on it (valid
        until the next call); only where ``device_frames``."""
        raise NotImplementedError(f"the {self.name} backend has no device frame path")

    def describe(self) -> dict[str, str]:
        """Human-readable facts for logs and /diagnostics."""
        return {"backend": self.name, "precision": self.config.precision, "device": str(self.config.device)}

    def close(self) -> None:  # noqa: B027 - optional hook
        pass

    def _check_batch(self, batch: np.ndarray) -> None:
        if batch.dtype != np.float32 or batch.ndim != 4 or batch.shape[1:] != self.input_shape[1:]:
            raise ValueError(f"{self.name} backend expects float32 {self.input_shape}, got {batch.dtype} {batch.shape}")
        if not self.dynamic_batch and batch.shape[0] != self.input_shape[0]:
            # A copy into the static input buffer would broadcast one frame into every slot, silently.
            raise ValueError(
                f"{self.name} backend has a static batch of {self.input_shape[0]} frames, got {batch.shape[0]}: pad "
                "the batch (Segmenter does) or use a dynamic-batch model"
            )
