"""`evit-ros predict`: segment every image in a folder, writing class-id PNGs (and optionally logits, overlays)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from evit_ros.cli.common import add_frame_path_argument, add_model_arguments, segmenter_from_args
from evit_ros.pipeline.processing import list_images, overlay


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_frame_path_argument(parser)
    parser.add_argument(
        "--save-logits", action="store_true", help="also write <stem>.npy: float32 C x H/8 x W/8 logits"
    )
    parser.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity")
    parser.add_argument("input_dir", type=Path)
    parser.add_argument("output_dir", type=Path)


def run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if not args.input_dir.is_dir():
        print(f"evit-ros predict: input folder not found: {args.input_dir}", file=sys.stderr)
        return 2
    images = list_images(args.input_dir)
    if not images:
        print(f"evit-ros predict: no images in {args.input_dir}", file=sys.stderr)
        return 2
    try:
        seg = segmenter_from_args(args)
    except ValueError as exc:  # a refused combination (frame_path device with a CPU backend, a bad precision)
        print(f"evit-ros predict: {exc}", file=sys.stderr)
        return 2
    args.output_dir.mkdir(parents=True, exist_ok=True)
    palette_bgr = np.ascontiguousarray(seg.palette[:, ::-1])
    done, failed, busy = 0, 0, 0.0
    for path in tqdm(images, desc="predict", unit="img"):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            tqdm.write(f"skipping {path.name}: not a readable image")
            failed += 1
            continue
        start = time.perf_counter()
        result = seg.segment(image, order="bgr", return_logits=args.save_logits)
        busy += time.perf_counter() - start
        cv2.imwrite(str(args.output_dir / f"{path.stem}.png"), result.labels)
        if args.save_logits:
            np.save(args.output_dir / f"{path.stem}.npy", result.logits.astype(np.float32))
        if args.overlay:
            cv2.imwrite(
                str(args.output_dir / f"{path.stem}_overlay.png"),
                overlay(image, result.labels, palette_bgr, args.alpha),
            )
        done += 1
    rate = done / busy if busy > 0 else 0.0
    info = seg.describe()
    print(
        f"predicted {done} image(s), {failed} skipped, {rate:.2f} images/s "
        f"({info['model']} {info['resolution']} {info['backend']} {info['precision']}) -> {args.output_dir}"
    )
    return 0 if failed == 0 else 1
