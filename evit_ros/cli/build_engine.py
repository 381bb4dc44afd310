"""`evit-ros build-engine`: build (or find in the cache) the TensorRT engine a backend configuration needs."""

from __future__ import annotations

import argparse
import sys

from evit_ros.cli.common import add_model_arguments
from evit_ros.deploy.tensorrt_build import TensorRTUnavailable, import_tensorrt
from evit_ros.network.variants import get_variant, parse_resolution
from evit_ros.runtime import BackendConfig, create_backend


def add_build_engine_arguments(parser: argparse.ArgumentParser) -> None:
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
