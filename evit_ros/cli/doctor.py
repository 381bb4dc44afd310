"""`evit-ros doctor`: what this machine can run; `--gpu` also runs every GPU path there is and checks its output.

Needs nothing beyond the package's own install: each framework is imported only to report on it, and a missing
one is reported, not fatal. Exit status 0 whatever is found (it is a report), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GPU_MODELS = ("b0-cityscapes", "l2-cityscapes")
GPU_RESOLUTION = "1024x2048"
FRAME_PATH_SIZE = (1080, 1920)


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpu", action="store_true", help="also run the GPU paths on real frames and compare them")
    g = parser.add_argument_group("--gpu")
    g.add_argument("--models", default=",".join(GPU_MODELS), help="variants to check (random weights)")
    g.add_argument("--resolution", default=GPU_RESOLUTION, help="network input HxW")
    g.add_argument(
        "--data",
        type=Path,
        default=None,
        help="folder of frames, or the shared data folder (cityscapes/fullres_unlabeled); default $EVIT_ROS_TEST_DATA",
    )
    g.add_argument("--frames", type=int, default=2, help="frames compared per path")
    g.add_argument("--iterations", type=int, default=20, help="timed runs per path (p50 latency)")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _try_import(module: str):
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # ImportError, or a stub package that raises on import
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")


def _line(name: str, text: str) -> None:
    print(f"  {name:<22} {text}")


def cuda_status() -> tuple[bool, str]:
    """(usable, description) of torch's CUDA."""
    torch, err = _try_import("torch")
    if torch is None:
        return False, f"not available (torch does not import: {err})"
    if torch.version.cuda is None:
        return False, f"not available (torch {torch.__version__} is a CPU-only build)"
    if not torch.cuda.is_available():
        return False, f"not available (torch {torch.__version__} built for CUDA {torch.version.cuda}, no device found)"
    devices = []
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        devices.append(f"cuda:{i} {torch.cuda.get_device_name(i)} (sm_{major}{minor})")
    return True, f"CUDA {torch.version.cuda}: " + "; ".join(devices)


def report_environment() -> None:
    from evit_ros import __version__
    from evit_ros.deploy.onnx_export import onnx_cache_root
    from evit_ros.deploy.tensorrt_build import engine_cache_root
    from evit_ros.network.variants import DEFAULT_MODEL, get_variant
    from evit_ros.network.weights import CheckpointError, cache_dir, resolve_checkpoint

    print("evit-ros doctor")
    _line("evit_ros", __version__)
    _line("python", f"{platform.python_version()} ({sys.executable})")
    _line("platform", f"{platform.system()} {platform.machine()}")

    rclpy_version = _version("rclpy")
    distro = os.environ.get("ROS_DISTRO")
    if rclpy_version is None and distro is None:
        _line("ROS 2", "not found (no rclpy; the node and `evit-ros play` need a ROS 2 install)")
    else:
        _line("ROS 2", f"distro {distro or 'unknown (ROS_DISTRO unset)'}, rclpy {rclpy_version or 'not importable'}")
    rmw = os.environ.get("RMW_IMPLEMENTATION")
    if rmw is None and rclpy_version is not None:
        try:
            from rclpy.utilities import get_rmw_implementation_identifier

            rmw = f"{get_rmw_implementation_identifier()} (default)"
        except Exception as exc:
            rmw = f"unknown ({type(exc).__name__})"
    _line("RMW", rmw or "unknown")

    torch, err = _try_import("torch")
    _line("torch", torch.__version__ if torch else f"not available ({err})")
    _line("  CUDA", cuda_status()[1])
    ort, err = _try_import("onnxruntime")
    _line("onnxruntime", f"{ort.__version__}, providers {', '.join(ort.get_available_providers())}" if ort else err)
    ov, err = _try_import("openvino")
    if ov is None:
        _line("openvino", f"not available ({err})")
    else:
        try:
            devices = ", ".join(ov.Core().available_devices)
        except Exception as exc:
            devices = f"none ({type(exc).__name__}: {exc})"
        _line("openvino", f"{ov.__version__}, devices {devices}")
    trt, err = _try_import("tensorrt")
    if trt is not None and not hasattr(trt, "Builder"):
        trt, err = None, "the installed 'tensorrt' package is a stub without the TensorRT library"
    _line("tensorrt", trt.__version__ if trt else f"not available ({err}; optional: NVIDIA TensorRT for this GPU)")

    print("caches")
    for name, path in (
        ("checkpoints", cache_dir()),
        ("onnx", onnx_cache_root()),
        ("tensorrt engines", engine_cache_root()),
    ):
        _line(name, f"{path} ({'exists' if path.is_dir() else 'not created yet'})")
    variant = get_variant(DEFAULT_MODEL)
    try:
        path = resolve_checkpoint(variant, None, download=False)
        _line("default checkpoint", f"{variant.name}: {path}")
    except CheckpointError as exc:
        _line("default checkpoint", f"{variant.name}: missing ({exc})")


