"""TensorRT runtime backend: loads a cached engine (building it on a miss, see
``evit_ros.deploy.tensorrt_build``), binds CUDA buffers and runs it on a CUDA stream.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from evit_ros.deploy.accuracy_gate import accuracy_gate, gate_batches
from evit_ros.deploy.tensorrt_build import (
    EngineBuildConfig,
    TensorRTUnavailable,
    atomic_write,
    build_serialized_engine,
    calibration_fingerprint,
    engine_cache_key,
    engine_cache_root,
    engine_path,
    enum_name,
    gate_failure_path,
    import_tensorrt,
    load_or_build,
    parse_version,
    profile_shape,
    record_gate_failure,
    select_precision_route,
    stored_gate_failure,
    timing_cache_path,
    torch_dtype_name,
    trt_logger,
)
from evit_ros.runtime.base import Backend, BackendConfig
from evit_ros.runtime.devices import torch_device
from evit_ros.runtime.options import option

log = logging.getLogger(__name__)

# IExecutionContext::setTensorAddress wants I/O pointers aligned to 256 bytes (NvInferRuntime.h v8.6.1:3219,3239,
# v10.3.0:3984,4003, v11.1:4356,4378); torch's caching allocator gives 512-byte aligned blocks, a view may not be.
TENSOR_ALIGNMENT = 256


def bindable(tensor) -> bool:
    """Whether TensorRT can read ``tensor`` in place: contiguous and 256-byte aligned."""
    return tensor.is_contiguous() and tensor.data_ptr() % TENSOR_ALIGNMENT == 0


__all__ = ["TensorRTBackend", "TensorRTUnavailable"]


@dataclass
class _EngineInfo:
    path: Path
    key: str
    fields: dict = field(default_factory=dict)


class TensorRTBackend(Backend):
    name = "tensorrt"
    device_frames = True

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        from evit_ros.deploy.onnx_export import ensure_onnx
        from evit_ros.deploy.onnx_graph import fp32_pin_nodes, metadata, require_float_io, require_logits
        from evit_ros.network.variants import get_variant
        from evit_ros.network.weights import sha256_of

        opts = config.options
        variant = get_variant(config.model)
        precision = config.precision
        typing = option(opts, "typing")
        # Everything that can be checked without TensorRT is checked first, so bad input fails the same way on
        # every machine: the engine's build settings, then a user ONNX's head.
        build = EngineBuildConfig(
            precision=precision,
            workspace_mib=option(opts, "workspace_mib"),
            tf32=option(opts, "tf32"),
            dla_core=option(opts, "dla_core"),
            gpu_fallback=option(opts, "gpu_fallback"),
            calibration_dir=option(opts, "calibration_dir"),
            calibration_images=option(opts, "calibration_images"),
            builder_optimization_level=option(opts, "builder_optimization_level"),
            min_label_agreement=option(opts, "min_label_agreement"),
            gate_images=option(opts, "gate_images"),
            gate_frames=option(opts, "gate_frames"),
        )
        user_onnx = config.weights is not None and str(config.weights).lower().endswith(".onnx")
        user_precision = None
        if user_onnx:
            onnx_path = Path(config.weights).expanduser()
            if not onnx_path.is_file():
                raise FileNotFoundError(f"ONNX model not found: {onnx_path}")
            meta = metadata(onnx_path)
            require_logits(onnx_path, meta)
            require_float_io(onnx_path)
            user_precision = meta.get("precision", "fp32")
            reference_onnx = onnx_path if user_precision == "fp32" else None
            if option(opts, "reference_onnx"):
                reference_onnx = Path(option(opts, "reference_onnx")).expanduser()
                require_logits(reference_onnx)
                require_float_io(reference_onnx)

        self.trt = trt = import_tensorrt()
        import torch

        if not torch.cuda.is_available():
            raise TensorRTUnavailable("TensorRT needs a CUDA device, and torch sees none")
        device = torch_device(config.device, "cuda")
        if device.type != "cuda":
            raise ValueError(f"TensorRT runs on CUDA devices, not {device}")
        torch.cuda.set_device(device)
        config.device = str(device)
        self.device = device

        route = select_precision_route(trt.__version__, precision, typing, dla=build.dla_core is not None)
        for note in route.warnings:
            log.warning("TensorRT %s: %s", precision, note)
        strongly_typed = route.strongly_typed
        if user_onnx:
            if strongly_typed and user_precision != "fp16-strong":
                if typing == "strong" or parse_version(trt.__version__)[0] >= 11:
                    raise ValueError(
                        f"{onnx_path} is a {user_precision} ONNX; a strongly typed fp16 engine needs the fp16-strong "
                        "export (evit-ros export --precision fp16-strong)"
                    )
                log.warning("%s is not an fp16-strong export: building it weakly typed (FP32 pins)", onnx_path)
                strongly_typed = False
            elif not strongly_typed and user_precision == "fp16-strong":
                raise ValueError(f"{onnx_path} is an fp16-strong ONNX: build it with typing strong (TensorRT >= 10)")
        else:
            reference_onnx = ensure_onnx(
                variant.name, config.weights, config.resolution, config.engine_cache_dir, "fp32", config.batch_size
            )
            onnx_path = reference_onnx
            if strongly_typed:
                onnx_path = ensure_onnx(
                    variant.name,
                    config.weights,
                    config.resolution,
                    config.engine_cache_dir,
                    "fp16-strong",
                    config.batch_size,
                )
        self.checkpoint_sha256 = metadata(onnx_path).get("checkpoint_sha256", "")
        pins = tuple(fp32_pin_nodes(onnx_path)) if precision != "fp32" and not strongly_typed else ()
        build = dataclasses.replace(build, strongly_typed=strongly_typed, fp32_pins=pins)
        self.build_config = build
        gpu = torch.cuda.get_device_name(device)
        cc = torch.cuda.get_device_capability(device)
        key = engine_cache_key(sha256_of(onnx_path), trt.__version__, gpu, cc, build, self.input_shape)
        root = engine_cache_root(config.engine_cache_dir)
        path = engine_path(root, variant.name, precision + ("-strong" if strongly_typed else ""), key)
        fields = {
            "key": key,
            "model": variant.name,
            "onnx": str(onnx_path),
            "tensorrt": trt.__version__,
            "gpu": gpu,
            "compute_capability": list(cc),
            "input_shape": list(self.input_shape),
            "build": asdict(build),
        }
        self.engine_info = _EngineInfo(path, key, fields)
        self.runtime = trt.Runtime(trt_logger(trt))
        if build.dla_core is not None:
            # A DLA engine deserializes onto the runtime's DLA core, which must be chosen first.
            if build.dla_core >= self.runtime.num_DLA_cores:
                cores = self.runtime.num_DLA_cores
                raise ValueError(f"DLA core {build.dla_core} requested, but this device has {cores} DLA cores")
            self.runtime.DLA_core = int(build.dla_core)

        def build_engine():
            gate = self._gate_inputs(reference_onnx, build) if build.needs_gate else None
            if gate is not None:
                stored = stored_gate_failure(path, key, gate, build.min_label_agreement)
                if stored:
                    raise RuntimeError(stored)
            timing = timing_cache_path(root, trt.__version__, gpu, cc)
            calib = root / f"calibration_{key[:24]}.cache"
            log.info(
                "building TensorRT %s engine for %s %s (cache %s); other processes wait for it",
                precision,
                variant.name,
                self.input_shape,
                path,
            )
            blob = build_serialized_engine(
                trt, onnx_path, build, timing, calib, config.resolution, config.batch_size, str(device)
            )
            engine = self.runtime.deserialize_cuda_engine(blob)
            if engine is None:
                raise RuntimeError("TensorRT could not deserialize the engine it just built")
            self.engine = engine
            self._setup_io()
            if gate is not None:
                self._gate(reference_onnx, build, path, key, gate)
            # Sidecar first: a process that finds the engine file (without the lock) then also finds its key.
            atomic_write(path.with_suffix(".json"), json.dumps(fields, indent=1, default=str).encode())
            atomic_write(path, blob)
            return engine

        self.context = None
        self.engine = load_or_build(path, lambda: self._load_cached(path, key), build_engine)
        if self.context is None:
            self._setup_io()

    def _load_cached(self, path: Path, key: str):
        if not path.is_file():
            return None
        sidecar = path.with_suffix(".json")
        try:
            stored = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            stored = {}
        if stored.get("key") != key:
            log.warning("TensorRT engine %s does not match this configuration (cache key); rebuilding", path)
            return None
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            log.warning("TensorRT engine %s is corrupt or from another TensorRT/GPU; rebuilding", path)
            return None
        log.info("loaded TensorRT engine %s", path)
        return engine

    def _setup_io(self) -> None:
        import torch

        trt = self.trt
        self.context = self.engine.create_execution_context()
        self.stream = torch.cuda.Stream(device=self.device)
        self.buffers: dict[str, torch.Tensor] = {}
        self.input_name = self.output_name = None
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        for name in names:
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.input_name = name
                # A dynamic input takes the configured shape (within the engine's optimization profile).
                profile_shape(name, tuple(self.engine.get_tensor_shape(name)), self.input_shape)
                if not self.context.set_input_shape(name, self.input_shape):
                    raise ValueError(f"the engine does not accept input shape {self.input_shape} for {name}")
        for name in names:
            # Sizes come from the context, where set_input_shape has resolved every -1 of a dynamic engine.
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"TensorRT left tensor {name} with unresolved shape {shape}")
            dtype = getattr(torch, torch_dtype_name(enum_name(self.engine.get_tensor_dtype(name)), name))
            self.buffers[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self._bind(name, self.buffers[name])
            if name != self.input_name:
                self.output_name = name
        if self.buffers[self.input_name].dtype != torch.float32:
            raise ValueError(f"engine input {self.input_name} is {self.buffers[self.input_name].dtype}, not float32")
        if self.buffers[self.output_name].dtype not in (torch.float32, torch.float16):
            # float16 logits are widened on the host; other types have no numpy view of the host buffer.
            raise ValueError(
                f"engine output {self.output_name} is {self.buffers[self.output_name].dtype}: float32 or float16 "
                "logits are needed"
            )
        # Host frame path: page-locked staging buffers, allocated once, so both copies are true async DMA on the
        # stream and infer() synchronises once per frame.
        device_in, device_out = self.buffers[self.input_name], self.buffers[self.output_name]
        self.host_input = torch.empty(device_in.shape, dtype=device_in.dtype, pin_memory=True)
        self.host_output = torch.empty(device_out.shape, dtype=device_out.dtype, pin_memory=True)
        self._host_input_np = self.host_input.numpy()
        self._host_output_np = self.host_output.numpy()

    def _bind(self, name: str, tensor) -> None:
        # The binding returns False for an address TensorRT refuses (pyCore.cpp v8.6.1:131-134); ignored, the
        # engine would read or write the previous address.
        if not self.context.set_tensor_address(name, tensor.data_ptr()):
            raise RuntimeError(f"TensorRT refused the address {tensor.data_ptr():#x} for tensor {name}")

    def _gate_inputs(self, reference_onnx: Path | None, build: EngineBuildConfig) -> dict:
        """What the gate's verdict depends on besides the engine: its frames and its reference."""
        from evit_ros.network.weights import sha256_of

        folder = build.gate_images or build.calibration_dir
        return {
            "frames": calibration_fingerprint(folder, build.gate_frames) if folder else "synthetic",
            "gate_frames": build.gate_frames,
            "reference_onnx": sha256_of(reference_onnx) if reference_onnx is not None else None,
        }

    def _gate(self, reference_onnx: Path | None, build: EngineBuildConfig, path: Path, key: str, gate: dict) -> None:
        """Every new reduced-precision engine runs on the gate frames before it is cached: against the FP32 ONNX
        Runtime reference when there is one, else for NaN/Inf alone. A failure is remembered beside the engine."""
        folder = build.gate_images or build.calibration_dir
        if not folder:
            log.warning("accuracy gate on synthetic images: pass gate_images / --gate-images for real frames")
        batches = gate_batches(folder, self.config.resolution, self.config.batch_size, build.gate_frames)
        reference = None
        if reference_onnx is None:
            log.warning("no FP32 reference ONNX (options['reference_onnx']): the gate checks for NaN/Inf only")
        else:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(reference_onnx), providers=["CPUExecutionProvider"])
            in_name = sess.get_inputs()[0].name

            def reference(x):
                return sess.run(None, {in_name: x})[0]

        result = accuracy_gate(self.infer, reference, batches, build.min_label_agreement)
        log.info("TensorRT %s accuracy gate vs FP32 ONNX Runtime: %s", build.precision, result.describe())
        if result.nonfinite and self.trt.__version__.startswith("10.0."):
            log.warning(
                "NaN/Inf from a TensorRT %s engine: 10.0.x can ignore per-layer precision (NVIDIA/TensorRT#3941); "
                "use a newer TensorRT or typing strong",
                self.trt.__version__,
            )
        if not result.passed:
            reason = (
                f"TensorRT {build.precision} engine failed the accuracy gate ({result.describe()}; minimum agreement "
                f"{build.min_label_agreement * 100:.1f}%); not cached"
            )
            record_gate_failure(path, key, gate, result, build.min_label_agreement, reason)
            raise RuntimeError(reason)
        gate_failure_path(path).unlink(missing_ok=True)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        self._check_batch(batch)  # a static engine: exactly batch_size frames, never broadcast into every slot
        np.copyto(self._host_input_np, batch)
        # After the device path's post-processing, queued on the current stream, has read the output buffer.
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            self.buffers[self.input_name].copy_(self.host_input, non_blocking=True)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            self.host_output.copy_(self.buffers[self.output_name], non_blocking=True)
        self.stream.synchronize()
        # The caller owns the result (a batch split over several calls keeps each), so it leaves the staging buffer.
        return self._host_output_np.astype(np.float32, copy=True)

    def infer_device(self, batch):
        """The engine on a float32 batch already on the GPU (the device frame path). The engine runs on the
        backend's own stream, never torch's current one, usually the legacy default stream, which costs TensorRT
        extra synchronisation (NvInferRuntime.h v10.3.0:4264-4265, enqueueV3): that stream waits for the
        pre-processing queued on the current stream, and the current stream waits for the engine, so the
        post-processing queued next reads the returned output buffer (valid until the next call) complete.
        A contiguous, 256-byte aligned batch is bound in place for this call; another is copied into the
        engine's input buffer."""
        import torch

        own = self.buffers[self.input_name]
        if batch.dtype != own.dtype or batch.shape != own.shape or batch.device != own.device:
            raise ValueError(f"TensorRT engine takes {own.dtype} {tuple(own.shape)} on {own.device}, got "
                             f"{batch.dtype} {tuple(batch.shape)} on {batch.device}")  # fmt: skip
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        in_place = bindable(batch)
        if in_place:
            batch.record_stream(self.stream)  # the caching allocator must not reuse it before the engine read it
            self._bind(self.input_name, batch)
        else:
            with torch.cuda.stream(self.stream):
                own.copy_(batch)
        try:
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
        finally:
            if in_place:
                self._bind(self.input_name, own)  # infer() keeps its own buffer
        current.wait_stream(self.stream)
        return self.buffers[self.output_name]

    def describe(self) -> dict[str, str]:
        info = super().describe()
        info.update({"engine": str(self.engine_info.path), "tensorrt": self.trt.__version__})
        if self.build_config.strongly_typed:
            info["precision"] = "fp16-strong"
        return info
