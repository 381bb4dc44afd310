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

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from evit_ros.deploy.accuracy_gate import FrameBatches, GateResult, calibration_images

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


def timing_cache_path(root: Path, tensorrt_version: str, gpu_name: str, compute_capability: Sequence[int]) -> Path:
    """The timing cache shared by every engine build for one TensorRT version and GPU (tactic timings, not engines)."""
    gpu_slug = "".join(c if c.isalnum() else "-" for c in gpu_name)
    major, minor = compute_capability
    return root / f"timing_{tensorrt_version}_{gpu_slug}_sm{major}{minor}.cache"


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


def select_precision_route(version: str, precision: str, typing: str = "auto", dla: bool = False) -> PrecisionRoute:
    """The build route for ``precision`` on TensorRT ``version``; ``typing`` is auto | strong | weak (fp16 only).

    Weak typing (FP16 flag, OBEY_PRECISION_CONSTRAINTS, per-layer precision) is deprecated from TensorRT 10.12 and
    removed in 11; the implicit INT8 calibrator is deprecated from 10.1. Raises ValueError for what cannot work.
    ``dla``: a DLA build. Before TensorRT 11, DLA precision comes from the FP16/INT8 builder flags (NVIDIA's DLA
    guide: ``trtexec --useDLACore=0 --fp16 --allowGPUFallback``), so fp16 takes the weak route; from 11 on, DLA
    networks are strongly typed (and Orin has DLA on 11 only from JetPack 7.2.2).
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
        typing = "strong" if major >= 11 or (major >= 10 and not dla) else "weak"
    if typing == "strong":
        if dla and major < 11:
            raise ValueError(
                f"DLA builds on TensorRT {version} take their precision from the FP16 flag: use typing weak or auto"
            )
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


@contextlib.contextmanager
def build_lock(engine: Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive ``fcntl.flock`` on ``<engine>.lock``: one process builds a given engine at a time.

    The lock file stays (removing it would let a third process lock a new file while the second holds the old one).
    The kernel drops the lock when its holder dies, so a killed build never blocks the next start. ``on_wait`` runs
    once, before blocking, when another process holds the lock.
    """
    lock = engine.with_name(engine.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "ab") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("another process is building %s: waiting for it (lock %s)", engine.name, lock)
            if on_wait is not None:
                on_wait()
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


T = TypeVar("T")


def load_or_build(
    engine: Path, load: Callable[[], T | None], build: Callable[[], T], on_wait: Callable[[], None] | None = None
) -> T:
    """``load()``, else ``build()`` under the engine's build lock; a process that waited for another's build loads
    that engine instead of building it again. ``build`` writes the engine file (atomically) before it returns."""
    found = load()
    if found is not None:
        return found
    with build_lock(engine, on_wait):
        found = load()
        if found is not None:
            log.info("loaded %s, built by another process while this one waited", engine.name)
            return found
        return build()


def gate_failure_path(engine: Path) -> Path:
    """The sidecar beside where ``engine`` would be that remembers a failed accuracy gate."""
    return engine.with_name(engine.stem + ".gate-failed.json")


