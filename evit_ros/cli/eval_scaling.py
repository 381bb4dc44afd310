"""Ray scaling of `evit-ros eval`: throughput with 1 and with N workers on the same bags, in one run.

    python -m evit_ros.cli.eval_scaling --camvid DATA/camvid --weights b0.pt [--bags 8] [--workers 1 2]

Writes ``--bags`` recordings (alternating sqlite3 / mcap) of consecutive CamVid val frames, then scores them in
model mode on a fresh local Ray cluster per worker count and prints, for each: frames/s while scoring (models
already loaded), the cluster start-up and model-loading overhead, and the speed-up over the first count.
Every worker gets one CPU and one inference thread. The confusion matrices of all runs must be identical
(checked). ``--in-process`` adds the single-process run without Ray as a reference.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from evit_ros.cli.common import add_model_arguments, segmenter_kwargs

_TOPICS = ("/camera/image", "/gt/labels")


def _write_bags(camvid: Path, out: Path, bags: int, frames: int, size: tuple[int, int] | None) -> list[Path]:
    from evit_ros.evaluation.sources import find_pairs
    from evit_ros.io.bagio import ImageBagWriter

    pairs, _ = find_pairs(camvid, "camvid", "val")
    if len(pairs) < bags * frames:
        raise ValueError(f"{camvid} has {len(pairs)} val frames; {bags} bags of {frames} need {bags * frames}")
    paths = []
    for b in range(bags):
        path = out / f"drive_{b:02d}"
        with ImageBagWriter(path, storage="sqlite3" if b % 2 == 0 else "mcap") as writer:
            for k, (_, image, label) in enumerate(pairs[b * frames : (b + 1) * frames]):
                rgb = cv2.cvtColor(cv2.imread(str(image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
                gt = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
                if size is not None:
                    rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
                    gt = cv2.resize(gt, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
                stamp = (1_700_000_000 + b * 1000) * 10**9 + k * 66_666_667
                writer.write(_TOPICS[0], rgb, "rgb8", stamp)
                writer.write(_TOPICS[1], gt, "mono8", stamp)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evit_ros.cli.eval_scaling", description=__doc__.split("\n")[0])
    parser.add_argument("--camvid", type=Path, required=True, help="CamVid folder (val/ + valannot/)")
    parser.add_argument("--bags", type=int, default=8, help="recordings to write (default 8)")
    parser.add_argument("--frames-per-bag", type=int, default=12, help="frames per recording (default 12)")
    parser.add_argument("--frame-size", default=None, help="shrink the frames to HxW (default: as stored)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--class-map", default=None, help="class map (default: the package's CamVid map)")
    parser.add_argument("--in-process", action="store_true", help="also time the run without Ray")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    add_model_arguments(parser, default_backend="torch")
    args = parser.parse_args(argv)
    if args.resolution is None:
        args.resolution = "384x480"
    try:
        return _run(args)
    except (ValueError, OSError, ImportError, RuntimeError) as exc:
        print(f"eval_scaling: error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    from evit_ros.evaluation.classmap import load_class_map
    from evit_ros.evaluation.distributed import score_units_on_ray
    from evit_ros.evaluation.plan import EvalOptions, plan_sources, split_units
    from evit_ros.evaluation.runner import merge_results, score_units

    size = tuple(int(x) for x in args.frame_size.lower().split("x")) if args.frame_size else None
    class_map = load_class_map(args.class_map or Path(__file__).parents[1] / "data" / "cityscapes_to_camvid11.yaml")
    options = EvalOptions(mode="model", images_topic=_TOPICS[0], gt_topic=_TOPICS[1], samples=0, latency=False)
    figures: dict = {"bags": args.bags, "resolution": args.resolution, "runs": []}
    with tempfile.TemporaryDirectory(prefix="evit_eval_scaling_") as tmp:
        bags = _write_bags(args.camvid, Path(tmp), args.bags, args.frames_per_bag, size)
        plans, failures = plan_sources(bags, options)
        if failures:
            raise ValueError(f"could not plan {failures[0].source}: {failures[0].reason}")
        if args.weights not in (None, "random") and Path(args.weights).exists():
            args.weights = str(Path(args.weights).resolve())
        kwargs = segmenter_kwargs(args, num_threads=1)
        confusions = []
        if args.in_process:
            from evit_ros.pipeline.segmenter import Segmenter

            seg = Segmenter(**kwargs)
            t0 = time.perf_counter()
            results = score_units(split_units(plans), options, class_map, seg)
            elapsed = time.perf_counter() - t0
            seg.close()
            merged = merge_results(plans, [], results, class_map)
            confusions.append(merged.scores.confusion)
            figures["in_process"] = {"frames": merged.frames, "score_s": elapsed, "fps": merged.frames / elapsed}
            print(f"in-process (1 thread): {merged.frames} frames in {elapsed:.2f} s = {merged.frames / elapsed:.2f}"
                  " frames/s")  # fmt: skip
        for workers in args.workers:
            t0 = time.perf_counter()
            run = score_units_on_ray(plans, options, class_map, kwargs, num_workers=workers, num_cpus_per_worker=1,
                                     local_cpus=workers, show_progress=False)  # fmt: skip
            total = time.perf_counter() - t0
            merged = merge_results(plans, [], run.results, class_map)
            confusions.append(merged.scores.confusion)
            fps = merged.frames / run.score_s
            entry = {"workers": run.workers, "units": len(run.units), "frames": merged.frames, "fps": fps,
                     "startup_s": run.startup_s, "models_ready_s": run.ready_s, "score_s": run.score_s,
                     "wall_s": total}  # fmt: skip
            figures["runs"].append(entry)
            print(f"ray {run.workers} worker(s), {len(run.units)} units: {merged.frames} frames in {run.score_s:.2f} s "
                  f"= {fps:.2f} frames/s; cluster start {run.startup_s:.2f} s, models loaded {run.ready_s:.2f} s, "
                  f"wall {total:.2f} s")  # fmt: skip
    base = figures["runs"][0]["fps"]
    for entry in figures["runs"][1:]:
        entry["speedup"] = entry["fps"] / base
        print(f"speed-up {entry['workers']} vs {figures['runs'][0]['workers']} worker(s): {entry['speedup']:.2f}x")
    exact = all(np.array_equal(c, confusions[0]) for c in confusions)
    figures["identical_confusion"] = exact
    print(f"confusion matrices identical across runs: {exact}")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
