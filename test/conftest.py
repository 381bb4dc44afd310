"""Shared test setup: real data location, and a private, loopback-only DDS domain per run."""

from __future__ import annotations

import itertools
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

# DDS must stay on this machine, and parallel runs must not see each other's topics. These are
# read when rclpy initialises, so they are set before any test imports it.
os.environ.setdefault("ROS_DOMAIN_ID", str(random.SystemRandom().randint(1, 100)))
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_LOCALHOST_ONLY", "1")
os.environ.setdefault("AMENT_PREFIX_PATH", sys.prefix)
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
# Ray clusters started by tests stay on 127.0.0.1 (Ray then takes loopback as the node address) and send no
# usage statistics; set before any test starts one.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path | None:
    """Real test data: $EVIT_ROS_TEST_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("EVIT_ROS_TEST_DATA")
    path = Path(env) if env else REPO_ROOT.parent / "shared" / "data"
    return path if path.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = data_dir()
    if path is None:
        pytest.skip("real test data not found (set EVIT_ROS_TEST_DATA or provide ../shared/data)")
    return path


@pytest.fixture(scope="session")
def b0_checkpoint(shared_data: Path) -> Path:
    path = shared_data / "weights" / "efficientvit_seg_b0_cityscapes.pt"
    if not path.is_file():
        pytest.skip(f"official B0 checkpoint not found at {path}")
    return path


@pytest.fixture(scope="session")
def camvid_pairs(shared_data: Path) -> list[tuple[Path, Path]]:
    """CamVid val (image, label) pairs in sequence order."""
    root = shared_data / "camvid"
    names = [
        line.split()[0]
        for line in (root / "val_sequence.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return [(root / "val" / n, root / "valannot" / n) for n in names]


def require(module: str):
    """Import an optional dependency or skip the test that needs it."""
    return pytest.importorskip(module, reason=f"{module} is not installed")


@pytest.fixture(scope="session")
def b0_onnx(b0_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official B0 exported once per session at 512x1024 (logits head) through `evit-ros export`."""
    require("onnx")
    require("onnxruntime")
    from evit_ros.cli.main import main

    out = tmp_path_factory.mktemp("onnx") / "b0_512x1024.onnx"
    args = ["export", "--model", "b0-cityscapes", "--weights", str(b0_checkpoint), "--resolution", "512x1024"]
    assert main([*args, str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def real_frames(shared_data: Path) -> list[Path]:
    """Two real Cityscapes frames (2048x1024) and two CamVid frames (480x360)."""
    city = sorted((shared_data / "cityscapes" / "fullres_unlabeled").glob("frankfurt_*.png"))[:2]
    camvid = sorted((shared_data / "camvid" / "val").glob("*.png"))[:2]
    frames = city + camvid
    if len(frames) < 4:
        pytest.skip("real frames missing from the shared data")
    return frames


# ---------------------------------------------------------------------------------------- ROS test helpers
def wait_until(predicate: Callable[[], object], timeout: float, step: float = 0.01) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` s have passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


_stamps = itertools.count(1)


def stamp(msg, frame_id: str = "camera_front") -> int:
    """Give ``msg`` a unique, current header stamp and ``frame_id``; returns the stamp in ns."""
    now = time.time_ns() + next(_stamps)
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(now, 1_000_000_000)
    msg.header.frame_id = frame_id
    return now


def stamp_ns(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec
