"""TensorRT engine building: build configuration, cache keys and files, INT8 calibration, accuracy gate.

An offline deployment step (``evit-ros build-engine``), also run on a cache miss by the runtime backend
(``evit_ros.runtime.tensorrt_backend``). As in Autoware's tensorrt_common, the build configuration
(``EngineBuildConfig``) and the cache key (``engine_cache_key``) are plain Python, importable without
TensorRT; only the builder imports ``tensorrt``.

Precision plan: all-FP16 engines of these models produce NaN (the linear attention's normaliser
overflows 65504 and its 1e-15 epsilon underflows), so the attention cores must stay FP32. Two routes,
chosen by TensorRT version (``select_precision_route``):

- strongly typed (default for fp16 on TensorRT >= 10): the builder follows the explicit FP16/FP32 types of
  the ``fp16-strong`` ONNX export (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``);
- weakly typed (8.6-10.x; fp16 on 8.6/9.x, int8, or ``typing=weak``): the FP16 flag plus FP32 pins on every
  attention-core layer and, by connectivity, the constants and broadcast shuffles feeding them
  (``select_fp32_layers``), with ``OBEY_PRECISION_CONSTRAINTS``. TensorRT deprecates this from 10.12 and
  removes it in 11, and the INT8 entropy calibrator from 10.1; INT8 on 11.x is refused (it needs explicit
  Q/DQ quantization, which the export does not produce).

New FP16/INT8 engines must pass an accuracy gate against the FP32 ONNX Runtime reference before they are
cached; this also catches TensorRT ignoring precision requests (NVIDIA/TensorRT#3941 on 10.0.1).
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

from evit_ros.deploy.accuracy_gate import calibration_images, load_frames

log = logging.getLogger(__name__)

ENGINE_FORMAT_VERSION = "2"  # 2: FP32 pins by connectivity, typing route, calibration content key
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
        if self.builder_optimization_level is not None and not 0 <= self.builder_optimization_level <= 5:
            raise ValueError("builder_optimization_level must be within 0..5 (TensorRT's default is 3)")
        if self.dla_core is not None:
            if self.dla_core < 0:
                raise ValueError(f"dla_core must be >= 0, not {self.dla_core}")
            if self.precision == "fp32":
                # DLA runs FP16/INT8 only; TensorRT would silently put every layer on the GPU.
                raise ValueError("DLA runs fp16 and int8 only: use precision fp16 (or int8) with dla_core")
            if not self.gpu_fallback:
                # FP32-pinned attention (or the strongly typed FP32 islands) and the cubic Resize are not DLA
                # layers, so a DLA-only build of these models always fails.
                raise ValueError(
                    "these models need GPU fallback on the DLA (FP32 attention and cubic Resize do not run on "
                    "DLA): drop --no-gpu-fallback / gpu_fallback:=false"
                )

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
        # The calibration images' contents, not their folder: a moved folder keeps its engine, edited images do not.
        calib = calibration_fingerprint(build.calibration_dir, build.calibration_images)
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


def calibration_fingerprint(folder: str | os.PathLike, limit: int) -> str:
    """sha256 over the names and contents of the calibration images that are used (the first ``limit``)."""
    from evit_ros.network.weights import sha256_of

    digest = hashlib.sha256()
    for path in calibration_images(folder, limit):
        digest.update(f"{path.name}\0{sha256_of(path)}\n".encode())
    return digest.hexdigest()


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


@dataclass(frozen=True)
class LayerNode:
    """One layer of a network, as the FP32 pin selection sees it (TensorRT layer or ONNX node)."""

    name: str
    type: str  # TensorRT LayerType member name: CONSTANT, SHUFFLE, ELEMENTWISE, ...
    inputs: tuple[str, ...]  # tensor names
    outputs: tuple[str, ...]
    float_outputs: tuple[bool, ...]  # per output: FP32/FP16 (pinnable) or not (shape tensors, int, bool)

    @property
    def all_float(self) -> bool:
        return bool(self.outputs) and all(self.float_outputs)


# Layers that only carry a value to a pinned layer. The ONNX parser feeds an elementwise layer's low-rank operand
# (the 1e-15 epsilon) through a constant layer and a broadcast shuffle named "ONNXTRT_Broadcast" (10.x) or unnamed
# (8.6); TensorRT's constant-shuffle fusion would run that pair in FP16, flushing the epsilon to ~6e-8.
PASS_THROUGH_LAYERS = frozenset({"CONSTANT", "SHUFFLE", "IDENTITY", "CAST", "SLICE", "CONCATENATION"})
_NEVER_SEEDED = frozenset({"CONSTANT", "SHAPE"})


def select_fp32_layers(layers: Sequence[LayerNode], pins: set[str] | frozenset[str]) -> list[str]:
    """Names of the layers to pin to FP32, in network order.

    Seeds: float-valued layers of an attention core, by name (``is_attention_layer``). Then, by connectivity,
    every float producer of a pinned layer reached back through constant/shuffle-like layers, whatever its
    name: the parser's broadcast shuffles and constants carry no attention scope.
    """
    producer = {out: layer for layer in layers for out in layer.outputs}
    pinned: set[str] = set()
    stack: list[LayerNode] = []
    for layer in layers:
        if layer.type not in _NEVER_SEEDED and layer.all_float and is_attention_layer(layer.name, pins):
            pinned.add(layer.name)
            stack.append(layer)
    while stack:
        layer = stack.pop()
        for tensor in layer.inputs:
            src = producer.get(tensor)
            if src is None or src.name in pinned or src.type not in PASS_THROUGH_LAYERS:
                continue
            if not src.float_outputs[src.outputs.index(tensor)]:
                continue  # a shape tensor (e.g. a shuffle's reshape dimensions): not a value to pin
            pinned.add(src.name)
            stack.append(src)
    return [layer.name for layer in layers if layer.name in pinned]


@dataclass(frozen=True)
class PrecisionRoute:
    """How an engine of a given precision is built on a given TensorRT version."""

    strongly_typed: bool  # STRONGLY_TYPED network from the fp16-strong ONNX (fp16) or the fp32 ONNX (fp32)
    weak_flags: bool  # FP16 (and INT8) builder flags with FP32 pins and OBEY_PRECISION_CONSTRAINTS
    warnings: tuple[str, ...] = ()


def parse_version(version: str) -> tuple[int, int]:
    """(major, minor) of a TensorRT version string such as "10.3.0" or "8.6.1.post1"."""
    parts = version.strip().split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError as exc:
        raise ValueError(f"unrecognised TensorRT version {version!r}") from exc


def select_precision_route(version: str, precision: str, typing: str = "auto") -> PrecisionRoute:
    """The build route for ``precision`` on TensorRT ``version``; ``typing`` is auto | strong | weak (fp16 only).

    Weak typing (FP16 flag, OBEY_PRECISION_CONSTRAINTS, per-layer precision) is deprecated from TensorRT 10.12 and
    removed in 11; the implicit INT8 calibrator is deprecated from 10.1. Raises ValueError for what cannot work.
    """
    major, minor = parse_version(version)
    if (major, minor) < (8, 6):
        raise ValueError(f"TensorRT {version} is too old: evit_ros needs TensorRT 8.6 or newer")
    if typing not in ("auto", "strong", "weak"):
        raise ValueError(f"typing must be auto, strong or weak, not {typing!r}")
    removed = major >= 11
    deprecated = (major, minor) >= (10, 12)
    if precision == "fp32":
        # An FP32 network needs no precision flags, weakly or strongly typed.
        return PrecisionRoute(strongly_typed=False, weak_flags=False)
    if precision == "int8":
        if removed:
            raise ValueError(
                f"INT8 on TensorRT {version} needs explicit quantization (a Q/DQ ONNX), which evit_ros does not "
                "export; implicit calibration was removed in TensorRT 11. Use precision fp16"
            )
        notes = []
        if (major, minor) >= (10, 1):
            notes.append(f"the INT8 entropy calibrator is deprecated since TensorRT 10.1 (this is {version})")
        if deprecated:
            notes.append(f"weakly typed precision control is deprecated since TensorRT 10.12 (this is {version})")
        return PrecisionRoute(strongly_typed=False, weak_flags=True, warnings=tuple(notes))
    if precision != "fp16":
        raise ValueError(f"TensorRT precision must be fp32, fp16 or int8, not {precision}")
    if typing == "auto":
        typing = "strong" if major >= 10 else "weak"
    if typing == "strong":
        if major < 10:
            raise ValueError(f"strongly typed builds need TensorRT >= 10, this is {version}: use typing weak")
        return PrecisionRoute(strongly_typed=True, weak_flags=False)
    if removed:
        raise ValueError(f"weak typing (FP16 flag with FP32 pins) was removed in TensorRT 11 ({version}): use strong")
    notes = (f"weakly typed precision control is deprecated since TensorRT 10.12 (this is {version})",)
    return PrecisionRoute(strongly_typed=False, weak_flags=True, warnings=notes if deprecated else ())


# TensorRT's ILogger.Severity values, most severe first (NvInferRuntimeBase.h: kINTERNAL_ERROR = 0 ... kVERBOSE = 4).
SEVERITY_RANK = {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4}


def min_trt_severity(python_level: int, verbose: bool = False) -> str:
    """The least severe TensorRT message worth passing to Python logging at ``python_level``.

    Everything less severe is dropped in the logger before it reaches Python (VERBOSE alone is thousands of
    messages per build, each a GIL round trip). VERBOSE only on request (EVIT_ROS_TRT_VERBOSE=1).
    """
    if python_level <= logging.DEBUG:
        return "VERBOSE" if verbose else "INFO"
    if python_level <= logging.WARNING:
        return "WARNING"
    return "ERROR"


# TensorRT DataType member name -> torch dtype name (TensorRT's pyFoundationalTypes.cpp members; FP8, INT4 and
# FP4 have no torch buffer type this backend could bind).
TORCH_DTYPE_OF_TRT = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}


def torch_dtype_name(trt_dtype_name: str, tensor: str = "") -> str:
    """The torch dtype name for a TensorRT DataType member name; ValueError for types with no torch buffer."""
    try:
        return TORCH_DTYPE_OF_TRT[trt_dtype_name]
    except KeyError:
        raise ValueError(
            f"engine tensor {tensor!r} has TensorRT type {trt_dtype_name}, which this backend cannot bind "
            f"(supported: {', '.join(TORCH_DTYPE_OF_TRT)})"
        ) from None


def profile_shape(name: str, dims: Sequence[int], wanted: Sequence[int]) -> tuple[int, ...] | None:
    """The shape for an optimization profile of input ``name`` with network dims ``dims`` (-1 = dynamic), or None
    when it is static. min = opt = max = ``wanted``: the backend only ever runs the configured shape."""
    dims, wanted = tuple(int(d) for d in dims), tuple(int(w) for w in wanted)
    if len(dims) != len(wanted):
        raise ValueError(f"input {name} has rank {len(dims)}, the configuration {wanted} rank {len(wanted)}")
    for d, w in zip(dims, wanted):
        if d >= 0 and d != w:
            raise ValueError(f"input {name} has static shape {dims}, which does not fit the configured {wanted}")
    return wanted if any(d < 0 for d in dims) else None


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
    """Routes TensorRT messages to Python logging, dropping those below a minimum severity before Python sees them."""

    @staticmethod
    def create(trt, min_severity: str | None = None):
        if min_severity is None:
            verbose = os.environ.get("EVIT_ROS_TRT_VERBOSE", "") not in ("", "0")
            min_severity = min_trt_severity(log.getEffectiveLevel(), verbose)
        sev = trt.ILogger.Severity
        levels = {
            sev.INTERNAL_ERROR: logging.CRITICAL,
            sev.ERROR: logging.ERROR,
            sev.WARNING: logging.WARNING,
            sev.INFO: logging.DEBUG,
            sev.VERBOSE: logging.DEBUG,
        }

        class Logger(trt.ILogger):
            def __init__(self, threshold) -> None:
                trt.ILogger.__init__(self)
                self.min_severity = threshold

            def log(self, severity, msg) -> None:
                # Severity is an arithmetic enum, most severe = 0 (pyCore.cpp); larger means less severe.
                if int(severity) > int(self.min_severity):
                    return
                log.log(levels.get(severity, logging.DEBUG), "TensorRT: %s", msg)

        return Logger(getattr(sev, min_severity))


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
            # "cuda" is the backend's device: it calls torch.cuda.set_device before building.
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


def enum_name(value) -> str:
    """A TensorRT enum member's name ("CONSTANT" for trt.LayerType.CONSTANT), from `.name` or its str()."""
    name = getattr(value, "name", None)
    return name if isinstance(name, str) else str(value).rsplit(".", 1)[-1]


