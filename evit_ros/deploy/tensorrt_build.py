"""TensorRT engine building: build configuration, cache keys and files, INT8 calibration, accuracy gate.

An offline deployment step (``evit-ros build-engine``), also run on a cache miss by the runtime backend
(``evit_ros.runtime.tensorrt_backend``). As in Autoware's tensorrt_common, the build configuration
(``EngineBuildConfig``) and the cache key (``engine_cache_key``) are plain Python, importable without
TensorRT; only the builder imports ``tensorrt``.

Precision plan: all-FP16 engines of these models produce NaN (the linear attention's normaliser
overflows 65504 and its 1e-15 epsilon underflows), so FP16/INT8 builds pin every
attention-core layer (ONNX nodes under ``/linear_attention/``, see ``onnx_graph.fp32_pin_nodes``)
to FP32 with ``OBEY_PRECISION_CONSTRAINTS``; or, with ``strongly_typed``, the builder follows the
explicit FP16/FP32 types of the ``fp16-strong`` ONNX export. New FP16/INT8 engines must pass an
accuracy gate against the FP32 ONNX Runtime reference before they are cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evit_ros.deploy.accuracy_gate import load_frames

log = logging.getLogger(__name__)

ENGINE_FORMAT_VERSION = "1"
ATTENTION_TOKEN = "/linear_attention/"
PROGRESS_INTERVAL_S = 5.0


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a CUDA device for it) is not available."""


@dataclass
class EngineBuildConfig:
    """Everything that shapes a TensorRT engine build (and so its cache key), plus the accuracy gate."""

    precision: str = "fp16"  # fp32 | fp16 | int8
    strongly_typed: bool = False  # build the fp16-strong ONNX with STRONGLY_TYPED (TensorRT >= 10)
    fp32_pins: tuple[str, ...] = ()  # ONNX node names pinned to FP32 (fp16/int8, not strongly typed)
    workspace_mib: int = 2048
    tf32: bool = False  # TF32 stays off: FP32 pins must really be FP32
    dla_core: int | None = None  # Jetson DLA core; layers DLA cannot run fall back to the GPU
    gpu_fallback: bool = True
    calibration_dir: str | None = None  # INT8: folder of images for IInt8EntropyCalibrator2
    calibration_images: int = 64
    builder_optimization_level: int | None = None  # TensorRT default (3) when None
    # Accuracy gate, not part of the engine: compared with the FP32 ONNX Runtime reference.
    min_label_agreement: float = 0.99
    gate_images: str | None = None  # folder of sample frames; default: calibration_dir, else seeded noise
    gate_frames: int = 4

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "fp16", "int8"):
            raise ValueError(f"TensorRT precision must be fp32, fp16 or int8, not {self.precision}")
        if self.strongly_typed and self.precision != "fp16":
            raise ValueError("strongly typed builds take their types from the fp16-strong ONNX: use precision fp16")
        if self.precision == "int8" and not self.calibration_dir:
            raise ValueError("INT8 needs calibration images (calibration_dir / --calibration-dir)")
        if not 0.0 <= self.min_label_agreement <= 1.0:
            raise ValueError("min_label_agreement must be within [0, 1]")

    @property
    def needs_gate(self) -> bool:
        return self.precision != "fp32"


def engine_cache_key(
    onnx_sha256: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int] | str,
    build: EngineBuildConfig,
    input_shape: Sequence[int],
) -> str:
    """sha256 over what makes an engine valid: ONNX, TensorRT, GPU, precision and pins, shape, workspace, TF32."""
    cc = (
        compute_capability
        if isinstance(compute_capability, str)
        else f"{compute_capability[0]}.{compute_capability[1]}"
    )
    calib = None
    if build.precision == "int8" and build.calibration_dir:
        calib = [str(Path(build.calibration_dir).expanduser().resolve()), build.calibration_images]
    fields = {
        "format": ENGINE_FORMAT_VERSION,
        "onnx_sha256": onnx_sha256,
        "tensorrt": tensorrt_version,
        "gpu": gpu_name,
        "compute_capability": cc,
        "precision": build.precision,
        "strongly_typed": build.strongly_typed,
        "fp32_pins": sorted(set(build.fp32_pins)) if build.precision != "fp32" and not build.strongly_typed else [],
        "input_shape": [int(v) for v in input_shape],
        "workspace_bytes": int(build.workspace_mib) << 20,
        "tf32": build.tf32,
        "dla_core": build.dla_core,
        "gpu_fallback": build.gpu_fallback if build.dla_core is not None else None,
        "calibration": calib,
        "builder_optimization_level": build.builder_optimization_level,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def engine_cache_root(engine_cache_dir: str | os.PathLike | None = None) -> Path:
    """Persistent engine cache: `engine_cache_dir`, else evit_ros.weights.cache_dir()/tensorrt (never /tmp)."""
    from evit_ros.network.weights import cache_dir

    return Path(engine_cache_dir).expanduser() if engine_cache_dir else cache_dir() / "tensorrt"


def engine_path(root: Path, model: str, precision: str, key: str) -> Path:
    return root / f"{model}_{precision}_{key[:24]}.engine"


def is_attention_layer(name: str, pins: set[str] | frozenset[str]) -> bool:
    """Whether a TensorRT layer belongs to an attention core: an ONNX pin by name, or a layer the parser
    derived from one (TensorRT layer names start with the ONNX node name)."""
    return name in pins or ATTENTION_TOKEN in name


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# --------------------------------------------------------------------------------------------
# Everything below needs TensorRT.


def import_tensorrt():
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a stub package that raises on import
        raise TensorRTUnavailable(
            f"TensorRT is not available ({type(exc).__name__}: {exc}). Install NVIDIA TensorRT 10 for this GPU/JetPack "
            "(the 'tensorrt' Python package matching your CUDA), or use --backend torch / onnxruntime"
        ) from exc
    return trt


def _trt_major(trt) -> int:
    return int(trt.__version__.split(".")[0])


class _TrtLogger:
    """Routes TensorRT messages to Python logging."""

    @staticmethod
    def create(trt):
        class Logger(trt.ILogger):
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity, msg) -> None:
                level = {
                    trt.ILogger.INTERNAL_ERROR: logging.ERROR,
                    trt.ILogger.ERROR: logging.ERROR,
                    trt.ILogger.WARNING: logging.WARNING,
                    trt.ILogger.INFO: logging.DEBUG,
                }.get(severity, logging.DEBUG)
                log.log(level, "TensorRT: %s", msg)

        return Logger()


