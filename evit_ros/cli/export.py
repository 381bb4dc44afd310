"""`evit-ros export`: write a checkpoint as an ONNX graph with metadata, after checker, op and parity checks."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evit_ros.cli.common import add_model_arguments
from evit_ros.deploy.onnx_export import (
    DEFAULT_ATOL,
    EXPORT_PRECISIONS,
    HEADS,
    ONNX_OPSET,
    ParityError,
    export_onnx,
)
from evit_ros.deploy.onnx_graph import unsupported_tensorrt_ops
from evit_ros.network.variants import get_variant, parse_resolution


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser, precisions=EXPORT_PRECISIONS, with_backend=False)
    parser.add_argument(
        "--head", choices=HEADS, default="logits", help="logits (N x C x H/8 x W/8) or labels (N x H x W)"
    )
    parser.add_argument("--dynamic-batch", action="store_true", help="make the batch dimension dynamic")
    parser.add_argument(
        "--atol", type=float, default=None, help=f"parity: max abs logit difference (fp32 default {DEFAULT_ATOL})"
    )
    parser.add_argument("--min-agreement", type=float, default=None, help="parity: minimum label agreement, 0..1")
    parser.add_argument("--parity-image", default=None, help="image for the parity check (default: synthetic)")
    parser.add_argument("--no-parity", action="store_true", help="skip the parity check")
    parser.add_argument("output", type=Path, help="output .onnx path")


def run_export(args: argparse.Namespace) -> int:
    from evit_ros.network.weights import CheckpointError, load_model

    variant = get_variant(args.model)
    resolution = parse_resolution(args.resolution) if args.resolution else variant.default_resolution
    if args.weights is None:
        print(
            "evit-ros export: --weights is required (a checkpoint path, or 'random' for graph tests)", file=sys.stderr
        )
        return 2
    try:
        model, sha = load_model(variant, args.weights)
    except CheckpointError as exc:
        print(f"evit-ros export: {exc}", file=sys.stderr)
        return 2
    try:
        res = export_onnx(
            model,
            variant,
            resolution,
            args.output,
            head=args.head,
            precision=args.precision,
            dynamic_batch=args.dynamic_batch,
            checkpoint_sha256=sha,
            parity=not args.no_parity,
            atol=args.atol,
            min_agreement=args.min_agreement,
            parity_image=args.parity_image,
        )
    except ParityError as exc:
        print(f"evit-ros export: {exc}", file=sys.stderr)
        return 1
    if res.parity is not None:
        print(f"parity vs PyTorch: {res.parity.detail}")
    bad = unsupported_tensorrt_ops(res.path)
    trt_note = "all ops supported by TensorRT's ONNX parser" if not bad else f"ops TensorRT lacks: {', '.join(bad)}"
    print(
        f"exported {variant.name} {resolution[0]}x{resolution[1]} ({args.head}, {args.precision}, opset {ONNX_OPSET}) "
        f"-> {res.path}; {res.fp32_pins} attention-core nodes for FP32 pinning; {trt_note}"
    )
    return 0