def tensorrt_layers(trt, network) -> list[LayerNode]:
    """The parsed network as LayerNode records for ``select_fp32_layers``."""
    float_types = (trt.float32, trt.float16)
    layers = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        inputs = []
        for j in range(layer.num_inputs):
            tensor = layer.get_input(j)
            if tensor is not None:  # optional inputs are None
                inputs.append(tensor.name)
        outputs = [layer.get_output(j) for j in range(layer.num_outputs)]
        layers.append(
            LayerNode(
                layer.name,
                enum_name(layer.type),
                tuple(inputs),
                tuple(o.name for o in outputs),
                tuple(o.dtype in float_types and not o.is_shape_tensor for o in outputs),
            )
        )
    return layers


def _pin_attention_fp32(trt, network, pins: frozenset[str]) -> None:
    selected = select_fp32_layers(tensorrt_layers(trt, network), pins)
    chosen = set(selected)
    by_connectivity = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.name not in chosen:
            continue
        layer.precision = trt.float32
        for j in range(layer.num_outputs):
            layer.set_output_type(j, trt.float32)
        by_connectivity += not is_attention_layer(layer.name, pins)
    log.info(
        "pinned %d layers to FP32 (%d ONNX pins; %d constants/shuffles found by connectivity)",
        len(selected),
        len(pins),
        by_connectivity,
    )
    if pins and not selected:
        raise RuntimeError("no attention-core layer could be pinned to FP32; refusing to build an all-FP16 engine")


