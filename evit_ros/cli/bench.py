"""`evit-ros bench`: latency percentiles, throughput and peak memory of one or several backends (network only),
and with ``--frames`` the whole frame path: a real frame -> labels at its own size, colours and overlay, split into
pre-processing, network, post-processing and colour/overlay, wall and host CPU time, for each post-processing mode
and frame path (``--frame-path host,device``). Ratios are computed within one run."""

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


STAGES = ("preprocess", "network", "postprocess", "colour+overlay")


@dataclass
class FrameTimes:
    """Per-run milliseconds of one frame size and one frame path (``host:<mode>`` or ``device``): wall time and
    this process's CPU time (all its threads, time.process_time) of each of STAGES."""

    size: tuple[int, int]
    path: str
    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]

    @staticmethod
    def total(split: dict[str, list[float]]) -> list[float]:
        return [sum(values) for values in zip(*split.values(), strict=True)]


class _Clock:
    """Wall and process CPU marks between stages; ``sync`` (CUDA) makes each stage's device work land in it."""

    def __init__(self, sync) -> None:
        self.sync = sync
        self.marks: list[tuple[float, float]] = []

    def mark(self) -> None:
        self.sync()
        self.marks.append((time.perf_counter(), time.process_time()))


def _frame_paths(backend, paths: list[str], modes: list[str]) -> dict[str, object]:
    """``path name -> run(image, clock)`` for every frame path asked (host: one per post-processing mode)."""
    from evit_ros.network.classes import class_table
    from evit_ros.network.variants import get_variant
    from evit_ros.pipeline import processing

    resolution = tuple(backend.config.resolution)
    palette = class_table(get_variant(backend.config.model).dataset)[1]
    palette_bgr = np.ascontiguousarray(palette[:, ::-1])
    runs: dict[str, object] = {}
    if "host" in paths:
        buffer = np.empty(backend.input_shape, dtype=np.float32)

        def host(mode: str):
            def run(image: np.ndarray, clock: _Clock) -> np.ndarray:
                clock.mark()
                batch = processing.preprocess(image, resolution, order="bgr", out=buffer)
                clock.mark()
                logits = backend.infer(batch)[0]
                clock.mark()
                labels, _ = processing.postprocess(logits, image.shape[:2], mode)
                clock.mark()
                processing.colorize(labels, palette)
                processing.overlay(image, labels, palette_bgr, 0.5)
                clock.mark()
                return labels

            return run

        runs.update({f"host:{mode}": host(mode) for mode in modes})
    if "device" in paths:
        from evit_ros.pipeline.device import DevicePipeline

        pipe = DevicePipeline(backend.device, resolution, palette, len(palette))
        device_input = pipe.input_buffer(backend.input_shape)

        def device(image: np.ndarray, clock: _Clock) -> np.ndarray:
            clock.mark()
            frame = pipe.upload(image)
            pipe.preprocess(frame, "bgr", out=device_input[0])
            clock.mark()
            logits = backend.infer_device(device_input)[0]
            clock.mark()
            labels, _ = pipe.postprocess(logits, image.shape[:2], "exact")
            host_labels = pipe.download(labels)
            clock.mark()
            pipe.download(pipe.colorize(labels))
            pipe.download(pipe.overlay(frame, labels, "bgr", 0.5))
            clock.mark()
            return host_labels

        runs["device"] = device
    return runs


def bench_frames(
    backend,
    images: list[np.ndarray],
    modes: list[str],
    iterations: int,
    warmup: int,
    block: int = 10,
    paths: tuple[str, ...] = ("host",),
) -> tuple[list[FrameTimes], dict[tuple[int, int], float]]:
    """Time BGR frames -> labels at each frame's own size, colours and overlay, the way a node runs them, on each
    frame path (``host``: each post-processing mode; ``device``: evit_ros.pipeline.device). The paths take turns
    in blocks (see :func:`bench_backends`), each turn after one untimed run. Returns the times and, with both
    paths, per frame size the share of pixels where the device labels equal the host ``exact`` labels."""
    runs = _frame_paths(backend, list(paths), modes)
    torch = _cuda_torch()
    clock = _Clock(torch.cuda.synchronize if torch is not None and "device" in paths else lambda: None)
    results: dict[tuple[tuple[int, int], str], FrameTimes] = {}
    agreement: dict[tuple[int, int], float] = {}
    for image in images:
        size = image.shape[:2]
        labels = {}
        for name, run in runs.items():
            results.setdefault((size, name), FrameTimes(size, name, {s: [] for s in STAGES}, {s: [] for s in STAGES}))
            for _ in range(max(1, warmup)):
                labels[name] = run(image, clock)
        if "device" in labels and "host:exact" in labels:
            agreement[size] = float(np.mean(labels["device"] == labels["host:exact"]))
        elif "device" in labels:
            from evit_ros.pipeline.processing import postprocess, preprocess

            reference = backend.infer(preprocess(image, tuple(backend.config.resolution), order="bgr"))[0]
            agreement[size] = float(np.mean(labels["device"] == postprocess(reference, size, "exact")[0]))
        for runs_in_turn in _turns(iterations, block):
            for name, run in runs.items():
                run(image, clock)  # settling run, not timed
                times = results[(size, name)]
                for _ in range(runs_in_turn):
                    clock.marks.clear()
                    run(image, clock)
                    for stage, (a, b) in zip(STAGES, zip(clock.marks, clock.marks[1:]), strict=True):
                        times.wall[stage].append((b[0] - a[0]) * 1e3)
                        times.cpu[stage].append((b[1] - a[1]) * 1e3)
    return list(results.values()), agreement


