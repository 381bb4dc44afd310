"""A small fleet of recordings made from real CamVid frames, shared by the multi-source and Ray tests."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

import evit_ros
from evit_ros.io.bagio import ImageBagWriter

CAMVID_MAP = Path(evit_ros.__file__).parent / "data" / "cityscapes_to_camvid11.yaml"
SIZE = (120, 160)  # H, W of the bag frames: small, so the tests stay cheap
RESOLUTION = "128x160"  # network input
FRAMES_PER_BAG = 3
BAGS = 6
T0 = 1_700_000_000 * 10**9
SPACING_NS = 66_666_667  # 15 Hz
CAMERA, GT, LABELS = "/camera/image", "/gt/labels", "/segmentation/labels"


def latency_ns(bag: int, frame: int) -> int:
    """Distinct per-frame latencies, below the frame spacing so record order equals write order."""
    return (15 + 4 * bag + frame) * 1_000_000 + 17


def load_frames(camvid_pairs: list[tuple[Path, Path]], n: int, size: tuple[int, int] = SIZE) -> list[dict]:
    """RGB + ground truth of the first n CamVid frames, shrunk to ``size`` (labels by nearest neighbour)."""
    out = []
    for image, label in camvid_pairs[:n]:
        rgb = cv2.cvtColor(cv2.imread(str(image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        gt = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
        if rgb.shape[:2] != size:
            rgb = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            gt = cv2.resize(gt, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        out.append({"rgb": rgb, "gt": gt})
    return out


def predict(frames: list[dict], model) -> None:
    """Adds the real B0 prediction of every frame (what a node on the robot would have published); ``model`` is
    conftest's ``b0_model(RESOLUTION)``."""
    seg = model.segmenter()
    for f in frames:
        f["pred"] = seg.segment(f["rgb"], order="rgb").labels
    seg.close()


def write_bag(path: Path, storage: str, frames: list[dict], bag: int = 0, with_labels: bool = True) -> list[int]:
    """A recording of camera, ground truth and (optionally) the node's labels; returns the frame stamps."""
    stamps = []
    with ImageBagWriter(path, storage=storage) as writer:
        for k, f in enumerate(frames):
            stamp = T0 + (bag * 100 + k) * SPACING_NS
            writer.write(CAMERA, f["rgb"], "rgb8", stamp)
            writer.write(GT, f["gt"], "mono8", stamp, recv_ns=stamp + 1000)
            if with_labels:
                writer.write(LABELS, f["pred"].astype(np.uint8), "mono8", stamp, recv_ns=stamp + latency_ns(bag, k))
            stamps.append(stamp)
    return stamps


def write_fleet(root: Path, frames: list[dict], bags: int = BAGS) -> list[Path]:
    """``bags`` recordings of FRAMES_PER_BAG consecutive frames each, alternating sqlite3 and mcap."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for b in range(bags):
        storage = "sqlite3" if b % 2 == 0 else "mcap"
        path = root / f"drive_{b:02d}_{storage}"
        write_bag(path, storage, frames[b * FRAMES_PER_BAG : (b + 1) * FRAMES_PER_BAG], bag=b)
        paths.append(path)
    return paths
