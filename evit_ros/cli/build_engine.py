"""`evit-ros build-engine`: build (or find in the cache) the TensorRT engine a backend configuration needs."""

from __future__ import annotations

import argparse
import sys

from evit_ros.cli.common import add_model_arguments, backend_options_from_args
from evit_ros.deploy.tensorrt_build import TensorRTUnavailable
from evit_ros.network.variants import get_variant, parse_resolution
from evit_ros.runtime import BackendConfig, create_backend, resolve_precision


def add_build_engine_arguments(parser: argparse.ArgumentParser) -> None:
    # The TensorRT options (--typing, --dla-core, --calibration-dir, ...) are the shared backend option flags, so an
    # engine built here is the one predict, bench and the node (same parameter names) look up in the cache.
    add_model_arguments(parser, default_backend="tensorrt")


def backend_config_from_args(args: argparse.Namespace) -> BackendConfig:
    variant = get_variant(args.model)
    resolution = parse_resolution(args.resolution) if args.resolution else variant.default_resolution
    options = backend_options_from_args(args)
    precision = resolve_precision(args.precision, "tensorrt")  # auto: fp16
    precision = "fp16" if options.get("typing") == "strong" and precision == "fp32" else precision
    return BackendConfig(
        model=variant.name,
        weights=args.weights,
        resolution=resolution,
        precision=precision,
        device=args.device,
        engine_cache_dir=args.engine_cache_dir,
        options=options,
    )


def run_build_engine(args: argparse.Namespace) -> int:
    try:
        config = backend_config_from_args(args)
        backend = create_backend("tensorrt", config)
    except TensorRTUnavailable as exc:
        print(f"evit-ros build-engine: {exc}", file=sys.stderr)
        return 2
    except (RuntimeError, ValueError, FileNotFoundError) as exc:
        print(f"evit-ros build-engine: {exc}", file=sys.stderr)
        return 1
    print(f"TensorRT engine ready: {backend.engine_info.path}")
    return 0
