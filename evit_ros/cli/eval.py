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
  precomputed class-id PNGs (e.g. the output of ``evit-ros predict``);
* several of these, a folder of recordings, or a text file listing sources: every source is scored, the
  report adds a per-source table (worst first) and the totals come from the summed confusion matrices.
  A recording cut off mid-write is scored up to the cut and flagged; one that cannot be read is listed with
  the reason and left out.

With ``--ray`` the sources (or chunks of long recordings) are scored by Ray workers, one model each;
the results are identical to the in-process run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evit_ros.evaluation.classmap import ClassMap, load_class_map
from evit_ros.evaluation.plan import EvalOptions
from evit_ros.evaluation.report import write_report

__all__ = ["add_eval_arguments", "build_class_map", "main", "run_eval"]

_EPILOG = """examples:
  evit-ros eval run.mcap --gt-topic /gt/labels --class-map evit_ros/data/cityscapes_to_camvid11.yaml --report out/
  evit-ros eval run_bag/ --mode model --images-topic /camera/image_raw --gt-topic /gt/labels --weights b0.pt
  evit-ros eval ~/data/cityscapes --weights b0.pt --resolution 1024x2048 --report out/
  evit-ros eval ~/data/camvid --class-map evit_ros/data/cityscapes_to_camvid11.yaml --predictions pred/
  evit-ros eval drives/ more.mcap list.txt --ray --num-workers 2 --mode model --weights b0.pt --report out/
  evit-ros eval drives/ --ray auto --num-gpus-per-worker 1 --backend torch --weights b0.pt --report out/
"""


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``eval`` options (source, topics, class maps, report, model) to ``parser``."""
    from evit_ros.cli.common import add_frame_path_argument, add_model_arguments

    parser.description = __doc__.split("\n\n", 1)[1] if __doc__ else None
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _EPILOG
    parser.add_argument("source", type=Path, nargs="+",
                        help="rosbag2 recordings (dir, .db3, .mcap), folders of recordings, dataset folders, or text "
                             "files listing them (one per line)")  # fmt: skip
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
    g.add_argument("--max-frames", type=int, default=None, help="evaluate at most N frames of each source")
    g.add_argument("--report", type=Path, default=None, help="write report.json, report.md and plots to DIR")
    g.add_argument("--samples", type=int, default=4, help="sample overlays in the report (default 4)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g = parser.add_argument_group("scale out (Ray)")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="auto|local|ADDRESS",
                   help="score on Ray: local (the default with a bare --ray) starts a cluster on this machine, auto "
                        "joins the running one (ray start --head ...), ADDRESS connects to host:port; without "
                        "--ray everything runs in this process")  # fmt: skip
    g.add_argument("--num-workers", type=int, default=None,
                   help="Ray workers, one model each (default: what the cluster's CPUs / GPUs allow)")  # fmt: skip
    g.add_argument("--num-cpus-per-worker", type=float, default=1.0, help="CPUs each Ray worker reserves (default 1)")
    g.add_argument("--num-gpus-per-worker", type=float, default=0.0,
                   help="GPUs each Ray worker reserves (e.g. 1, or 0.5 to share one); default 0: CPU")  # fmt: skip
    g.add_argument("--chunk-frames", type=int, default=None,
                   help="split recordings into units of at most N frames (default: about 4 units per worker; "
                        "0: whole recordings)")  # fmt: skip
    add_model_arguments(parser)
    add_frame_path_argument(parser)


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


def _options(args: argparse.Namespace) -> EvalOptions:
    return EvalOptions(
        mode=args.mode,
        images_topic=args.images_topic,
        labels_topic=args.labels_topic,
        gt_topic=args.gt_topic,
        latency=not args.no_latency,
        dataset_layout=args.dataset_layout,
        split=args.split,
        predictions=str(args.predictions.resolve()) if args.predictions is not None else None,
        max_frames=args.max_frames,
        samples=args.samples,
    )


def run_eval(args: argparse.Namespace) -> int:
    """Run ``evit-ros eval`` from parsed arguments; prints the scores, returns the exit code."""
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("evit-ros eval: interrupted; nothing was written", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, ImportError, RuntimeError) as exc:
        print(f"evit-ros eval: error: {exc}", file=sys.stderr)
        return 2


def _meta(args: argparse.Namespace, plans: list, sources: list[Path]) -> dict[str, Any]:
    meta: dict[str, Any] = {"source": str(sources[0]) if len(sources) == 1 else f"{len(sources)} sources"}
    modes = sorted({p.mode for p in plans})
    meta["mode"] = modes[0] if len(modes) == 1 else "mixed"
    if len(plans) == 1 and plans[0].kind == "bag":
        meta["topics"] = plans[0].topics
    layouts = {p.layout for p in plans if p.layout}
    if len(layouts) == 1:
        meta["layout"] = layouts.pop()
    return meta


def _class_map(args: argparse.Namespace, plans: list) -> ClassMap:
    kinds = sorted({p.gt_kind for p in plans})
    if len(kinds) > 1:
        raise ValueError(f"the sources hold different kinds of ground truth ({', '.join(kinds)}): evaluate them apart")
    class_map = build_class_map(args, kinds[0])
    if any(p.mode == "model" for p in plans) and class_map.pred_lut is None:
        n, _, _ = _model_class_info(args)
        if class_map.num_classes != n:
            raise ValueError(
                f"the model has {n} classes, the evaluation {class_map.num_classes}: give a --class-map that maps them"
            )
    return class_map


def _run(args: argparse.Namespace) -> int:
    from evit_ros.evaluation.plan import expand_sources, plan_sources, split_units
    from evit_ros.evaluation.runner import Progress, merge_results, score_units

    options = _options(args)
    if args.ray is None:
        given = [name for name, value in (("--num-workers", args.num_workers), ("--chunk-frames", args.chunk_frames),
                 ("--num-gpus-per-worker", args.num_gpus_per_worker or None)) if value is not None]  # fmt: skip
        if given:
            raise ValueError(f"{', '.join(given)} only apply with --ray")
    sources = expand_sources(args.source)
    if not sources:
        raise ValueError(f"no sources found in {', '.join(map(str, args.source))}")
    plans, failures = plan_sources(sources, options)
    if not plans:
        reasons = "; ".join(f"{f.source}: {f.reason}" for f in failures)
        raise ValueError(failures[0].reason if len(failures) == 1 else f"nothing could be scored: {reasons}")
    for failure in failures:
        print(f"evit-ros eval: skipping {failure.source}: {failure.reason}", file=sys.stderr)
    class_map = _class_map(args, plans)
    meta = _meta(args, plans, sources)
    needs_model = any(p.mode == "model" for p in plans)
    what = sources[0] if len(sources) == 1 else f"{len(plans)} sources"
    print(f"evaluating {what} ({meta['mode']}); {class_map.describe()}", file=sys.stderr)
    if args.ray is not None:
        results = _run_on_ray(args, plans, options, class_map, needs_model, meta)
    else:
        units = split_units(plans)
        segmenter = None
        if needs_model:
            from evit_ros.cli.common import segmenter_from_args

            segmenter = segmenter_from_args(args)
            meta.update(segmenter.describe())
        progress = None
        try:
            progress = Progress(units, not args.no_progress)
            results = score_units(units, options, class_map, segmenter, progress)
        finally:
            if progress is not None:
                progress.close()
            if segmenter is not None:
                segmenter.close()
    result = merge_results(plans, failures, results, class_map, options.samples)
    if result.resized:
        meta["resized_predictions"] = result.resized
        print(f"note: {result.resized} prediction(s) differed in size from the ground truth and were resized "
              "(nearest)", file=sys.stderr)  # fmt: skip
    result.meta = meta
    print(result.summary())
    if args.report is not None:
        write_report(result, args.report)
        print(f"report written to {args.report}")
    return 0


def _run_on_ray(
    args: argparse.Namespace, plans: list, options: EvalOptions, class_map: ClassMap, needs_model: bool, meta: dict
) -> list:
    from evit_ros.cli.common import segmenter_kwargs
    from evit_ros.evaluation.distributed import score_units_on_ray

    if args.num_cpus_per_worker <= 0 or args.num_gpus_per_worker < 0:
        raise ValueError("--num-cpus-per-worker must be > 0 and --num-gpus-per-worker >= 0")
    kwargs = None
    if needs_model:
        overrides: dict[str, Any] = {}
        if args.num_threads is None:  # one worker's share of the cores, not all of them per worker
            overrides["num_threads"] = max(1, int(args.num_cpus_per_worker))
        if args.weights not in (None, "random") and Path(args.weights).exists():
            overrides["weights"] = str(Path(args.weights).resolve())  # workers may run elsewhere
        kwargs = segmenter_kwargs(args, **overrides)
    run = score_units_on_ray(
        plans,
        options,
        class_map,
        kwargs,
        address=args.ray,
        num_workers=args.num_workers,
        num_cpus_per_worker=args.num_cpus_per_worker,
        num_gpus_per_worker=args.num_gpus_per_worker,
        chunk_frames=args.chunk_frames,
        show_progress=not args.no_progress,
    )
    meta.update(run.model)
    meta["ray"] = {
        "address": args.ray,
        "workers": run.workers,
        "units": len(run.units),
        "startup_s": round(run.startup_s, 3),
        "workers_ready_s": round(run.ready_s, 3),
        "scoring_s": round(run.score_s, 3),
    }
    print(f"ray: {run.workers} worker(s), {len(run.units)} unit(s); cluster start {run.startup_s:.1f} s, "
          f"models loaded {run.ready_s:.1f} s, scoring {run.score_s:.1f} s", file=sys.stderr)  # fmt: skip
    return run.results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="evit-ros eval")
    add_eval_arguments(parser)
    return run_eval(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
