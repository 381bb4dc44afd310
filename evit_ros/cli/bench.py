"""`evit-ros bench`: latency percentiles, throughput and peak memory of one or several backends."""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import dataclass

import numpy as np

from evit_ros.cli.common import add_model_arguments, backend_options_from_args


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


def bench_backend(backend, iterations: int, warmup: int, seed: int = 0) -> BenchResult:
    """Time backend.infer on a fixed normalised batch, after `warmup` untimed runs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(backend.input_shape, dtype=np.float32)
    torch = _cuda_torch()
    if torch is not None:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(warmup):
        backend.infer(x)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        backend.infer(x)  # returns host numpy: synchronised
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1000.0
    info = backend.describe()
    cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if torch is not None else None
    return BenchResult(
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
        lines.append("(peak RSS is the process high-water mark, cumulative in the order run)")
    return "\n".join(lines)


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--iterations", type=int, default=50, help="timed runs")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument(
        "--compare", default=None, help="comma-separated backends to run in this process, e.g. torch,onnxruntime"
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
    if args.iterations < 1 or args.warmup < 0:
        print("evit-ros bench: --iterations must be >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    variant = get_variant(args.model)
    resolution = parse_resolution(args.resolution) if args.resolution else variant.default_resolution
    names = [n.strip() for n in args.compare.split(",") if n.strip()] if args.compare else [args.backend]
    results = []
    for name in names:
        resolved = resolve_backend_name(name)
        config = BackendConfig(
            model=variant.name,
            weights=args.weights,
            resolution=resolution,
            precision=args.precision,
            device=args.device,
            num_threads=args.num_threads,
            engine_cache_dir=args.engine_cache_dir,
            batch_size=args.batch_size,
            options=backend_options_from_args(args),
        )
        backend = create_backend(resolved, config)
        try:
            results.append(bench_backend(backend, args.iterations, args.warmup))
        finally:
            backend.close()
    threads = f", {args.num_threads} threads" if args.num_threads else ""
    title = (
        f"{variant.name} {resolution[0]}x{resolution[1]} batch {args.batch_size}, {args.iterations} runs after "
        f"{args.warmup} warm-up{threads}"
    )
    print(format_results(results, title))
    return 0
