"""`evit-ros eval`: score segmentation against ground truth, from folders or rosbag2 recordings.

Sources (``SOURCE``):

* a rosbag2 recording (directory with metadata.yaml, or a ``.db3`` / ``.mcap`` file):
    - ``--mode model``: run a model on ``--images-topic`` and compare with ``--gt-topic`` (mono8/mono16),
      frames paired by header stamp;
    - ``--mode recorded``: compare the node's recorded ``--labels-topic`` with ``--gt-topic``: scores exactly
      what ran on the robot;
    - ``--mode auto`` (default): ``recorded`` when the bag has the labels topic, else ``model``.
    When the bag has both the image topic and the labels topic, end-to-end latency, dropped frames and
    the output rate are measured too.
* an image/label folder: Cityscapes (``leftImg8bit/`` + ``gtFine/``), CamVid (``val/`` + ``valannot/``) or
  paired (``images/`` + ``labels/``); the model runs on the images, or ``--predictions DIR`` scores
  precomputed class-id PNGs (e.g. the output of ``evit-ros predict``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.evaluation.classmap import ClassMap, load_class_map
from evit_ros.evaluation.report import write_report
from evit_ros.evaluation.runner import evaluate, resolve_topic
from evit_ros.evaluation.sources import is_bag

__all__ = ["add_eval_arguments", "build_class_map", "main", "run_eval"]

_EPILOG = """examples:
  evit-ros eval run.mcap --gt-topic /gt/labels --class-map evit_ros/data/cityscapes_to_camvid11.yaml --report out/
  evit-ros eval run_bag/ --mode model --images-topic /camera/image_raw --gt-topic /gt/labels --weights b0.pt
  evit-ros eval ~/data/cityscapes --weights b0.pt --resolution 1024x2048 --report out/
  evit-ros eval ~/data/camvid --class-map evit_ros/data/cityscapes_to_camvid11.yaml --predictions pred/
