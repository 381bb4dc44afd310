"""`evit-ros bench`: latency percentiles, throughput and peak memory of one or several backends (network only),
and with ``--frames`` the whole frame path: a real frame -> labels at its own size, split into pre-processing,
network and post-processing, for each post-processing mode. Ratios are computed within one run."""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evit_ros.cli.common import add_model_arguments, backend_options_from_args
from evit_ros.pipeline.processing import POSTPROCESS_MODES


@dataclass
class BenchResult:
    backend: str
    precision: str
    device: str
    p50_ms: float
    p90_ms: float
    mean_ms: float
    throughput: float  # images per second (batch / mean latency)
    peak_rss_mib: float  # process high-water mark so far (cumulative over backends in one run)
    cuda_peak_mib: float | None


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024.0 if sys.platform != "darwin" else peak / (1024.0 * 1024.0)  # Linux: KiB, macOS: bytes


def _cuda_torch():
    mod = sys.modules.get("torch")
    return mod if mod is not None and mod.cuda.is_available() else None


def _turns(iterations: int, block: int) -> list[int]:
    """Timed runs per turn: ``iterations`` split into blocks of ``block`` (the last one shorter)."""
    block = max(1, block)
    return [min(block, iterations - start) for start in range(0, iterations, block)]


def bench_backends(backends: list, iterations: int, warmup: int, seed: int = 0, block: int = 10) -> list[BenchResult]:
    """Time backend.infer on a fixed normalised batch, after `warmup` untimed runs of each.

    Backends take turns: in every turn each one runs one untimed settling run, then up to `block` timed runs.
    Turns spread a change in machine load over all backends alike, and the settling run keeps one backend's
    after-effects (ONNX Runtime's and OpenMP's spinning worker threads, a cache full of another network's
    weights) out of the next one's timings: each is timed as it runs in a node, alone."""
    rng = np.random.default_rng(seed)
    inputs = [rng.standard_normal(b.input_shape, dtype=np.float32) for b in backends]
    torch = _cuda_torch()
    if torch is not None:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        for backend, x in zip(backends, inputs, strict=True):
            backend.infer(x)
    times: list[list[float]] = [[] for _ in backends]
    for runs in _turns(iterations, block):
        for backend, x, out in zip(backends, inputs, times, strict=True):
            backend.infer(x)  # settling run, not timed
            for _ in range(runs):
                start = time.perf_counter()
                backend.infer(x)  # returns host numpy: synchronised
                out.append(time.perf_counter() - start)
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if torch is not None else None
    results = []
    for backend, t in zip(backends, times, strict=True):
        ms = np.array(t) * 1000.0
        info = backend.describe()
        results.append(
            BenchResult(
                backend=backend.name,
                precision=info.get("precision", backend.config.precision),
                device=str(info.get("device", "")),
                p50_ms=float(np.percentile(ms, 50)),
                p90_ms=float(np.percentile(ms, 90)),
                mean_ms=float(ms.mean()),
                throughput=backend.input_shape[0] * 1000.0 / float(ms.mean()),
                peak_rss_mib=_peak_rss_mib(),
                cuda_peak_mib=cuda_peak,
            )
        )
    return results


def format_results(results: list[BenchResult], title: str) -> str:
    lines = [
        title,
        f"{'backend':<12} {'prec':<11} {'device':<7} {'p50 ms':>8} {'p90 ms':>8} {'img/s':>8} "
        f"{'peak RSS MiB':>13} {'CUDA MiB':>9}",
    ]
    for r in results:
        cuda = f"{r.cuda_peak_mib:.0f}" if r.cuda_peak_mib is not None else "-"
        lines.append(
            f"{r.backend:<12} {r.precision:<11} {r.device:<7} {r.p50_ms:8.2f} {r.p90_ms:8.2f} {r.throughput:8.2f} "
            f"{r.peak_rss_mib:13.0f} {cuda:>9}"
        )
    if len(results) > 1:
        base = results[0]
        for r in results[1:]:
            lines.append(
                f"{r.backend} vs {base.backend}: p50 latency x{r.p50_ms / base.p50_ms:.2f}, "
                f"throughput x{r.throughput / base.throughput:.2f}"
            )
        for i, a in enumerate(results):
            for b in results[i + 1 :]:
                lines.append(f"{a.backend} / {b.backend}: p50 latency x{a.p50_ms / b.p50_ms:.2f}")
        lines.append(
            "(backends take turns in blocks, each turn after one untimed run; peak RSS: the process "
            "high-water mark, all of them)"
        )
    return "\n".join(lines)


