"""Arguments shared by every subcommand that runs a model, so they read the same everywhere."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from evit_ros.network.variants import DEFAULT_MODEL, VARIANTS
from evit_ros.pipeline.processing import POSTPROCESS_MODES
from evit_ros.runtime import BACKENDS, PRECISIONS


def add_model_arguments(
    parser: argparse.ArgumentParser,
    default_backend: str = "auto",
    precisions: Sequence[str] = PRECISIONS,
    with_backend: bool = True,
) -> None:
    """Add --model/--weights/--resolution/--precision; with_backend adds the runtime options too."""
    g = parser.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL, choices=sorted(VARIANTS), help="official variant")
    g.add_argument(
        "--weights",
        default=None,
        help="checkpoint .pt (or directory holding it); default: the cache, then the Hugging Face Hub; "
        "'random' for untrained weights (smoke tests only)",
    )
    g.add_argument("--resolution", default=None, help="network input HxW, multiples of 32 (default: the variant's)")
    g.add_argument("--precision", default="fp32", choices=list(precisions))
    if not with_backend:
        return
    g.add_argument("--backend", default=default_backend, choices=BACKENDS)
    g.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N; for openvino any OpenVINO device (CPU, GPU, NPU, AUTO) (default: picked by the "
        "backend)",
    )
    g.add_argument("--num-threads", type=int, default=None, help="CPU threads for torch / ONNX Runtime / OpenVINO")
    g.add_argument(
        "--engine-cache-dir",
        default=None,
        help="where ONNX files, TensorRT engines and OpenVINO compiled models are cached",
    )
    g.add_argument(
        "--postprocess",
        default="exact",
        choices=POSTPROCESS_MODES,
        help="exact: bicubic logits upsampling then argmax (the official protocol); refined: the same labels, "
        "computed only near class boundaries; fast: argmax then nearest upsampling",
    )


def segmenter_from_args(args: argparse.Namespace, **overrides):
    from evit_ros.pipeline.segmenter import Segmenter

    kwargs = dict(
        model=args.model,
        weights=args.weights,
        resolution=args.resolution,
        backend=args.backend,
        precision=args.precision,
        device=args.device,
        num_threads=args.num_threads,
        engine_cache_dir=args.engine_cache_dir,
        postprocess_mode=args.postprocess,
        allow_random_weights=args.weights == "random",
    )
    kwargs.update(overrides)
    return Segmenter(**kwargs)
