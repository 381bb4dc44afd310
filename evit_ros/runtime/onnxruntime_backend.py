"""ONNX Runtime backend: the CPU default (fp32), CUDA execution provider where present.

With ``weights`` pointing at an .onnx file nothing but onnxruntime is needed at runtime;
otherwise the checkpoint is exported once into the ONNX cache and reused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from evit_ros.deploy.onnx_graph import io_names, metadata
from evit_ros.network.variants import get_variant
from evit_ros.runtime.base import Backend, BackendConfig

log = logging.getLogger(__name__)


def _providers(device: str | None) -> list:
    available = ort.get_available_providers()
    want_cuda = device is None or device.startswith("cuda")
    if want_cuda and "CUDAExecutionProvider" in available:
        index = int(device.split(":", 1)[1]) if device and ":" in device else 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    if device is not None and device.startswith("cuda"):
        raise ValueError(f"device '{device}' requested but ONNX Runtime has no CUDA provider ({', '.join(available)})")
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        if config.precision != "fp32":
            raise ValueError(
                f"onnxruntime backend runs fp32 only, not {config.precision}; use tensorrt or torch on a GPU"
            )
        variant = get_variant(config.model)
        if config.weights is not None and str(config.weights).lower().endswith(".onnx"):
            self.onnx_path = Path(config.weights).expanduser()
            if not self.onnx_path.is_file():
                raise FileNotFoundError(f"ONNX model not found: {self.onnx_path}")
        else:
            from evit_ros.deploy.onnx_export import ensure_onnx

            # Batches of several cameras are often partial: a symbolic batch runs 1..N frames without padding.
            self.onnx_path = ensure_onnx(
                variant.name,
                config.weights,
                config.resolution,
                config.engine_cache_dir,
                "fp32",
                config.batch_size,
                dynamic_batch=config.batch_size > 1,
            )
        meta = metadata(self.onnx_path)
        self.checkpoint_sha256 = meta.get("checkpoint_sha256", "")
        if meta.get("model") not in (None, variant.name):
            log.warning("%s was exported from %s, not %s", self.onnx_path, meta.get("model"), variant.name)
        if meta.get("output", "logits") != "logits":
            raise ValueError(f"{self.onnx_path} outputs {meta.get('output')}; the backend needs a logits model")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if config.num_threads:
            opts.intra_op_num_threads = int(config.num_threads)
        if config.batch_size > 1:
            # The arena grows by powers of two and keeps its peak: at batch 4 (512x1024) it held ~95 MB more than
            # the tensors need, for a ~3 % faster run. Several cameras on one node are about memory.
            opts.enable_cpu_mem_arena = False
        providers = _providers(config.device)
        self.session = ort.InferenceSession(str(self.onnx_path), sess_options=opts, providers=providers)
        self.providers = self.session.get_providers()
        config.device = "cuda" if "CUDAExecutionProvider" in self.providers else "cpu"
        self.input_name, self.output_name = io_names(self.onnx_path)
        shape = self.session.get_inputs()[0].shape  # [N or 'batch', 3, H, W]
        h, w = int(shape[2]), int(shape[3])
        if (h, w) != tuple(config.resolution):
            raise ValueError(f"{self.onnx_path} takes {h}x{w} input, but resolution {config.resolution} was requested")
        self.dynamic_batch = not isinstance(shape[0], int)
        if not self.dynamic_batch and shape[0] != config.batch_size:
            # A user's file with a fixed batch: take what it has (batch 1: frames run one after another).
            log.warning(
                "%s has a fixed batch of %d, not %d: using %d", self.onnx_path, shape[0], config.batch_size, shape[0]
            )
            config.batch_size = int(shape[0])

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self._check_batch(batch)
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def describe(self) -> dict[str, str]:
        info = super().describe()
        info["providers"] = ",".join(self.providers)
        info["onnx"] = str(self.onnx_path)
        return info