def fast_fp16(capability: tuple[int, int]) -> bool:
    """Whether a GPU of this compute capability has full-rate FP16 arithmetic (sm_53, sm_60, sm_62, sm_70 and newer;
    sm_61 runs FP16 at a fraction of FP32). TensorRT 11 dropped ``Builder.platform_has_fast_fp16`` (deprecated in
    10.5: "query data type support from CUDA directly"), so this answers from the capability there."""
    return capability in ((5, 3), (6, 0), (6, 2)) or capability >= (7, 0)


def arch_list_covers(arch_list: list[str], capability: tuple[int, int]) -> tuple[bool, str]:
    """Whether torch's compiled CUDA architectures (``torch.cuda.get_arch_list()``) run on a device of
    ``capability``: an sm_XY cubin runs on X.Z for Z >= Y (not the arch-specific 'a'/'f' variants), a compute_XY PTX
    is compiled by the driver for any newer device at first use."""
    major, minor = capability
    exact, compatible, ptx = [], [], []
    for arch in arch_list:
        kind, _, rest = arch.partition("_")
        digits = "".join(c for c in rest if c.isdigit())
        if len(digits) < 2 or kind not in ("sm", "compute"):
            continue
        a_major, a_minor, specific = int(digits[:-1]), int(digits[-1]), rest != digits
        if kind == "sm" and (a_major, a_minor) == (major, minor):
            exact.append(arch)
        elif kind == "sm" and a_major == major and a_minor < minor and not specific:
            compatible.append(arch)
        elif kind == "compute" and (a_major, a_minor) <= (major, minor) and not specific:
            ptx.append(arch)
    device = f"sm_{major}{minor}"
    if exact:
        return True, f"yes ({exact[0]} built)"
    if compatible:
        return True, f"yes ({compatible[-1]} cubins run on {device})"
    if ptx:
        return True, f"only through PTX JIT ({ptx[-1]}): slow first start, build torch for {device}"
    return False, f"NO: torch has {', '.join(arch_list) or 'no CUDA arch'}, none runs on {device}"


def report_gpu_support(device: str = "cuda") -> None:
    """DLA cores, fast FP16, and whether this torch build has kernels for the device (doctor --gpu)."""
    import torch

    from evit_ros.runtime.devices import torch_device

    dev = torch_device(device)
    capability = tuple(torch.cuda.get_device_capability(dev))
    covered, how = arch_list_covers(torch.cuda.get_arch_list(), capability)
    _line("torch CUDA arch", how)
    trt, _err = _try_import("tensorrt")
    if trt is None or not hasattr(trt, "Builder"):
        _line("fast FP16", f"{'yes' if fast_fp16(capability) else 'no'} (sm_{capability[0]}{capability[1]})")
        _line("DLA cores", "unknown (needs TensorRT)")
        return
    from evit_ros.deploy.tensorrt_build import trt_logger

    builder = trt.Builder(trt_logger(trt))
    has_fast = getattr(builder, "platform_has_fast_fp16", None)  # 8.6-10.x; removed in TensorRT 11
    source = "TensorRT" if has_fast is not None else f"sm_{capability[0]}{capability[1]}"
    has_fast = fast_fp16(capability) if has_fast is None else bool(has_fast)
    _line("fast FP16", f"{'yes' if has_fast else 'no'} ({source})")
    _line("DLA cores", str(builder.num_DLA_cores))


