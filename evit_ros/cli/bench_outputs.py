"""Size and encoding time of the planner outputs (seg_node's ``/compressed`` topics and class masks) on real frames.

    python -m evit_ros.cli.bench_outputs [--size 1080x1920 | --size native] [--limit 10] [--json out.json]
        [--masks '{drivable: [road, sidewalk], people: [person, rider]}'] [FOLDER_OR_IMAGE ...]

Each frame is resized to ``--size`` (H x W; ``native`` keeps it), segmented with the model (labels at the frame's
size, the node's default post-processing), then put through exactly what the node does per frame for each output:
the class masks (a table look-up over the labels), and the image_transport encodings of labels, colour map and
masks (PNG) and the overlay (JPEG at ``--jpeg-quality``). Prints, per folder, the mean compressed bytes per frame,
the raw message's pixel bytes, and the median encoding time per frame (``--repeats`` encodings of each frame).
Without folders: the test data's Cityscapes frames and CamVid val frames.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from evit_ros.cli.demo import data_dir, default_weights
from evit_ros.io.encodings import encode_transport, label_dtype_encoding
from evit_ros.network.variants import DEFAULT_MODEL
from evit_ros.pipeline import processing
from evit_ros.pipeline.processing import list_images

DEFAULT_MASKS = "{drivable: [road, sidewalk], people: [person, rider]}"


def _median_ms(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), result


def measure_frame(
    seg, image_bgr: np.ndarray, masks: dict[str, tuple[int, ...]], jpeg_quality: int, repeats: int
) -> dict[str, dict[str, float]]:
    """Output -> {bytes, raw_bytes, ms} for one frame: the compressed size, the raw image's pixel bytes, and the
    median time to make it from the labels (for masks: the look-up; for compressed outputs: the encoding)."""
    labels = seg.segment(image_bgr, order="bgr").labels
    palette_bgr = np.ascontiguousarray(seg.palette[:, ::-1])
    label_encoding = label_dtype_encoding(labels.dtype)
    overlay = processing.overlay(image_bgr, labels, palette_bgr, 0.5)
    colours = processing.colorize(labels, palette_bgr)
    sources = {"labels": (labels, label_encoding, "png"), "color": (colours, "rgb8", "png"),
               "overlay": (overlay, "bgr8", "jpeg")}  # fmt: skip
    result = {}
    for name, ids in masks.items():
        lut = processing.class_lut(ids, labels.dtype)
        ms, mask = _median_ms(lambda lut=lut: processing.class_mask(labels, lut), repeats)
        result[f"mask_{name} (look-up)"] = {"bytes": float("nan"), "raw_bytes": mask.nbytes, "ms": ms}
        sources[f"mask_{name}"] = (mask, "mono8", "png")
    for out, (pixels, encoding, codec) in sources.items():
        ms, (_, data) = _median_ms(lambda p=pixels, e=encoding, c=codec: encode_transport(p, e, c, jpeg_quality),
                                   repeats)  # fmt: skip
        result[out] = {"bytes": data.size, "raw_bytes": pixels.nbytes, "ms": ms}
    return result


def _frame_sets(paths: Sequence[Path], limit: int) -> dict[str, list[Path]]:
    """Name -> frames: each folder (its first ``limit`` images) or image given; by default the test data's
    Cityscapes frames (the frankfurt ones: the folder also holds a demo figure) and CamVid val frames."""
    if paths:
        return {str(p): list_images(p)[:limit] if p.is_dir() else [p] for p in paths}
    root = data_dir()
    if root is None:
        return {}
    return {
        "cityscapes": sorted((root / "cityscapes" / "fullres_unlabeled").glob("frankfurt_*.png"))[:limit],
        "camvid": list_images(root / "camvid" / "val")[:limit],
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m evit_ros.cli.bench_outputs", description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, help="image folders or files (default: the test data's)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--weights", default=None, help="default: the test data's B0 checkpoint, else cache/Hub")
    parser.add_argument("--resolution", default="512x1024", help="network input HxW")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--num-threads", type=int, default=0)
    parser.add_argument("--size", default="1080x1920", help="frame size HxW before segmenting, or 'native'")
    parser.add_argument("--masks", default=DEFAULT_MASKS, help="class_masks as the node takes it")
    parser.add_argument("--jpeg-quality", type=int, default=80)
    parser.add_argument("--limit", type=int, default=10, help="frames per folder")
    parser.add_argument("--repeats", type=int, default=5, help="encodings per frame and output (median taken)")
    parser.add_argument("--json", default=None, help="also write the per-folder means here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from evit_ros.network.classes import class_table, parse_class_masks
    from evit_ros.network.variants import get_variant
    from evit_ros.pipeline.segmenter import Segmenter

    weights = args.weights or (default_weights() if args.model == "b0-cityscapes" else None)
    try:
        masks = parse_class_masks(args.masks, class_table(get_variant(args.model).dataset)[0])
        size = None if args.size == "native" else tuple(int(v) for v in args.size.lower().split("x"))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sets = _frame_sets(args.folders, args.limit)
    if not sets or not all(sets.values()):
        print(
            f"error: no images in {', '.join(k for k, v in sets.items() if not v) or 'the test data'}", file=sys.stderr
        )
        return 2
    seg = Segmenter(args.model, weights, args.resolution, backend=args.backend, num_threads=args.num_threads or None)
    report = {}
    for folder, frames in sets.items():
        per_frame = []
        for path in frames:
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            native = image.shape[:2]
            if size is not None and native != size:
                image = cv2.resize(image, size[::-1], interpolation=cv2.INTER_CUBIC)
            per_frame.append(measure_frame(seg, image, masks, args.jpeg_quality, args.repeats))
        means = {
            out: {key: float(np.mean([f[out][key] for f in per_frame])) for key in ("bytes", "raw_bytes", "ms")}
            for out in per_frame[0]
        }
        shape = f"{image.shape[1]}x{image.shape[0]}"
        if size is not None and native != size:
            shape += f" (resized from {native[1]}x{native[0]})"
        report[folder] = {"frames": len(frames), "size": shape, "outputs": means}
        print(f"\n{folder}: {len(frames)} frames at {shape}, {seg.describe().get('backend', '')} {args.model}")
        print(f"{'output':<28}{'bytes/frame':>13}{'raw bytes':>12}{'ratio':>8}{'ms/frame':>10}")
        for out, m in means.items():
            ratio = f"{m['raw_bytes'] / m['bytes']:.0f}x" if m["bytes"] == m["bytes"] else "-"
            packed = f"{m['bytes']:.0f}" if m["bytes"] == m["bytes"] else "-"
            print(f"{out:<28}{packed:>13}{m['raw_bytes']:>12.0f}{ratio:>8}{m['ms']:>10.2f}")
    seg.close()
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