"""


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options (source, topics, class maps, report, model) to ``parser``."""
    from evit_ros.cli.common import add_model_arguments

    parser.description = __doc__.split("\n\n", 1)[1] if __doc__ else None
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("source", type=Path, help="rosbag2 recording (dir, .db3, .mcap) or dataset folder")
    g = parser.add_argument_group("bag sources")
    g.add_argument("--mode", choices=("auto", "model", "recorded"), default="auto",
                   help="model: run a model on the image topic; recorded: score the recorded labels topic "
                        "(default auto: recorded if the labels topic is in the bag)")  # fmt: skip
    g.add_argument("--images-topic", default="image", help="camera image topic (default: image)")
    g.add_argument("--labels-topic", default="segmentation/labels",
                   help="the node's label output topic (default: segmentation/labels)")  # fmt: skip
    g.add_argument("--gt-topic", default="gt/labels", help="ground-truth mono8/mono16 label topic (default: gt/labels)")
    g.add_argument("--no-latency", action="store_true", help="do not measure latency even when possible")
    g = parser.add_argument_group("folder sources")
    g.add_argument("--dataset-layout", choices=("auto", "cityscapes", "camvid", "paired"), default="auto")
    g.add_argument("--split", default=None, help="CamVid split folder (default: val)")
    g.add_argument("--predictions", type=Path, default=None,
                   help="folder of <image stem>.png class-id maps to score instead of running a model")  # fmt: skip
    g = parser.add_argument_group("classes")
    g.add_argument("--class-map", default="auto",
                   help="evaluation classes and model-id -> evaluation-id map: none (the model's classes), "
                        "cityscapes, ade20k, or a YAML file (num_classes, ignore_index, names, map); "
                        "default auto = none")  # fmt: skip
    g.add_argument("--gt-map", default="auto",
                   help="ground-truth conversion: none, cityscapes (labelIds -> trainIds), ade20k (value - 1, "
                        "0 -> ignore) or a YAML file; default auto: from the folder layout / class map")  # fmt: skip
    g = parser.add_argument_group("output")
    g.add_argument("--max-frames", type=int, default=None, help="evaluate at most N frames")
    g.add_argument("--report", type=Path, default=None, help="write report.json, report.md and plots to DIR")
    g.add_argument("--samples", type=int, default=4, help="sample overlays in the report (default 4)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_arguments(parser)


def _model_class_info(args: argparse.Namespace) -> tuple[int, tuple[str, ...], np.ndarray]:
    from evit_ros.network.classes import class_table
    from evit_ros.network.variants import get_variant

    variant = get_variant(args.model)
    names, palette = class_table(variant.dataset)
    return variant.num_classes, names, palette


def build_class_map(args: argparse.Namespace, gt_kind: str) -> ClassMap:
    """The evaluation class map from ``--class-map`` / ``--gt-map`` and the source's ground-truth kind."""
    spec = "none" if args.class_map == "auto" else args.class_map
    if spec in ("none", "identity"):
        n, names, palette = _model_class_info(args)
        cmap = load_class_map(spec, n, names, palette)
    else:
        cmap = load_class_map(spec)
    if args.gt_map != "auto":
        return cmap.with_gt_map(args.gt_map)
    if gt_kind == "labelIds":
        return cmap.with_gt_map("cityscapes")
    if gt_kind == "labelTrainIds":
        return cmap.with_gt_map("none")
    return cmap


def _bag_plan(args: argparse.Namespace) -> tuple[Any, str, dict[str, str]]:
    from evit_ros.evaluation.sources import BagModelSource, BagRecordedSource
    from evit_ros.io.bagio import bag_topics

    available = bag_topics(args.source)
    topics = {
        "images": resolve_topic(available, args.images_topic),
        "labels": resolve_topic(available, args.labels_topic),
        "gt": resolve_topic(available, args.gt_topic),
    }
    mode = args.mode
    if mode == "auto":
        mode = "recorded" if topics["labels"] in available else "model"
    if mode == "recorded":
        source = BagRecordedSource(args.source, topics["labels"], topics["gt"], topics["images"], args.max_frames,
                                   images_for=args.samples)  # fmt: skip
    else:
        source = BagModelSource(args.source, topics["images"], topics["gt"], args.max_frames)
    return source, mode, topics


def run_eval(args: argparse.Namespace) -> int:
    """Run ``evit-ros eval`` from parsed arguments; prints the scores, returns the exit code."""
    try:
        return _run(args)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        print(f"evit-ros eval: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.max_frames is not None and args.max_frames <= 0:
        raise ValueError("--max-frames must be positive")
    if not args.source.exists():
        raise FileNotFoundError(f"source not found: {args.source}")
    meta: dict[str, Any] = {"source": str(args.source)}
    latency = None
    total: int | None
    if is_bag(args.source):
        if args.predictions is not None:
            raise ValueError(
                "--predictions applies to folder sources; a bag's recorded labels are used with --mode recorded"
            )
        source, mode, topics = _bag_plan(args)
        total = args.max_frames
        meta.update(mode=mode, topics=topics)
        if not args.no_latency and topics["images"] in source.topics and topics["labels"] in source.topics:
            from evit_ros.evaluation.latency import latency_from_bag

            latency = latency_from_bag(args.source, topics["images"], topics["labels"])
    else:
        from evit_ros.evaluation.sources import FolderSource

        source = FolderSource(args.source, args.dataset_layout, args.split, args.predictions, args.max_frames)
        mode = "predictions" if args.predictions is not None else "model"
        total = len(source)
        meta.update(mode=mode, layout=source.layout)
    class_map = build_class_map(args, source.gt_kind)
    segmenter = None
    if mode == "model":
        from evit_ros.cli.common import segmenter_from_args

        segmenter = segmenter_from_args(args)
        meta.update(segmenter.describe())
        if class_map.pred_lut is None and class_map.num_classes != segmenter.num_classes:
            raise ValueError(
                f"the model has {segmenter.num_classes} classes, the evaluation {class_map.num_classes}: "
                "give a --class-map that maps them"
            )
    print(f"evaluating {source.describe()}; {class_map.describe()}", file=sys.stderr)
    try:
        result, resized = evaluate(source, class_map, segmenter, total, args.samples, not args.no_progress)
    finally:
        if segmenter is not None:
            segmenter.close()
    if resized:
        meta["resized_predictions"] = resized
        print(f"note: {resized} prediction(s) differed in size from the ground truth and were resized (nearest)",
              file=sys.stderr)  # fmt: skip
    result.latency = latency
    result.meta = meta
    print(result.summary())
    if args.report is not None:
        write_report(result, args.report)
        print(f"report written to {args.report}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evit-ros eval")
    add_eval_arguments(parser)
    return run_eval(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