def format_frames(results: list[FrameTimes], title: str, agreement: dict[tuple[int, int], float] | None = None) -> str:
    p50 = lambda values: float(np.percentile(values, 50))  # noqa: E731
    lines = [title]
    for size in dict.fromkeys(r.size for r in results):
        rows = {r.path: r for r in results if r.size == size}
        lines.append(f"frame {size[1]}x{size[0]} -> labels {size[1]}x{size[0]} (p50 ms per frame)")
        for kind in ("wall", "cpu"):
            lines.append(f"  {'wall time' if kind == 'wall' else 'host CPU time (process, all threads)'}")
            lines.append(f"  {'path':<14} " + " ".join(f"{s:>14}" for s in STAGES) + f" {'frame':>8}")
            for path, r in rows.items():
                split = getattr(r, kind)
                cells = " ".join(f"{p50(split[s]):14.2f}" for s in STAGES)
                lines.append(f"  {path:<14} {cells} {p50(FrameTimes.total(split)):8.2f}")
        if "host:exact" in rows:
            base = p50(rows["host:exact"].wall["postprocess"])
            for path, r in rows.items():
                if path.startswith("host:") and path != "host:exact":
                    lines.append(f"  {path} / host:exact postprocess: x{p50(r.wall['postprocess']) / base:.3f}")
        ratios = ", ".join(
            f"{path} x{p50(FrameTimes.total(r.wall)) / p50(r.wall['network']):.2f}" for path, r in rows.items()
        )
        lines.append(f"  frame / network (wall): {ratios}")
        host = next((r for path, r in rows.items() if path.startswith("host:")), None)
        if host is not None and "device" in rows:
            dev = rows["device"]
            wall = p50(FrameTimes.total(dev.wall)) / p50(FrameTimes.total(host.wall))
            cpu = p50(FrameTimes.total(dev.cpu)) / p50(FrameTimes.total(host.cpu))
            lines.append(f"  device / {host.path} per frame: wall x{wall:.2f}, host CPU x{cpu:.2f}")
        if agreement and size in agreement:
            lines.append(f"  device labels = host exact labels on {agreement[size] * 100:.4f}% of the pixels")
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
        help=f"post-processing modes of the host path for --frames, comma-separated ({', '.join(POSTPROCESS_MODES)})",
    )
    parser.add_argument(
        "--frame-path",
        default="host",
        help="frame paths for --frames, comma-separated, taking turns in one run: host (numpy/OpenCV, each of "
        "--modes), device (torch on the network's device; torch and tensorrt backends), e.g. host,device",
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
    paths = tuple(dict.fromkeys(p.strip() for p in args.frame_path.split(",") if p.strip()))
    if not paths or set(paths) - {"host", "device"}:
        print(f"evit-ros bench: --frame-path takes host and/or device, got {args.frame_path}", file=sys.stderr)
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
            if "device" in paths and not backend.device_frames:
                print(f"evit-ros bench: the {backend.name} backend has no device frame path", file=sys.stderr)
                return 2
            frames, agreement = bench_frames(
                backend, images, modes, args.iterations, args.warmup, block=args.block, paths=paths
            )
            info = backend.describe()
        finally:
            backend.close()
        title = (
            f"{len(images)} frame(s) -> labels at their own size: {variant.name} {resolution[0]}x{resolution[1]} on "
            f"{info['backend']} {info['precision']} {info['device']}, {args.iterations} runs after {args.warmup} "
            f"warm-up{threads}"
        )
        print(format_frames(frames, title, agreement))
    return 0
