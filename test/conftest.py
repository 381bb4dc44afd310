"""Shared test setup: real data location, and a private, loopback-only DDS domain per run."""

from __future__ import annotations

import importlib.util
import itertools
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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


# Environments without torch (`make test-jazzy`, `make test-py310`) get the official B0 exported by the main
# environment earlier in the same run: `b0-cityscapes_<H>x<W>.onnx` files in this folder (see the Makefile).
ONNX_DIR_ENV = "EVIT_ROS_TEST_ONNX_DIR"


def exported_b0(resolution: str) -> Path:
    """The B0 ONNX the main environment exported at ``resolution``, or skip the test that needs it."""
    folder = os.environ.get(ONNX_DIR_ENV)
    if not folder:
        pytest.skip(f"no torch to export the B0 checkpoint and {ONNX_DIR_ENV} is not set")
    path = Path(folder) / f"b0-cityscapes_{resolution}.onnx"
    if not path.is_file():
        pytest.skip(f"{path} was not exported (no real data in the main environment?)")
    return path


@pytest.fixture(scope="session")
def b0_onnx(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The official B0 at 512x1024 (logits head, batch 1): exported once per session through `evit-ros export`, or
    where torch is absent the file the main environment exported."""
    require("onnx")
    require("onnxruntime")
    if not has_module("torch"):
        return exported_b0("512x1024")
    from evit_ros.cli.main import main

    checkpoint = request.getfixturevalue("b0_checkpoint")
    out = tmp_path_factory.mktemp("onnx") / "b0_512x1024.onnx"
    args = ["export", "--model", "b0-cityscapes", "--weights", str(checkpoint), "--resolution", "512x1024"]
    assert main([*args, str(out)]) == 0
    return out


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def optional(module: str):
    """An optional dependency's module, or None where it is not installed (tests that need it get ``needs``)."""
    return importlib.import_module(module) if has_module(module) else None


def needs(module: str, why: str) -> pytest.MarkDecorator:
    """Skip the marked test where ``module`` is not installed, saying what it is needed for."""
    return pytest.mark.skipif(not has_module(module), reason=f"{module} is not installed ({why})")


needs_torch = needs("torch", "to run or export a checkpoint")


@dataclass(frozen=True)
class NodeModel:
    """The official B0 as this environment runs it: the checkpoint on torch, else the exported ONNX on ONNX
    Runtime (the same network: `evit-ros export` checks logit parity)."""

    weights: Path
    backend: str
    resolution: str

    def segmenter(self, **kwargs):
        """A Segmenter of this model, single-threaded as the tests' nodes run it."""
        from evit_ros.pipeline.segmenter import Segmenter

        kwargs.setdefault("num_threads", 1)
        return Segmenter("b0-cityscapes", self.weights, self.resolution, backend=self.backend, **kwargs)


@pytest.fixture(scope="session")
def b0_model(request: pytest.FixtureRequest):
    """``b0_model(resolution)``: the B0 at that resolution (any batch size), for a node or a Segmenter."""

    def model(resolution: str) -> NodeModel:
        if has_module("torch"):
            return NodeModel(request.getfixturevalue("b0_checkpoint"), "torch", resolution)
        require("onnxruntime")
        return NodeModel(exported_b0(resolution), "onnxruntime", resolution)

    return model


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
