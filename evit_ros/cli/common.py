"""Arguments shared by every subcommand that runs a model, so they read the same everywhere."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from evit_ros.network.variants import DEFAULT_MODEL, VARIANTS
from evit_ros.pipeline.processing import POSTPROCESS_MODES
from evit_ros.runtime import BACKENDS, FRAME_PATHS, PRECISIONS
from evit_ros.runtime.options import BACKEND_OPTIONS, BackendOption, normalise_options

# Older spellings kept working: flag -> option name.
_FLAG_ALIASES = {"min_label_agreement": ("--min-agreement",)}


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
    default_precision = "auto" if "auto" in precisions else precisions[0]
    g.add_argument(
        "--precision",
        default=default_precision,
        choices=list(precisions),
        help="auto: fp16 (attention in fp32) on TensorRT and torch on CUDA, fp32 on the CPU backends"
        if default_precision == "auto"
        else None,
    )
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
    add_backend_option_arguments(parser)


def add_frame_path_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--frame-path",
        default="auto",
        choices=FRAME_PATHS,
        help="where pre- and post-processing run: device (torch on the network's device; torch and tensorrt "
        "backends), host (numpy/OpenCV), auto (device on CUDA backends, else host)",
    )


def add_backend_option_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per engine-affecting backend option (runtime/options.py), named like the node parameter."""
    g = parser.add_argument_group("backend options (same names as the node's parameters)")
    for opt in BACKEND_OPTIONS:
        names = (opt.flag, *_FLAG_ALIASES.get(opt.name, ()))
        help_text = f"{opt.description} [{'/'.join(opt.backends)}; default {opt.default!r}]"
        if opt.type is bool:
            g.add_argument(*names, dest=opt.name, action=argparse.BooleanOptionalAction, default=opt.default,
                           help=help_text)  # fmt: skip
        else:
            g.add_argument(*names, dest=opt.name, type=_checked(opt), default=opt.default,
                           help=help_text + (f" (one of {', '.join(opt.choices)})" if opt.choices else ""))  # fmt: skip
    # The pre-table spelling of --typing strong.
    g.add_argument("--strongly-typed", dest="typing", action="store_const", const="strong", help=argparse.SUPPRESS)


def _checked(opt: BackendOption):
    """argparse type: the option's own parsing and validation, so a bad value is a usage error at once."""

    def convert(text: str):
        try:
            value = opt.parse(text)
            return value if value == opt.unset else opt.check(value)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = opt.type.__name__
    return convert


def backend_options_from_args(args: argparse.Namespace) -> dict:
    """BackendConfig.options from the parsed flags (validated; unset values dropped)."""
    try:
        return normalise_options({opt.name: getattr(args, opt.name) for opt in BACKEND_OPTIONS})
    except ValueError as exc:
        raise SystemExit(f"evit-ros: {exc}") from exc


def segmenter_kwargs(args: argparse.Namespace, **overrides) -> dict:
    """The Segmenter arguments the model options ask for (picklable, so a remote worker can build it too)."""
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
        backend_options=backend_options_from_args(args),
    )
    if hasattr(args, "frame_path"):
        kwargs["frame_path"] = args.frame_path
    kwargs.update(overrides)
    return kwargs


def segmenter_from_args(args: argparse.Namespace, **overrides):
    from evit_ros.pipeline.segmenter import Segmenter

    return Segmenter(**segmenter_kwargs(args, **overrides))