@dataclass
class GpuRow:
    model: str
    path: str
    agreement: float | None = None  # fraction of pixels whose label equals CPU fp32's
    nonfinite: int | None = None
    p50_ms: float | None = None
    note: str = ""


def _frame_images(data: Path | None, count: int, size: tuple[int, int]) -> tuple[list[np.ndarray], str]:
    """BGR frames at ``size`` (H, W): real ones from `data` (or $EVIT_ROS_TEST_DATA), else seeded smooth synthetic
    images; and where they came from."""
    import cv2

    from evit_ros.pipeline.processing import list_images

    root = data or (Path(os.environ["EVIT_ROS_TEST_DATA"]) if os.environ.get("EVIT_ROS_TEST_DATA") else None)
    files: list[Path] = []
    if root is not None:
        for folder in (root / "cityscapes" / "fullres_unlabeled", root):
            if folder.is_dir():
                files = list_images(folder)
                if files:
                    break
    images = [img for img in (cv2.imread(str(f), cv2.IMREAD_COLOR) for f in files[:count]) if img is not None]
    source = f"{len(images)} real frames from {root}"
    if not images:
        rng = np.random.default_rng(0)
        images = [rng.integers(0, 256, (16, 32, 3), dtype=np.uint8) for _ in range(count)]
        source = f"{count} synthetic frames (no real frames: pass --data or set EVIT_ROS_TEST_DATA)"
    return [cv2.resize(img, size[::-1], interpolation=cv2.INTER_CUBIC) for img in images], source


def _frames(data: Path | None, count: int, resolution: tuple[int, int]) -> tuple[list[np.ndarray], str]:
    """Preprocessed frames at the network resolution (see _frame_images)."""
    from evit_ros.pipeline.processing import preprocess

    images, source = _frame_images(data, count, resolution)
    return [preprocess(img, resolution, order="bgr") for img in images], source


def _measure(backend, inputs: list[np.ndarray], ref_labels: list[np.ndarray], iterations: int, row: GpuRow) -> None:
    outs = [backend.infer(x) for x in inputs]
    row.nonfinite = int(sum((~np.isfinite(o)).sum() for o in outs))
    agree = sum(int((o.argmax(1) == r).sum()) for o, r in zip(outs, ref_labels))
    row.agreement = agree / sum(r.size for r in ref_labels)
    for _ in range(3):
        backend.infer(inputs[0])
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        backend.infer(inputs[0])  # returns host logits: includes the copies a caller pays for
        times.append((time.perf_counter() - start) * 1e3)
    row.p50_ms = float(np.percentile(times, 50))


def _tensorrt_backend(model, variant, resolution, device: str, workdir: Path):
    """A TensorRT fp16 engine of exactly `model` (exported here), on the route this TensorRT version selects."""
    from evit_ros.deploy.onnx_export import export_onnx
    from evit_ros.deploy.tensorrt_build import engine_cache_root, import_tensorrt, select_precision_route
    from evit_ros.runtime import BackendConfig, create_backend

    trt = import_tensorrt()
    route = select_precision_route(trt.__version__, "fp16")
    fp32 = export_onnx(model, variant, resolution, workdir / f"{variant.name}_fp32.onnx", parity=False).path
    weights, options = fp32, {}
    if route.strongly_typed:
        weights = export_onnx(
            model, variant, resolution, workdir / f"{variant.name}_fp16s.onnx", precision="fp16-strong", parity=False
        ).path
        options["reference_onnx"] = str(fp32)
    # The doctor reports agreement itself; the build's gate only has to keep NaN out.
    options["min_label_agreement"] = 0.0
    config = BackendConfig(
        model=variant.name,
        weights=str(weights),
        resolution=resolution,
        precision="fp16",
        device=device,
        # The persistent engine cache: its timing cache makes every later doctor run (and real build) faster, and
        # the random-weights export is the same network every time, so its engine is found again too.
        engine_cache_dir=str(engine_cache_root()),
        options=options,
    )
    typing = "strongly" if route.strongly_typed else "weakly"
    return create_backend("tensorrt", config), f"TensorRT {trt.__version__}, {typing} typed"


