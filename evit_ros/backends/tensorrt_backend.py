"""TensorRT backend (TensorRT 10 Python API; 8.6 where it costs nothing) and `evit-ros build-engine`.

Layout follows Autoware's tensorrt_common: the build configuration (``EngineBuildConfig``) and
the engine cache key (``engine_cache_key``) are plain Python, importable without TensorRT; the
builder and the runtime import ``tensorrt`` only when used.

Precision plan: all-FP16 engines of these models produce NaN (the linear attention's normaliser
overflows 65504 and its 1e-15 epsilon underflows), so FP16/INT8 builds pin every
attention-core layer (ONNX nodes under ``/linear_attention/``, see ``onnx_graph.fp32_pin_nodes``)
to FP32 with ``OBEY_PRECISION_CONSTRAINTS``; or, with ``strongly_typed``, the builder follows the
explicit FP16/FP32 types of the ``fp16-strong`` ONNX export. New FP16/INT8 engines must pass an
accuracy gate against the FP32 ONNX Runtime reference before they are cached.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..processing import list_images
from .base import Backend, BackendConfig

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
    from ..weights import cache_dir

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


@dataclass
class GateResult:
    nonfinite: int
    label_agreement: float
    max_abs_diff: float
    passed: bool

    def describe(self) -> str:
        return (
            f"non-finite outputs {self.nonfinite}, label agreement {self.label_agreement * 100:.3f}%, "
            f"max abs logit difference {self.max_abs_diff:.3g}"
        )


def accuracy_gate(
    candidate: Callable[[np.ndarray], np.ndarray],
    reference: Callable[[np.ndarray], np.ndarray],
    batches: Sequence[np.ndarray],
    min_label_agreement: float,
) -> GateResult:
    """Compare a candidate engine with the FP32 reference: no NaN/Inf and label agreement >= the minimum."""
    nonfinite, agree, total, max_abs = 0, 0, 0, 0.0
    for x in batches:
        got, ref = candidate(x), reference(x)
        bad = ~np.isfinite(got)
        nonfinite += int(bad.sum())
        labels_got, labels_ref = got.argmax(axis=1), ref.argmax(axis=1)
        agree += int((labels_got == labels_ref).sum())
        total += labels_ref.size
        if not bad.any():
            max_abs = max(max_abs, float(np.abs(got - ref).max()))
        else:
            max_abs = float("inf")
    agreement = agree / total if total else 0.0
    return GateResult(nonfinite, agreement, max_abs, nonfinite == 0 and agreement >= min_label_agreement)


def calibration_images(folder: str | os.PathLike, limit: int) -> list[Path]:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    files = list_images(root)
    if not files:
        raise FileNotFoundError(f"no images in {root}")
    return files[:limit]


def load_frames(folder: str | os.PathLike, resolution: tuple[int, int], batch: int, limit: int) -> list[np.ndarray]:
    """Preprocessed N x 3 x H x W batches from a folder of images (processing.preprocess)."""
    import cv2

    from ..processing import preprocess

    frames = []
    for path in calibration_images(folder, limit):
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is not None:
            frames.append(preprocess(bgr, resolution, order="bgr")[0])
    if not frames:
        raise FileNotFoundError(f"no readable images in {folder}")
    while len(frames) % batch:
        frames.append(frames[len(frames) % len(frames)])
    return [np.ascontiguousarray(np.stack(frames[i : i + batch])) for i in range(0, len(frames), batch)]


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


@dataclass
class _EngineInfo:
    path: Path
    key: str
    fields: dict = field(default_factory=dict)


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)
        self.trt = trt = import_tensorrt()
        import torch

        from ..export import ensure_onnx
        from ..onnx_graph import fp32_pin_nodes, metadata
        from ..variants import get_variant
        from ..weights import sha256_of

        if not torch.cuda.is_available():
            raise TensorRTUnavailable("TensorRT needs a CUDA device, and torch sees none")
        device = torch.device(config.device or "cuda")
        if device.type != "cuda":
            raise ValueError(f"TensorRT runs on CUDA devices, not {device}")
        torch.cuda.set_device(device)
        config.device = str(device)
        self.device = device
        opts = config.options
        variant = get_variant(config.model)
        strongly_typed = bool(opts.get("strongly_typed", False))
        user_onnx = config.weights is not None and str(config.weights).lower().endswith(".onnx")
        if user_onnx:
            onnx_path = Path(config.weights).expanduser()
            reference_onnx = Path(opts["reference_onnx"]) if opts.get("reference_onnx") else None
            if metadata(onnx_path).get("precision", "fp32") == "fp32":
                reference_onnx = reference_onnx or onnx_path
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
        precision = config.precision
        build = EngineBuildConfig(
            precision=precision,
            strongly_typed=strongly_typed,
            fp32_pins=tuple(fp32_pin_nodes(onnx_path)) if precision != "fp32" and not strongly_typed else (),
            workspace_mib=int(opts.get("workspace_mib", 2048)),
            tf32=bool(opts.get("tf32", False)),
            dla_core=opts.get("dla_core"),
            gpu_fallback=bool(opts.get("gpu_fallback", True)),
            calibration_dir=opts.get("calibration_dir"),
            calibration_images=int(opts.get("calibration_images", 64)),
            min_label_agreement=float(opts.get("min_label_agreement", 0.99)),
            gate_images=opts.get("gate_images"),
            gate_frames=int(opts.get("gate_frames", 4)),
        )
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
        self.runtime = trt.Runtime(_TrtLogger.create(trt))
        self.engine = self._load_cached(path, key)
        if self.engine is None:
            gpu_slug = "".join(c if c.isalnum() else "-" for c in gpu)
            timing = root / f"timing_{trt.__version__}_{gpu_slug}_sm{cc[0]}{cc[1]}.cache"
            calib = root / f"calibration_{key[:24]}.cache"
            log.info(
                "building TensorRT %s engine for %s %s (cache %s)", precision, variant.name, self.input_shape, path
            )
            blob = build_serialized_engine(trt, onnx_path, build, timing, calib, config.resolution, config.batch_size)
            self.engine = self.runtime.deserialize_cuda_engine(blob)
            if self.engine is None:
                raise RuntimeError("TensorRT could not deserialize the engine it just built")
            self._setup_io()
            if build.needs_gate:
                self._gate(reference_onnx, build)
            atomic_write(path, blob)
            atomic_write(path.with_suffix(".json"), json.dumps(fields, indent=1, default=str).encode())
        else:
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
        to_torch = {trt.float32: torch.float32, trt.float16: torch.float16, trt.int32: torch.int32}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.input_name = name
                self.context.set_input_shape(name, self.input_shape)
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = to_torch[self.engine.get_tensor_dtype(name)]
            self.buffers[name] = torch.empty(shape, dtype=dtype, device=self.device)
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
            if name != self.input_name:
                self.output_name = name
        if tuple(self.buffers[self.input_name].shape) != tuple(self.input_shape):
            raise ValueError(f"engine input {tuple(self.buffers[self.input_name].shape)} != {self.input_shape}")

    def _gate(self, reference_onnx: Path | None, build: EngineBuildConfig) -> None:
        if reference_onnx is None:
            log.warning("no FP32 reference ONNX for the accuracy gate (options['reference_onnx']); gate skipped")
            return
        import onnxruntime as ort

        folder = build.gate_images or build.calibration_dir
        if folder:
            batches = load_frames(folder, self.config.resolution, self.config.batch_size, build.gate_frames)
        else:
            log.warning("accuracy gate on seeded noise: pass gate_images / --gate-images for real frames")
            rng = np.random.default_rng(0)
            batches = [rng.standard_normal(self.input_shape, dtype=np.float32) for _ in range(2)]
        sess = ort.InferenceSession(str(reference_onnx), providers=["CPUExecutionProvider"])
        in_name = sess.get_inputs()[0].name
        result = accuracy_gate(
            self.infer, lambda x: sess.run(None, {in_name: x})[0], batches, build.min_label_agreement
        )
        log.info("TensorRT %s accuracy gate vs FP32 ONNX Runtime: %s", build.precision, result.describe())
        if not result.passed:
            raise RuntimeError(
                f"TensorRT {build.precision} engine failed the accuracy gate ({result.describe()}; minimum agreement "
                f"{build.min_label_agreement * 100:.1f}%); not cached"
            )

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        self._check_batch(batch)
        with torch.cuda.stream(self.stream):
            self.buffers[self.input_name].copy_(torch.from_numpy(batch), non_blocking=False)
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            out = self.buffers[self.output_name].float().cpu()
        self.stream.synchronize()
        return out.numpy()

    def describe(self) -> dict[str, str]:
        info = super().describe()
        info.update({"engine": str(self.engine_info.path), "tensorrt": self.trt.__version__})
        if self.build_config.strongly_typed:
            info["precision"] = "fp16-strong"
        return info


# --------------------------------------------------------------------------------------------
# `evit-ros build-engine`


def add_build_engine_arguments(parser: argparse.ArgumentParser) -> None:
    from ..cli_common import add_model_arguments

    add_model_arguments(parser, default_backend="tensorrt")
    g = parser.add_argument_group("tensorrt")
    g.add_argument("--strongly-typed", action="store_true", help="build the fp16-strong ONNX with STRONGLY_TYPED")
    g.add_argument("--workspace-mib", type=int, default=2048)
    g.add_argument("--dla-core", type=int, default=None, help="Jetson DLA core (GPU fallback on)")
    g.add_argument("--no-gpu-fallback", action="store_true", help="with --dla-core: fail instead of falling back")
    g.add_argument("--calibration-dir", default=None, help="INT8: folder of calibration images")
    g.add_argument("--calibration-images", type=int, default=64)
    g.add_argument("--gate-images", default=None, help="frames for the accuracy gate (default: calibration dir)")
    g.add_argument("--min-agreement", type=float, default=0.99, help="accuracy gate: minimum label agreement, 0..1")
    g.add_argument("--reference-onnx", default=None, help="FP32 ONNX for the gate when --weights is an fp16 .onnx")


def run_build_engine(args: argparse.Namespace) -> int:
    try:
        import_tensorrt()
    except TensorRTUnavailable as exc:
        print(f"evit-ros build-engine: {exc}", file=sys.stderr)
        return 2
    from ..variants import get_variant, parse_resolution
    from . import create_backend

    variant = get_variant(args.model)
    resolution = parse_resolution(args.resolution) if args.resolution else variant.default_resolution
    options = {
        "strongly_typed": args.strongly_typed,
        "workspace_mib": args.workspace_mib,
        "dla_core": args.dla_core,
        "gpu_fallback": not args.no_gpu_fallback,
        "calibration_dir": args.calibration_dir,
        "calibration_images": args.calibration_images,
        "gate_images": args.gate_images,
        "min_label_agreement": args.min_agreement,
        "reference_onnx": args.reference_onnx,
    }
    precision = "fp16" if args.strongly_typed and args.precision == "fp32" else args.precision
    config = BackendConfig(
        model=variant.name,
        weights=args.weights,
        resolution=resolution,
        precision=precision,
        device=args.device,
        engine_cache_dir=args.engine_cache_dir,
        options=options,
    )
    try:
        backend = create_backend("tensorrt", config)
    except (TensorRTUnavailable, RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"evit-ros build-engine: {exc}", file=sys.stderr)
        return 1
    print(f"TensorRT engine ready: {backend.engine_info.path}")
    return 0