@dataclass
class FrameTimes:
    """Per-run milliseconds of one frame size and post-processing mode."""

    size: tuple[int, int]
    mode: str
    preprocess: list[float]
    network: list[float]
    postprocess: list[float]

    @property
    def frame(self) -> list[float]:
        return [a + b + c for a, b, c in zip(self.preprocess, self.network, self.postprocess, strict=True)]


def bench_frames(
    backend, images: list[np.ndarray], modes: list[str], iterations: int, warmup: int, block: int = 10
) -> list[FrameTimes]:
    """Time BGR frames -> labels at each frame's own size: pre-processing, network and post-processing of each
    mode as one pipeline, the way a node runs it. The modes take turns in blocks (see :func:`bench_backends`),
    each turn after one untimed run, so one mode's cache footprint (the exact mode writes C x H x W float
    logits) does not land on another mode's timings, and every mode's frame / network ratio comes from its own
    network times."""
    from evit_ros.pipeline.processing import postprocess, preprocess

    resolution = tuple(backend.config.resolution)
    buffer = np.empty(backend.input_shape, dtype=np.float32)
    results: dict[tuple[tuple[int, int], str], FrameTimes] = {}

    def run(image: np.ndarray, mode: str) -> tuple[float, float, float, float]:
        t0 = time.perf_counter()
        batch = preprocess(image, resolution, order="bgr", out=buffer)
        t1 = time.perf_counter()
        logits = backend.infer(batch)[0]
        t2 = time.perf_counter()
        postprocess(logits, image.shape[:2], mode)
        return t0, t1, t2, time.perf_counter()

    for image in images:
        size = image.shape[:2]
        for mode in modes:
            results.setdefault((size, mode), FrameTimes(size, mode, [], [], []))
            for _ in range(warmup):
                run(image, mode)
        for runs in _turns(iterations, block):
            for mode in modes:
                run(image, mode)  # settling run, not timed
                times = results[(size, mode)]
                for _ in range(runs):
                    t0, t1, t2, t3 = run(image, mode)
                    times.preprocess.append((t1 - t0) * 1e3)
                    times.network.append((t2 - t1) * 1e3)
                    times.postprocess.append((t3 - t2) * 1e3)
    return list(results.values())


def format_frames(results: list[FrameTimes], title: str) -> str:
    p50 = lambda values: float(np.percentile(values, 50))  # noqa: E731
    lines = [title]
    for size in dict.fromkeys(r.size for r in results):
        rows = {r.mode: r for r in results if r.size == size}
        lines.append(f"frame {size[1]}x{size[0]} -> labels {size[1]}x{size[0]} (p50 ms)")
        lines.append(f"  {'mode':<8} {'preprocess':>10} {'network':>8} {'postprocess':>11} {'frame':>8}")
        for mode, r in rows.items():
            lines.append(
                f"  {mode:<8} {p50(r.preprocess):10.2f} {p50(r.network):8.2f} {p50(r.postprocess):11.2f} "
                f"{p50(r.frame):8.2f}"
            )
        if "exact" in rows:
            base = p50(rows["exact"].postprocess)
            for mode, r in rows.items():
                if mode != "exact":
                    lines.append(f"  {mode} / exact postprocess: x{p50(r.postprocess) / base:.3f}")
        ratios = ", ".join(f"{mode} x{p50(r.frame) / p50(r.network):.2f}" for mode, r in rows.items())
        lines.append(f"  frame / network: {ratios}")
    return "\n".join(lines)


def _parse_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"--frame-size must look like HxW (e.g. 1080x1920), got '{text}'")
    return int(parts[0]), int(parts[1])