def run_gpu_checks(
    models: list[str],
    resolution: tuple[int, int],
    data: Path | None,
    frames: int,
    iterations: int,
    device: str = "cuda",
) -> list[GpuRow]:
    """Every GPU path on ``device`` against CPU fp32 with the same random weights: a row each (failures noted)."""
    import torch

    from evit_ros.deploy.tensorrt_build import TensorRTUnavailable
    from evit_ros.network.variants import get_variant
    from evit_ros.network.weights import load_model
    from evit_ros.runtime import BackendConfig
    from evit_ros.runtime.devices import torch_device
    from evit_ros.runtime.torch_backend import TorchBackend

    dev = torch_device(device)
    device = str(dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "no GPU"
    inputs, source = _frames(data, frames, resolution)
    print(f"GPU checks on {device} ({name}), {resolution[0]}x{resolution[1]}, {source}")
    rows: list[GpuRow] = []
    for model_name in models:
        variant = get_variant(model_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the RANDOM WEIGHTS warning: intended here
            model, _ = load_model(variant, "random")
        model.eval()
        cfg = dict(model=variant.name, resolution=resolution)
        cpu = TorchBackend(BackendConfig(**cfg, device="cpu"), model=copy.deepcopy(model))
        ref_labels = [cpu.infer(x).argmax(1) for x in inputs]
        cpu_row = GpuRow(variant.name, "torch cpu fp32 (reference)")
        _measure(cpu, inputs, ref_labels, max(1, min(iterations, 3)), cpu_row)
        rows.append(cpu_row)
        del cpu
        for precision in ("fp32", "fp16"):
            for graphs in (False, True):
                label = f"torch {dev.type} {precision}{' (attention fp32)' if precision == 'fp16' else ''}"
                row = GpuRow(variant.name, label + (" + CUDA graph" if graphs else " eager"))
                try:
                    backend = TorchBackend(
                        BackendConfig(**cfg, device=device, precision=precision, options={"cuda_graphs": graphs}),
                        model=copy.deepcopy(model),
                    )
                    if graphs and backend.describe()["engine"] != "cuda-graph":
                        row.note = "ran eager (no CUDA graph on this device)"
                    _measure(backend, inputs, ref_labels, iterations, row)
                    del backend
                except Exception as exc:  # reported, not fatal: the other paths still run
                    row.note = f"failed: {type(exc).__name__}: {exc}"
                rows.append(row)
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
        row = GpuRow(variant.name, "tensorrt fp16")
        try:
            with tempfile.TemporaryDirectory(prefix="evit_ros_doctor_") as tmp:
                backend, row.note = _tensorrt_backend(model, variant, resolution, device, Path(tmp))
                _measure(backend, inputs, ref_labels, iterations, row)
                del backend
        except TensorRTUnavailable as exc:
            row.note = f"skipped: {str(exc).split('. ')[0]}"
        except Exception as exc:
            row.note = f"failed: {type(exc).__name__}: {exc}"
        rows.append(row)
    return rows


def run_frame_path_checks(
    models: list[str],
    resolution: tuple[int, int],
    data: Path | None,
    frames: int,
    iterations: int,
    device: str = "cuda",
    frame_size: tuple[int, int] = FRAME_PATH_SIZE,
) -> str:
    """Host vs device frame path at ``frame_size`` (1080p) on torch on ``device`` (precision auto), the paths
    taking turns in one run (evit-ros bench --frame-path host,device), with each path's label agreement against
    the CPU fp32 host ``exact`` path of the same random weights."""
    from evit_ros.cli.bench import _Clock, _frame_paths, bench_frames, format_frames
    from evit_ros.network.variants import get_variant
    from evit_ros.network.weights import load_model
    from evit_ros.pipeline.processing import postprocess, preprocess
    from evit_ros.runtime import BackendConfig
    from evit_ros.runtime.torch_backend import TorchBackend

    images, source = _frame_images(data, frames, frame_size)
    lines = [f"frame path: host vs device, {source} at {frame_size[0]}x{frame_size[1]}, torch on {device}"]
    for model_name in models:
        variant = get_variant(model_name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the RANDOM WEIGHTS warning: intended here
            model, _ = load_model(variant, "random")
        cfg = dict(model=variant.name, resolution=resolution)
        cpu = TorchBackend(BackendConfig(**cfg, device="cpu", precision="fp32"), model=copy.deepcopy(model).eval())
        refs = [postprocess(cpu.infer(preprocess(img, resolution, "bgr"))[0], frame_size, "exact")[0] for img in images]
        del cpu
        try:
            backend = TorchBackend(BackendConfig(**cfg, device=device), model=model.eval())
            runs = _frame_paths(backend, ["host", "device"], ["exact"])
            clock = _Clock(lambda: None)
            agree = {
                name: float(np.mean([np.mean(run(img, clock) == ref) for img, ref in zip(images, refs, strict=True)]))
                for name, run in runs.items()
            }
            times, _ = bench_frames(backend, images[:1], ["refined"], iterations, 1, paths=("host", "device"))
            info = backend.describe()
            title = f"{variant.name} {resolution[0]}x{resolution[1]} torch {info['precision']} {info['device']}"
            lines.append(format_frames(times, title))
            lines.extend(f"  {name} labels = CPU fp32 host exact: {a * 100:.4f}%" for name, a in agree.items())
            del backend, runs
        except Exception as exc:  # reported, not fatal: the other models still run
            lines.append(f"{variant.name}: failed: {type(exc).__name__}: {exc}")
    return "\n".join(lines)


def format_gpu_table(rows: list[GpuRow]) -> str:
    header = f"{'model':<15} {'path':<44} {'labels = CPU fp32':>17} {'NaN/Inf':>8} {'p50 ms':>9}  note"
    lines = [header, "-" * len(header)]
    for r in rows:
        agree = f"{r.agreement * 100:.3f}%" if r.agreement is not None else "-"
        nan = str(r.nonfinite) if r.nonfinite is not None else "-"
        p50 = f"{r.p50_ms:.2f}" if r.p50_ms is not None else "-"
        lines.append(f"{r.model:<15} {r.path:<44} {agree:>17} {nan:>8} {p50:>9}  {r.note}")
    return "\n".join(lines)


def run_doctor(args: argparse.Namespace) -> int:
    from evit_ros.network.variants import get_variant, parse_resolution

    report_environment()
    if not args.gpu:
        return 0
    try:
        models = [get_variant(m.strip()).name for m in args.models.split(",") if m.strip()]
        resolution = parse_resolution(args.resolution)
        if args.frames < 1 or args.iterations < 1:
            raise ValueError("--frames and --iterations must be >= 1")
    except ValueError as exc:
        print(f"evit-ros doctor: {exc}", file=sys.stderr)
        return 2
    usable, why = cuda_status()
    print("GPU checks")
    if not usable:
        _line("CUDA", why)
        _line("result", "skipped: no CUDA device, so there is no GPU path to run here")
        return 0
    report_gpu_support()
    rows = run_gpu_checks(models, resolution, args.data, args.frames, args.iterations)
    print(format_gpu_table(rows))
    print(run_frame_path_checks(models, resolution, args.data, args.frames, args.iterations))
    return 0