def record_gate_failure(
    engine: Path, key: str, gate: dict, result: GateResult, min_label_agreement: float, reason: str
) -> Path:
    """Write the failed gate's measurements, keyed by the engine's cache key and the gate's own inputs (``gate``:
    frames, reference), so the next start can fail fast instead of rebuilding for minutes to fail again."""
    path = gate_failure_path(engine)
    record = {
        "key": key,
        "gate": gate,
        "nonfinite": result.nonfinite,
        "label_agreement": result.label_agreement,
        "max_abs_diff": None if result.max_abs_diff in (None, float("inf")) else result.max_abs_diff,
        "min_label_agreement": min_label_agreement,
        "reason": reason,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    atomic_write(path, json.dumps(record, indent=1).encode())
    return path


def stored_gate_failure(engine: Path, key: str, gate: dict, min_label_agreement: float) -> str | None:
    """The stored reason when this engine (same cache key, same gate inputs) already failed the gate and would fail
    it again at ``min_label_agreement``; None when there is no such record (the next build is worth trying)."""
    path = gate_failure_path(engine)
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("key") != key or record.get("gate") != gate:
        return None  # other inputs: the old failure says nothing about this build
    agreement = record.get("label_agreement")
    still_fails = record.get("nonfinite", 0) > 0 or (agreement is not None and agreement < min_label_agreement)
    if not still_fails:
        return None  # a lower minimum agreement now accepts what was measured: build and gate again
    return (
        f"{record.get('reason', 'the accuracy gate failed')} (remembered in {path} from {record.get('time', '?')}; "
        "it is retried when the ONNX, TensorRT, GPU, build settings or gate frames change, or delete that file)"
    )


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


_LOGGER_LOCK = threading.Lock()
_SHARED_LOGGER: tuple[object, object] | None = None  # (tensorrt module, its logger)


def trt_logger(trt):
    """The one TensorRT logger of this process, shared by every Runtime, Builder and OnnxParser.

    TensorRT keeps a single logger pointer: a second, different logger is ignored with a warning ("TensorRT maintains
    only a single logger pointer at any given time", NVIDIA/TensorRT#1475). Its threshold follows Python logging
    when it is first made (EVIT_ROS_TRT_VERBOSE=1 for VERBOSE).
    """
    global _SHARED_LOGGER
    with _LOGGER_LOCK:
        if _SHARED_LOGGER is None or _SHARED_LOGGER[0] is not trt:
            verbose = os.environ.get("EVIT_ROS_TRT_VERBOSE", "") not in ("", "0")
            _SHARED_LOGGER = (trt, _make_logger(trt, min_trt_severity(log.getEffectiveLevel(), verbose)))
        return _SHARED_LOGGER[1]


def _make_logger(trt, min_severity: str):
    """An ILogger routing TensorRT messages to Python logging, dropping those below ``min_severity`` before Python
    sees them."""
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


def make_calibrator(trt, frames: FrameBatches, cache_file: Path, device: str = "cuda"):
    """An IInt8EntropyCalibrator2 streaming ``frames`` one batch at a time through one device buffer.

    Nothing is read or allocated until TensorRT asks for the first batch, and TensorRT asks for none when
    ``read_calibration_cache`` returns a cache (NvInfer.h IInt8Calibrator::readCalibrationCache), so a cached
    calibration costs no frames and no memory: all 64 frames at 1024x2048 would be 1.6 GB of float32.
    ``device`` is the backend's CUDA device (it calls torch.cuda.set_device before building).
    """
    import torch

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.frames = frames
            self.batches: Iterator[np.ndarray] | None = None
            self.device_input: torch.Tensor | None = None
            self.error: Exception | None = None

        def get_batch_size(self) -> int:
            return frames.batch

        def get_batch(self, names):
            # TensorRT's getBatch trampoline must not see an exception: v8.6.1 and v10.3.0 catch it, print it and
            # read it as "no more batches" (an opaque calibration failure; python/src/infer/pyInt8.cpp), older
            # bindings call it from a noexcept function (terminate). build_serialized_engine raises it instead.
            try:
                return self._next_batch()
            except Exception as exc:
                self.error = exc
                self.device_input = None
                return None

        def _next_batch(self) -> list[int] | None:
            if self.batches is None:
                self.batches = iter(frames)
            batch = next(self.batches, None)
            if batch is None:
                self.device_input = None  # calibration is over: give the buffer back before the build goes on
                return None
            if self.device_input is None:
                self.device_input = torch.empty(batch.shape, dtype=torch.float32, device=device)
            self.device_input.copy_(torch.from_numpy(batch))
            if self.device_input.is_cuda:
                torch.cuda.synchronize(self.device_input.device)  # the host batch is refilled on the next call
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


def _pin_attention_fp32(trt, network, pins: frozenset[str]) -> frozenset[str]:
    """Pin the attention core to FP32; returns the names of the pinned layers."""
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
    return frozenset(chosen)


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


def attach_timing_cache(config, path: Path):
    """Attach the timing cache at ``path`` to ``config``, or a new one when the file is missing or unusable.

    ``create_timing_cache`` returns None (a null ITimingCache*) for a blob it cannot read, and ``set_timing_cache``
    returns False for a cache from another device (NvInfer.h IBuilderConfig::setTimingCache, "true if set
    successfully"); either way the file is discarded and the build starts a fresh cache, as trtexec does
    (samples/common/sampleEngines.cpp) instead of failing the build.
    """
    blob = path.read_bytes() if path.is_file() else b""
    if blob:
        try:
            cache = config.create_timing_cache(blob)
            accepted = cache is not None and config.set_timing_cache(cache, ignore_mismatch=False)
        except (RuntimeError, TypeError, ValueError) as exc:  # a binding that raises instead of returning null
            log.debug("timing cache %s: %s", path, exc)
            accepted = False
        if accepted:
            log.info("timing cache %s (%d bytes)", path, len(blob))
            return cache
        log.warning("timing cache %s is corrupt or from another TensorRT/GPU: discarded, starting a new one", path)
        path.unlink(missing_ok=True)
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        raise RuntimeError("TensorRT could not create an empty timing cache")
    return cache


def save_timing_cache(config, path: Path) -> None:
    """Write the builder's timing cache; never raises (it runs in a ``finally`` that may hold the real error)."""
    try:
        cache = config.get_timing_cache()
        # serialize() returns an IHostMemory: buffer protocol and nbytes, but no __len__ on any TensorRT version
        # (python/src/infer/pyFoundationalTypes.cpp, v8.6.1 to v11.1), so it is copied to bytes before any test.
        data = bytes(cache.serialize()) if cache is not None else b""
        if data:
            atomic_write(path, data)
            log.info("saved timing cache %s (%d bytes)", path, len(data))
    except Exception as exc:
        log.warning("could not save the timing cache %s: %s", path, exc)


def count_dla_layers(config, network, fp32_layers: frozenset[str] = frozenset()) -> tuple[int, int]:
    """(layers placed on the DLA, all layers): with DLA as the default device and GPU fallback, TensorRT puts every
    layer ``can_run_on_DLA`` accepts on the DLA and the rest on the GPU (IBuilderConfig.can_run_on_DLA, pyCore.cpp
    on 8.6, 10.x and 11). Layers pinned to FP32 are not counted: the DLA runs FP16 and INT8 only."""
    layers = (network.get_layer(i) for i in range(network.num_layers))
    on_dla = sum(layer.name not in fp32_layers and bool(config.can_run_on_DLA(layer)) for layer in layers)
    return on_dla, network.num_layers


def build_serialized_engine(
    trt,
    onnx_path: Path,
    build: EngineBuildConfig,
    timing_cache: Path,
    calibration_cache: Path,
    resolution,
    batch: int,
    calibration_device: str = "cuda",
) -> bytes:
    logger = trt_logger(trt)
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
    calibrator = None
    pinned: frozenset[str] = frozenset()
    profile = _add_optimization_profile(builder, network, config, input_shape)
    if not build.strongly_typed and build.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
        if build.precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)
            # Lazy: no frame is read unless TensorRT finds no usable calibration cache and asks for batches.
            frames = FrameBatches(
                calibration_images(build.calibration_dir, build.calibration_images), resolution, batch
            )
            calibrator = config.int8_calibrator = make_calibrator(trt, frames, calibration_cache, calibration_device)
            if profile is not None:
                config.set_calibration_profile(profile)  # calibration of a dynamic input needs a profile
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        pinned = _pin_attention_fp32(trt, network, frozenset(build.fp32_pins))
    if build.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = int(build.dla_core)
        if build.gpu_fallback:
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        on_dla, total = count_dla_layers(config, network, pinned)
        log.info(
            "DLA core %d: %d of %d layers placed on the DLA, the rest on the GPU (%d pinned to FP32)",
            build.dla_core,
            on_dla,
            total,
            len(pinned),
        )
        if on_dla == 0:
            raise RuntimeError(
                f"no layer of this network can run on DLA core {build.dla_core}: the engine would run entirely on "
                "the GPU. Drop dla_core"
            )
    attach_timing_cache(config, timing_cache)
    monitor = _progress_monitor(trt)
    start = time.monotonic()
    try:
        if monitor is not None:
            config.progress_monitor = monitor
            serialized = builder.build_serialized_network(network, config)
        else:
            with _ElapsedLogger():
                serialized = builder.build_serialized_network(network, config)
    finally:
        # Minutes of tactic timing survive a failed or interrupted (an exception, Ctrl-C) build.
        save_timing_cache(config, timing_cache)
    if calibrator is not None and calibrator.error is not None:
        raise calibrator.error  # the real reason (e.g. no readable images), not TensorRT's "calibration failure"
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    log.info("built TensorRT engine in %.1f s", time.monotonic() - start)
    return bytes(serialized)
