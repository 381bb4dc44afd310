"""ONNX Runtime backend: the CPU default (fp32), CUDA execution provider where present.

With ``weights`` pointing at an .onnx file nothing but onnxruntime is needed at runtime;
otherwise the checkpoint is exported once into the ONNX cache and reused.
"""

from __future__ import annotations

import logging

import numpy as np
import onnxruntime as ort

from evit_ros.deploy.onnx_graph import io_names
from evit_ros.runtime.base import Backend, BackendConfig
from evit_ros.runtime.devices import parse_device
from evit_ros.runtime.onnx_source import logits_onnx

log = logging.getLogger(__name__)


def _providers(device: str | None) -> list:
    available = ort.get_available_providers()
    kind, index = parse_device(device)
    if kind in ("", "cuda") and "CUDAExecutionProvider" in available:
        return [("CUDAExecutionProvider", {"device_id": index or 0}), "CPUExecutionProvider"]
    if kind == "cuda":
        raise ValueError(f"device '{device}' requested but ONNX Runtime has no CUDA provider ({', '.join(available)})")
    return ["CPUExecutionProvider"]


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        if config.precision != "fp32":
            raise ValueError(
                f"onnxruntime backend runs fp32 only, not {config.precision}; use openvino (bf16/fp16 on a CPU, "
                "after an accuracy gate), or tensorrt or torch on a GPU"
            )
        self.onnx_path, meta = logits_onnx(config, self.name)
        self.checkpoint_sha256 = meta.get("checkpoint_sha256", "")
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
        cuda_index = parse_device(config.device)[1] or 0
        config.device = f"cuda:{cuda_index}" if "CUDAExecutionProvider" in self.providers else "cpu"
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
