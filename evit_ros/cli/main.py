"""`evit-ros` command line: predict, export, build-engine, bench, play, eval, doctor.

Each subcommand's parser and runner live in their own module of this package, imported only when used, so
`evit-ros predict` never loads rclpy and `evit-ros play` never loads torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from evit_ros import __version__
from evit_ros.pipeline.allocation import retain_freed_memory

# subcommand -> (module, add-arguments function, run function, help)
SUBCOMMANDS: dict[str, tuple[str, str, str, str]] = {
    "predict": ("evit_ros.cli.predict", "add_predict_arguments", "run_predict", "segment a folder of images"),
    "export": ("evit_ros.cli.export", "add_export_arguments", "run_export", "export a model to ONNX"),
    "build-engine": (
        "evit_ros.cli.build_engine",
        "add_build_engine_arguments",
        "run_build_engine",
        "build a TensorRT engine offline",
    ),
    "bench": ("evit_ros.cli.bench", "add_bench_arguments", "run_bench", "benchmark backends"),
    "play": ("evit_ros.cli.play", "add_play_arguments", "run_play", "publish images, a video or a bag as a camera"),
    "eval": ("evit_ros.cli.eval", "add_eval_arguments", "run_eval", "score predictions, bags or folders"),
    "doctor": (
        "evit_ros.cli.doctor",
        "add_doctor_arguments",
        "run_doctor",
        "report what this machine can run (--gpu: run and check the GPU paths)",
    ),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evit-ros", description="EfficientViT semantic segmentation for ROS 2")
    parser.add_argument("--version", action="version", version=f"evit-ros {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    wanted = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, add_fn, _, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        # Only the chosen subcommand's module is imported; the others are listed by name.
        if name == wanted:
            getattr(importlib.import_module(module), add_fn)(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(argv).parse_args(argv)
    retain_freed_memory()
    module, _, run_fn, _ = SUBCOMMANDS[args.command]
    return int(getattr(importlib.import_module(module), run_fn)(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
