"""OpenVINO backend: the CPU default. Compiles the same fp32 logits ONNX the ONNX Runtime backend runs.

``device`` names any OpenVINO device (``CPU`` by default; ``GPU``, ``NPU``, ``AUTO``, ``GPU.1``, ... are
passed through). Compiled models go to OpenVINO's own model cache, in a folder named by the ONNX file's
sha256, so an ONNX that changes (a new checkpoint, a re-export, a user's file rewritten in place) never
reuses a stale compiled blob.

Precision: ``fp32`` pins the inference precision to f32 (the CPU plugin otherwise runs bf16 where the CPU
has it). ``bf16`` / ``fp16`` set the inference precision hint and are accepted only after the accuracy
gate (no NaN/Inf, label agreement with the fp32 compiled model on sample frames >= the minimum).
Options (``BackendConfig.options``): ``gate_images`` (folder of real frames for the gate; default seeded
smooth synthetic images), ``gate_frames`` (default 4), ``min_label_agreement`` (default 0.995).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.properties as props
import openvino.properties.hint as hints

from evit_ros.deploy.accuracy_gate import DEFAULT_MIN_LABEL_AGREEMENT, accuracy_gate, gate_batches
from evit_ros.runtime.base import Backend, BackendConfig
from evit_ros.runtime.onnx_source import logits_onnx

log = logging.getLogger(__name__)

__all__ = ["OPENVINO_PRECISIONS", "OpenVINOBackend", "openvino_cache_root"]

OPENVINO_PRECISIONS = {"fp32": ov.Type.f32, "bf16": ov.Type.bf16, "fp16": ov.Type.f16}
_VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")


def openvino_cache_root(engine_cache_dir: str | os.PathLike | None = None) -> Path:
    """OpenVINO's model cache: `engine_cache_dir`/openvino, else evit_ros.weights.cache_dir()/openvino."""
    from evit_ros.network.weights import cache_dir

    return (Path(engine_cache_dir).expanduser() if engine_cache_dir else cache_dir()) / "openvino"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _device_name(device: str | None, core: ov.Core) -> str:
    """The OpenVINO device string for `device` ("cpu" and friends are upper-cased; None means CPU)."""
    if device is None:
        return "CPU"
    if device.lower().startswith("cuda"):
        raise ValueError(
            f"device '{device}' is a CUDA device; OpenVINO takes CPU, GPU, NPU, AUTO (or use tensorrt/torch)"
        )
    name = device.upper() if device.lower() in ("cpu", "gpu", "npu", "auto") else device
    base = name.split(":", 1)[0].split(".", 1)[0]
    if base not in _VIRTUAL_DEVICES:
        available = core.available_devices
        if name not in available and not any(d.split(".", 1)[0] == name for d in available):
            raise ValueError(f"OpenVINO device '{name}' is not available here (available: {', '.join(available)})")
    return name


class OpenVINOBackend(Backend):
    name = "openvino"

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        if config.precision not in OPENVINO_PRECISIONS:
            raise ValueError(
                f"openvino backend runs {', '.join(OPENVINO_PRECISIONS)}, not {config.precision} "
                "(INT8 needs a quantized model; use tensorrt for int8)"
            )
        self.core = ov.Core()
        self._model: ov.Model | None = None
        self.onnx_path, meta = logits_onnx(config, self.name, self._read_metadata)
        self.checkpoint_sha256 = meta.get("checkpoint_sha256", "")
        self.device = _device_name(config.device, self.core)
        config.device = self.device
        self.cache_dir = openvino_cache_root(config.engine_cache_dir) / _file_sha256(self.onnx_path)[:16]
        self.compiled = self._compile(config.precision)
        shape = self.compiled.input(0).get_partial_shape()
        self.dynamic_batch = shape[0].is_dynamic  # several cameras: 1..batch_size frames without padding
        if shape.is_static:
            n, _, h, w = (int(d) for d in shape.to_shape())
            if (h, w) != tuple(config.resolution):
                raise ValueError(
                    f"{self.onnx_path} takes {h}x{w} input, but resolution {config.resolution} was requested"
                )
            if n != config.batch_size:
                raise ValueError(f"{self.onnx_path} has a fixed batch of {n}, not {config.batch_size}")
        self.request = self.compiled.create_infer_request()
        self.inference_precision = str(self._get(hints.inference_precision))
        self.gate = None
        if config.precision != "fp32":
            self._gate(config)

    def _read_metadata(self, path: Path) -> dict[str, str]:
        """The ONNX metadata_props, as OpenVINO's ONNX reader keeps them (rt_info "framework"): no onnx package."""
        self._model = self.core.read_model(str(path))
        if not self._model.has_rt_info(["framework"]):
            return {}
        return {k: v.astype(str) for k, v in self._model.get_rt_info(["framework"]).astype(dict).items()}

    def _get(self, prop) -> object:
        try:
            return self.compiled.get_property(prop)
        except Exception:  # a device that does not report the property
            return "?"

    def _compile(self, precision: str) -> ov.CompiledModel:
        settings = {
            hints.performance_mode: hints.PerformanceMode.LATENCY,
            hints.inference_precision: OPENVINO_PRECISIONS[precision],
        }
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            settings[props.cache_dir] = str(self.cache_dir)
        except OSError as exc:  # a read-only cache only costs the compile time at start-up
            log.warning("OpenVINO model cache %s unavailable (%s); compiling without it", self.cache_dir, exc)
        if self.config.num_threads and self.device == "CPU":
            settings[props.inference_num_threads] = int(self.config.num_threads)
        return self.core.compile_model(self._model, self.device, settings)

    def _gate(self, config: BackendConfig) -> None:
        opts = config.options
        minimum = float(opts.get("min_label_agreement", DEFAULT_MIN_LABEL_AGREEMENT))
        folder = opts.get("gate_images")
        if not folder:
            log.warning(
                "OpenVINO %s accuracy gate on synthetic images: pass gate_images for real frames", config.precision
            )
        batches = gate_batches(folder, config.resolution, config.batch_size, int(opts.get("gate_frames", 4)))
        reference = self._compile("fp32").create_infer_request()

        def run_reference(x: np.ndarray) -> np.ndarray:
            reference.infer({0: x})
            return reference.get_output_tensor(0).data.copy()

        self.gate = accuracy_gate(self.infer, run_reference, batches, minimum)
        log.info("OpenVINO %s accuracy gate vs fp32 on %s: %s", config.precision, self.device, self.gate.describe())
        if not self.gate.passed:
            raise ValueError(
                f"OpenVINO {config.precision} on {self.device} failed the accuracy gate against fp32: "
                f"{self.gate.describe()} (minimum agreement {minimum * 100:.2f}%, on "
                f"{'frames from ' + str(folder) if folder else 'synthetic images'}); use precision fp32"
            )

    def infer(self, batch: np.ndarray) -> np.ndarray:
        self._check_batch(batch)
        self.request.infer({0: batch}, share_inputs=True)
        # The output tensor is the request's own memory, overwritten by the next call.
        return self.request.get_output_tensor(0).data.copy()

    def describe(self) -> dict[str, str]:
        info = super().describe()
        info["inference_precision"] = self.inference_precision
        info["threads"] = str(self._get(props.inference_num_threads))
        info["onnx"] = str(self.onnx_path)
        info["openvino"] = ov.get_version()
        if self.gate is not None:
            info["accuracy_gate"] = self.gate.describe()
        return info
