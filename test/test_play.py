"""`evit-ros play` end to end: the player runs in a subprocess, a real rclpy node here receives over DDS."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import needs

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from evit_ros.ros.conversions import msg_to_rgb  # noqa: E402
from evit_ros.ros.play import FolderSource, open_source, schedule  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
N_FRAMES = 5


# --- fixtures -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ros():
    """One rclpy context and listener node for the module."""
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(f"evit_play_test_{uuid.uuid4().hex[:8]}", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    yield node, executor
    executor.remove_node(node)
    node.destroy_node()
    executor.shutdown()
    context.try_shutdown()


@pytest.fixture(scope="module")
def frames_rgb(camvid_pairs: list[tuple[Path, Path]]) -> list[np.ndarray]:
    out = []
    for image, _ in camvid_pairs[:N_FRAMES]:
        bgr = cv2.imread(str(image), cv2.IMREAD_COLOR)
        assert bgr is not None
        out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, frames_rgb: list[np.ndarray]) -> Path:
    path = tmp_path_factory.mktemp("frames")
    for i, rgb in enumerate(frames_rgb):
        assert cv2.imwrite(str(path / f"frame_{i:03d}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    (path / "notes.txt").write_text("not an image: must be ignored\n")
    return path


# --- helpers --------------------------------------------------------------------------------------------------


def player_env() -> dict[str, str]:
    env = dict(os.environ)  # keeps ROS_DOMAIN_ID, localhost-only discovery, AMENT_PREFIX_PATH, RMW
    assert env.get("ROS_LOCALHOST_ONLY") == "1" and env.get("ROS_AUTOMATIC_DISCOVERY_RANGE") == "LOCALHOST"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_player(*args: str, module: str = "evit_ros.cli.play") -> subprocess.Popen:
    prefix = ["play"] if module == "evit_ros.cli.main" else []
    return subprocess.Popen(
        [sys.executable, "-m", module, *prefix, *args],
        env=player_env(),
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def unique_topic() -> str:
    return f"/evit_play_test/t{uuid.uuid4().hex[:10]}/image"


def receive(
    ros,
    topic: str,
    proc: subprocess.Popen,
    expected: int,
    reliable: bool = True,
    timeout: float = 40.0,
    stop_after: int | None = None,
    signum: int = signal.SIGINT,
) -> tuple[list[tuple[Image, float]], int, str, str]:
    """Collect (message, arrival time) until the player exits (or ``stop_after`` frames: then signal it)."""
    node, executor = ros
    received: list[tuple[Image, float]] = []
    qos = QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max(10, expected),
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
    )
    sub = node.create_subscription(Image, topic, lambda m: received.append((m, time.monotonic())), qos)
    interrupted = False
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
            if stop_after is not None and not interrupted and len(received) >= stop_after:
                proc.send_signal(signum)
                interrupted = True
            if proc.poll() is not None:
                break
        # the last frame may still be in flight when the player exits
        settle = time.monotonic() + 1.0
        while time.monotonic() < settle and len(received) < expected:
            executor.spin_once(timeout_sec=0.05)
    finally:
        node.destroy_subscription(sub)
        if proc.poll() is None:
            proc.kill()
    out, err = proc.communicate(timeout=10)
    return received, proc.returncode, out, err


def stamp_s(msg: Image) -> float:
    return msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9


def match_index(rgb: np.ndarray, frames: list[np.ndarray]) -> int:
    errors = [np.abs(rgb.astype(np.int16) - f).mean() for f in frames]
    return int(np.argmin(errors))


def check_stream(received: list[tuple[Image, float]], frames: list[np.ndarray], encoding: str = "bgr8") -> None:
    h, w = frames[0].shape[:2]
    for msg, _ in received:
        assert (msg.height, msg.width, msg.encoding) == (h, w, encoding)
        assert msg.step == w * (1 if encoding == "mono8" else 3) and len(msg.data) == msg.step * h
        assert msg.header.frame_id == "camera"
    stamps = [stamp_s(m) for m, _ in received]
    assert all(b > a for a, b in zip(stamps, stamps[1:], strict=False)), stamps
    assert abs(stamps[-1] - time.time()) < 60  # proper wall-clock stamps, not zeros or recorded times


# --- pure parts (no ROS traffic) --------------------------------------------------------------------------------


def test_folder_source_and_schedule(folder: Path, frames_rgb: list[np.ndarray]) -> None:
    source = open_source(folder)
    assert isinstance(source, FolderSource) and len(source.files) == N_FRAMES  # notes.txt ignored
    planned = list(schedule(source))
    assert [round(t, 6) for t, _ in planned] == [round(i / 15, 6) for i in range(N_FRAMES)]
    for (_, rgb), ref in zip(planned, frames_rgb, strict=True):
        np.testing.assert_array_equal(rgb, ref)
    looped = schedule(source, rate=10, speed=2, loop=True)
    first = [next(looped) for _ in range(2 * N_FRAMES + 1)]
    assert [round(t, 6) for t, _ in first] == [round(i / 20, 6) for i in range(2 * N_FRAMES + 1)]
    np.testing.assert_array_equal(first[N_FRAMES][1], frames_rgb[0])


def test_open_source_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="source not found"):
        open_source(tmp_path / "missing")
    with pytest.raises(ValueError, match="no image files"):
        open_source(tmp_path)
    (tmp_path / "clip.avi").write_bytes(b"not a video at all")
    with pytest.raises(ValueError, match="video"):
        open_source(tmp_path / "clip.avi")
    with pytest.raises(ValueError, match="not a rosbag2 recording"):
        open_source(tmp_path, bag_topic="/camera")


# --- over DDS ---------------------------------------------------------------------------------------------------


def test_play_folder(ros, folder: Path, frames_rgb: list[np.ndarray]) -> None:
    topic = unique_topic()
    proc = start_player(str(folder), "--topic", topic, "--rate", "20", "--wait-subscribers", "1")
    received, rc, out, err = receive(ros, topic, proc, N_FRAMES)
    assert rc == 0, err
    assert len(received) == N_FRAMES, (len(received), out, err)
    check_stream(received, frames_rgb)
    for i, (msg, _) in enumerate(received):
        np.testing.assert_array_equal(msg_to_rgb(msg), frames_rgb[i])  # in order, lossless, RGB not swapped
    assert f"published {N_FRAMES} frames" in out
    span = stamp_s(received[-1][0]) - stamp_s(received[0][0])
    assert span > 0.8 * (N_FRAMES - 1) / 20, span  # paced at 20 Hz, not all at once (load only delays)


def test_play_loop_max_frames_rgb8_best_effort(ros, folder: Path, frames_rgb: list[np.ndarray]) -> None:
    topic = unique_topic()
    total = N_FRAMES + 3
    proc = start_player(
        str(folder), "--topic", topic, "--rate", "15", "--loop", "--max-frames", str(total),
        "--encoding", "rgb8", "--qos-reliability", "best_effort", "--wait-subscribers", "1",
    )  # fmt: skip
    received, rc, out, err = receive(ros, topic, proc, total, reliable=False)
    assert rc == 0, err
    assert f"published {total} frames" in out
    # Best effort over loopback may in principle drop a frame: require nearly all, and the exact order.
    assert len(received) >= total - 1, (len(received), out, err)
    check_stream(received, frames_rgb, encoding="rgb8")
    order = [match_index(msg_to_rgb(m), frames_rgb) for m, _ in received]
    expected = [i % N_FRAMES for i in range(total)]
    it = iter(enumerate(expected))
    positions = [next(j for j, x in it if x == o) for o in order]  # StopIteration: out of order
    assert positions == sorted(positions) and positions[-1] >= total - 2, (order, positions)
    assert order.count(0) >= 2  # wrapped round


def test_play_video_via_cli(ros, tmp_path: Path, frames_rgb: list[np.ndarray]) -> None:
    video = tmp_path / "clip.avi"
    h, w = frames_rgb[0].shape[:2]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    assert writer.isOpened()
    for rgb in frames_rgb:
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    topic = unique_topic()
    proc = start_player(str(video), "--topic", topic, "--wait-subscribers", "1", module="evit_ros.cli.main")
    received, rc, out, err = receive(ros, topic, proc, N_FRAMES)
    assert rc == 0, err
    assert len(received) == N_FRAMES, (len(received), out, err)
    check_stream(received, frames_rgb)
    for i, (msg, _) in enumerate(received):
        rgb = msg_to_rgb(msg)
        assert match_index(rgb, frames_rgb) == i
        assert np.abs(rgb.astype(np.int16) - frames_rgb[i]).mean() < 6.0  # MJPG is lossy
    span = stamp_s(received[-1][0]) - stamp_s(received[0][0])
    assert span > 0.8 * (N_FRAMES - 1) / 10, span  # the file's 10 fps, not the folder default of 15


def test_play_bag_keeps_recorded_timing(ros, tmp_path: Path, frames_rgb: list[np.ndarray]) -> None:
    bagio = pytest.importorskip("evit_ros.io.bagio")
    pytest.importorskip("rosbags")
    gaps_s = [0.0, 0.1, 0.5, 0.6, 1.0]  # uneven on purpose
    t0 = 1_700_000_000 * 10**9
    bag = tmp_path / "bag"
    with bagio.ImageBagWriter(bag) as writer:
        for rgb, gap in zip(frames_rgb, gaps_s, strict=True):
            stamp = t0 + int(gap * 1e9)
            writer.write("/camera/image_raw", rgb, "rgb8", stamp_ns=stamp)
            writer.write("/camera/labels", np.zeros(rgb.shape[:2], np.uint8), "mono8", stamp_ns=stamp)
    # two image topics: the player must be told which one
    with pytest.raises(ValueError, match="--bag-topic"):
        open_source(bag)
    topic = unique_topic()
    proc = start_player(str(bag), "--topic", topic, "--bag-topic", "/camera/image_raw", "--wait-subscribers", "1")
    received, rc, out, err = receive(ros, topic, proc, N_FRAMES)
    assert rc == 0, err
    assert len(received) == N_FRAMES, (len(received), out, err)
    check_stream(received, frames_rgb)
    for i, (msg, _) in enumerate(received):
        np.testing.assert_array_equal(msg_to_rgb(msg), frames_rgb[i])
    stamps = [stamp_s(m) for m, _ in received]
    assert stamps[0] > t0 / 1e9 + 1e6  # restamped at publish time, not the recorded stamp
    offsets = [s - stamps[0] for s in stamps]
    # The schedule is absolute: a frame is never early; a loaded machine can only make it late.
    for got, want in zip(offsets, gaps_s, strict=True):
        assert got > want - 0.02, (offsets, gaps_s)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_play_signal_exits_cleanly(ros, folder: Path, frames_rgb: list[np.ndarray], signum: int) -> None:
    topic = unique_topic()
    proc = start_player(str(folder), "--topic", topic, "--rate", "10", "--loop", "--wait-subscribers", "1")
    started = time.monotonic()
    received, rc, out, err = receive(ros, topic, proc, 3, stop_after=3, timeout=30, signum=signum)
    assert len(received) >= 3
    assert rc == 0, (rc, err)
    assert time.monotonic() - started < 25
    assert "published" in out and "Traceback" not in err  # the summary is printed on the way out
    check_stream(received, frames_rgb)


def test_play_bad_source_or_topic_fails_clearly(tmp_path: Path, folder: Path) -> None:
    proc = start_player(str(tmp_path / "nothing_here"))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "source not found" in err and "Traceback" not in err
    proc = start_player(str(folder), "--topic", "/9bad topic")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "Invalid topic name" in err and "Traceback" not in err


def test_play_truncated_bag_plays_to_the_cut(ros, tmp_path: Path, frames_rgb: list[np.ndarray]) -> None:
    """A recording cut off mid-write (no mcap summary) plays the frames before the cut, and says so."""
    bagio = pytest.importorskip("evit_ros.io.bagio")
    pytest.importorskip("rosbags")
    pytest.importorskip("mcap")
    bag = tmp_path / "cut"
    with bagio.ImageBagWriter(bag, storage="mcap") as writer:
        for i, rgb in enumerate(frames_rgb):  # full-size CamVid frames: one 1 MiB mcap chunk per two frames
            writer.write("/camera/image_raw", rgb, "rgb8", stamp_ns=1_000_000_000 + i * 50_000_000)
    storage = bag / "cut.mcap"
    storage.write_bytes(storage.read_bytes()[: storage.stat().st_size * 3 // 5])
    before_cut = len(list(bagio.iter_bag_frames(bag)))
    assert 0 < before_cut < N_FRAMES
    topic = unique_topic()
    proc = start_player(str(bag), "--topic", topic, "--wait-subscribers", "1")
    received, rc, out, err = receive(ros, topic, proc, before_cut)
    assert rc == 0 and "Traceback" not in err, err
    assert f"cut off mid-recording: played the {before_cut} frame(s)" in err
    assert len(received) == before_cut
    for i, (msg, _) in enumerate(received):
        np.testing.assert_array_equal(msg_to_rgb(msg), frames_rgb[i])


@needs("rosbags", "to read bags; without it play says so in one line")
def test_play_unreadable_bag_fails_in_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.mcap"
    broken.write_bytes(b"\x89MCAP0\r\n" + b"\x01" * 20)
    proc = start_player(str(broken))
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evit-ros play: ") and "broken.mcap" in lines[0], err