def _add_optimization_profile(builder, network, config, input_shape: Sequence[int]):
    """An optimization profile for dynamic inputs (a dynamic-batch ONNX); None when every input is static."""
    profile = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = profile_shape(tensor.name, tuple(tensor.shape), input_shape)
        if shape is None:
            continue
        if profile is None:
            profile = builder.create_optimization_profile()
        profile.set_shape(tensor.name, shape, shape, shape)
    if profile is not None:
        if config.add_optimization_profile(profile) < 0:
            raise RuntimeError(f"TensorRT rejected the optimization profile for input shape {tuple(input_shape)}")
        log.info("dynamic ONNX input: optimization profile fixed at %s", tuple(input_shape))
    return profile


def build_serialized_engine(
    trt,
    onnx_path: Path,
    build: EngineBuildConfig,
    timing_cache: Path,
    calibration_cache: Path,
    resolution,
    batch: int,
) -> bytes:
    logger = _TrtLogger.create(trt)
    builder = trt.Builder(logger)
    if build.dla_core is not None and build.dla_core >= builder.num_DLA_cores:
        raise ValueError(f"DLA core {build.dla_core} requested, but this device has {builder.num_DLA_cores} DLA cores")
    flags = 0
    if _trt_major(trt) < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if build.strongly_typed:
        if not hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            raise TensorRTUnavailable(f"strongly typed networks need TensorRT >= 10, this is {trt.__version__}")
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
    input_shape = (batch, 3, *resolution)
    profile = _add_optimization_profile(builder, network, config, input_shape)
    if not build.strongly_typed and build.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        if build.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            batches = load_frames(build.calibration_dir, resolution, batch, build.calibration_images)
            config.int8_calibrator = _make_calibrator(trt, batches, calibration_cache)
            if profile is not None:
                config.set_calibration_profile(profile)  # calibration of a dynamic input needs a profile
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        _pin_attention_fp32(trt, network, frozenset(build.fp32_pins))
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