def _progress_monitor(trt):
    """IProgressMonitor (TensorRT >= 10) that logs the current phase every few seconds."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class Monitor(trt.IProgressMonitor):
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.start = time.monotonic()
            self.last = 0.0
            self.phases: dict[str, tuple[int, int]] = {}

        def phase_start(self, phase_name, parent_phase, num_steps) -> None:
            self.phases[phase_name] = (0, num_steps)

        def step_complete(self, phase_name, step) -> bool:
            total = self.phases.get(phase_name, (0, 0))[1]
            self.phases[phase_name] = (step + 1, total)
            now = time.monotonic()
            if now - self.last >= PROGRESS_INTERVAL_S:
                self.last = now
                log.info("building TensorRT engine: %.0f s, %s %d/%d", now - self.start, phase_name, step + 1, total)
            return True  # False would cancel the build

        def phase_finish(self, phase_name) -> None:
            self.phases.pop(phase_name, None)

    return Monitor()


class _ElapsedLogger:
    """Fallback progress for TensorRT < 10: a thread logging elapsed build time."""

    def __init__(self, interval: float = PROGRESS_INTERVAL_S) -> None:
        self.interval = interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self.stop.wait(self.interval):
            log.info("building TensorRT engine: %.0f s elapsed", time.monotonic() - start)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def _make_calibrator(trt, batches: list[np.ndarray], cache_file: Path):
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.batches = batches
            self.index = 0
            self.device_input = torch.empty(batches[0].shape, dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return int(self.batches[0].shape[0])

        def get_batch(self, names):
            if self.index >= len(self.batches):
                return None
            self.device_input.copy_(torch.from_numpy(self.batches[self.index]))
            torch.cuda.synchronize()
            self.index += 1
            return [int(self.device_input.data_ptr())]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            atomic_write(cache_file, bytes(cache))

    return EntropyCalibrator()


def build_serialized_engine(
    trt, onnx_path: Path, build: EngineBuildConfig, timing_cache: Path, calibration_cache: Path, resolution, batch: int
) -> bytes:
    logger = _TrtLogger.create(trt)
    builder = trt.Builder(logger)
    flags = 0
    if _trt_major(trt) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if build.strongly_typed:
        if not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            raise TensorRTUnavailable(f"strongly typed networks need TensorRT >= 9/10, this is {trt.__version__}")
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(build.workspace_mib) << 20)
    if not build.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
    if build.builder_optimization_level is not None:
        config.builder_optimization_level = build.builder_optimization_level
    if not build.strongly_typed and build.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        if build.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            batches = load_frames(build.calibration_dir, resolution, batch, build.calibration_images)
            config.int8_calibrator = _make_calibrator(trt, batches, calibration_cache)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pins = frozenset(build.fp32_pins)
        pinned, matched = 0, set()
        float_types = (trt.float32, trt.float16)
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            if not is_attention_layer(layer.name, pins):
                continue
            outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
            if layer.type in (trt.LayerType.CONSTANT, trt.LayerType.SHAPE) or not all(
                o.dtype in float_types for o in outputs
            ):
                continue  # shape arithmetic and constants keep their own types
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
            matched.add(layer.name)
        missing = sorted(pins - matched)
        log.info(
            "pinned %d attention-core layers to FP32 (%d ONNX pins, %d not found by name)",
            pinned,
            len(pins),
            len(missing),
        )
        if missing:
            log.debug("ONNX pins without a same-named TensorRT layer: %s", missing[:8])
        if pins and pinned == 0:
            raise RuntimeError("no attention-core layer could be pinned to FP32; refusing to build an all-FP16 engine")
    if build.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(build.dla_core)
        if build.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    cache = config.create_timing_cache(timing_cache.read_bytes() if timing_cache.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt)
    start = time.monotonic()
    if monitor is not None:
        config.progress_monitor = monitor
        serialized = builder.build_serialized_network(network, config)
    else:
        with _ElapsedLogger():
            serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    log.info("built TensorRT engine in %.1f s", time.monotonic() - start)
    atomic_write(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized)