def _load_frames(paths: list[str], frame_size: tuple[int, int] | None) -> list[np.ndarray]:
    import cv2

    from evit_ros.pipeline.processing import list_images

    files = []
    for p in paths:
        path = Path(p).expanduser()
        if path.is_dir():
            files.extend(list_images(path))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"frame not found: {path}")
    images = []
    for f in files:
        image = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"not a readable image: {f}")
        if frame_size is not None:
            image = cv2.resize(image, (frame_size[1], frame_size[0]), interpolation=cv2.INTER_AREA)
        images.append(image)
    if not images:
        raise FileNotFoundError(f"no images in {', '.join(paths)}")
    return images


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--iterations", type=int, default=50, help="timed runs")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--block",
        type=int,
        default=10,
        help="timed runs per turn when several backends (--compare) or post-processing modes (--frames) take "
        "turns; each turn starts with one untimed run",
    )
    parser.add_argument(
        "--compare",
        default=None,
        help="comma-separated backends to run in this process, e.g. openvino,onnxruntime,torch",
    )
    parser.add_argument(
        "--frames",
        nargs="+",
        default=None,
        metavar="PATH",
        help="also time real frames (image files or folders) -> labels at their own size, split into "
        "pre-processing, network and post-processing, for each post-processing mode (--backend, batch 1)",
    )
    parser.add_argument(
        "--frame-size", default=None, help="resize the frames to HxW first (e.g. 1080x1920 for full HD)"
    )
    parser.add_argument(
        "--modes",
        default="exact,refined",
        help=f"post-processing modes for --frames, comma-separated ({', '.join(POSTPROCESS_MODES)})",
    )


def run_bench(args: argparse.Namespace) -> int:
    from evit_ros.network.variants import get_variant, parse_resolution
    from evit_ros.runtime import BackendConfig, create_backend, resolve_backend_name

    if args.weights is None:
        print(
            "evit-ros bench: --weights is required (a checkpoint, an .onnx, or 'random' for timing only)",
            file=sys.stderr,
        )
        return 2
    if args.iterations < 1 or args.warmup < 0 or args.block < 1:
        print("evit-ros bench: --iterations and --block must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in POSTPROCESS_MODES]
    if unknown or not modes:
        print(f"evit-ros bench: --modes takes {', '.join(POSTPROCESS_MODES)}, got {args.modes}", file=sys.stderr)
        return 2
    images = None
    if args.frames:
        try:
            frame_size = _parse_size(args.frame_size) if args.frame_size else None
            images = _load_frames(args.frames, frame_size)
        except (FileNotFoundError, ValueError) as exc:
            print(f"evit-ros bench: {exc}", file=sys.stderr)
            return 2
    variant = get_variant(args.model)
    resolution = parse_resolution(args.resolution) if args.resolution else variant.default_resolution

    def make(name: str, batch_size: int):
        config = BackendConfig(
            model=variant.name,
            weights=args.weights,
            resolution=resolution,
            precision=args.precision,
            device=args.device,
            num_threads=args.num_threads,
            engine_cache_dir=args.engine_cache_dir,
            batch_size=batch_size,
            options=backend_options_from_args(args),
        )
        return create_backend(resolve_backend_name(name), config)

    names = [n.strip() for n in args.compare.split(",") if n.strip()] if args.compare else [args.backend]
    threads = f", {args.num_threads} threads" if args.num_threads else ""
    if not (images and not args.compare):  # --frames alone times the frame path only
        backends = []
        try:
            for name in names:
                backends.append(make(name, args.batch_size))
            results = bench_backends(backends, args.iterations, args.warmup, block=args.block)
        finally:
            for backend in backends:
                backend.close()
        title = (
            f"{variant.name} {resolution[0]}x{resolution[1]} batch {args.batch_size}, {args.iterations} runs after "
            f"{args.warmup} warm-up{threads}"
        )
        print(format_results(results, title))
    if images:
        backend = make(args.backend, 1)
        try:
            frames = bench_frames(backend, images, modes, args.iterations, args.warmup, block=args.block)
            info = backend.describe()
        finally:
            backend.close()
        title = (
            f"{len(images)} frame(s) -> labels at their own size: {variant.name} {resolution[0]}x{resolution[1]} on "
            f"{info['backend']} {info['precision']} {info['device']}, {args.iterations} runs after {args.warmup} "
            f"warm-up{threads}"
        )
        print(format_frames(frames, title))
    return 0
