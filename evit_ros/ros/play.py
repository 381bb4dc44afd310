"""Replay as a camera (``evit-ros play``, ``evit_play``): a folder of images, a video file or a rosbag2 recording.

    evit-ros play SOURCE --topic image [--rate HZ] [--speed X] [--loop] [--frame-id camera]
                  [--encoding bgr8|rgb8|mono8] [--qos-reliability reliable|best_effort] [--max-frames N]
                  [--start-delay S] [--wait-subscribers N] [--wait-timeout S] [--bag-topic TOPIC]

Sources:

* a folder: every image file in it (``.png``, ``.jpg``, ...), sorted by name, at 15 Hz unless ``--rate``;
* a video file (anything ``cv2.VideoCapture`` opens): at the file's frame rate unless ``--rate``;
* a rosbag2 recording (directory, ``.db3`` or ``.mcap``) read with :func:`evit_ros.bagio.iter_bag_frames`:
  ``--bag-topic`` picks the image topic (needed only when the bag has several); frames keep their original
  spacing (record time), unless ``--rate`` asks for a fixed rate. A recording cut off mid-write (an mcap file
  without its summary) plays up to the cut, and the player says so; a bag directory without ``metadata.yaml``
  plays from its storage files; one that cannot be read at all exits with one line saying why.

``--speed`` scales whichever timing applies (2 = twice as fast). Each message gets ``header.stamp = now()``
at publish time (the player is a live camera, not a clock replay) and ``header.frame_id``. Publishing is
driven by a timer against an absolute schedule (no drift); when reading a frame takes longer than the
period the schedule slips instead of bursting to catch up.

QoS: depth 1 (KEEP_LAST), volatile. Reliability defaults to **reliable**: REP-2003 recommends best effort
for sensor data, and the segmentation node subscribes best effort, but a reliable publisher matches both
best-effort and reliable subscribers (a best-effort one matches only best-effort ones), and with depth 1
it never blocks. ``--qos-reliability best_effort`` gives a REP-2003 sensor-data publisher.

``--wait-subscribers N`` waits (up to ``--wait-timeout`` s) until N subscriptions are matched before the
first frame (then waits a further 0.25 s, since the subscriber side may not have matched the publisher yet),
so demos and tests do not lose the first frames. A summary line (frames published, mean rate)
is printed at the end of a non-looping source, after ``--max-frames`` or on SIGINT/SIGTERM; the exit status
is then 0. A source that cannot be read exits with 1.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import rclpy
from rclpy.clock import Clock, ClockType
from rclpy.duration import Duration
from rclpy.exceptions import NameValidationException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from evit_ros.io.bagio import is_bag_path
from evit_ros.pipeline.processing import IMAGE_SUFFIXES, list_images
from evit_ros.ros.conversions import image_to_msg

DEFAULT_FOLDER_RATE = 15.0
MIN_TIMER_NS = 1_000
SETTLE_S = 0.25

__all__ = [
    "BagSource",
    "FolderSource",
    "ImagePlayer",
    "VideoSource",
    "open_source",
    "play",
    "schedule",
]


# --- sources (no ROS) ----------------------------------------------------------------------------------------


class FolderSource:
    """Image files of a folder, sorted by name, at ``DEFAULT_FOLDER_RATE``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.files = list_images(path)
        if not self.files:
            raise ValueError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}")
        self.rate = DEFAULT_FOLDER_RATE

    def describe(self) -> str:
        return f"folder {self.path} ({len(self.files)} images)"

    def iter_pass(self) -> Iterator[tuple[float, np.ndarray]]:
        for i, file in enumerate(self.files):
            bgr = cv2.imread(str(file), cv2.IMREAD_COLOR)
            if bgr is None:
                print(f"evit-ros play: skipping unreadable image {file}", file=sys.stderr)
                continue
            yield i / self.rate, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class VideoSource:
    """Frames of a video file, at the file's frame rate (15 Hz when the file does not say)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        capture = cv2.VideoCapture(str(path))
        try:
            if not capture.isOpened():
                raise ValueError(f"cannot open video {path}")
            fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
            ok, _ = capture.read()
            if not ok:
                raise ValueError(f"video {path} has no readable frame")
        finally:
            capture.release()
        self.rate = fps if math.isfinite(fps) and 0.0 < fps <= 1000.0 else DEFAULT_FOLDER_RATE

    def describe(self) -> str:
        return f"video {self.path} ({self.rate:g} fps)"

    def iter_pass(self) -> Iterator[tuple[float, np.ndarray]]:
        capture = cv2.VideoCapture(str(self.path))
        try:
            i = 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    return
                yield i / self.rate, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                i += 1
        finally:
            capture.release()


def _to_rgb(image: np.ndarray) -> np.ndarray:
    """Bag frames are RGB, or raw mono8/mono16 (H x W): show mono as grey (mono16 keeps its high byte)."""
    if image.ndim == 3:
        return image
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    return cv2.cvtColor(np.ascontiguousarray(image, dtype=np.uint8), cv2.COLOR_GRAY2RGB)


class BagSource:
    """One image topic of a rosbag2 recording, with the recorded spacing between frames."""

    rate = None  # timing comes from the recording

    def __init__(self, path: Path, topic: str | None) -> None:
        from evit_ros.io import bagio

        self.path = path
        self.health = bagio.BagHealth()
        topics = bagio.bag_topics(path, self.health)
        images = sorted(t for t, m in topics.items() if m in (bagio.IMAGE_MSGTYPE, bagio.COMPRESSED_MSGTYPE))
        if topic is None:
            if len(images) != 1:
                listed = ", ".join(images) or "none"
                raise ValueError(f"bag {path} has {len(images)} image topics ({listed}): choose one with --bag-topic")
            topic = images[0]
        elif topic not in topics:
            raise ValueError(f"topic {topic} is not in bag {path}; image topics: {', '.join(images) or 'none'}")
        elif topic not in images:
            raise ValueError(f"topic {topic} in bag {path} is a {topics[topic]}, not an image topic")
        self.topic = topic
        self._iter_frames = bagio.iter_bag_frames
        self._told = False

    def describe(self) -> str:
        flags = f" ({', '.join(self.health.flags)})" if self.health.flags else ""
        return f"bag {self.path} topic {self.topic}{flags}"

    def iter_pass(self) -> Iterator[tuple[float, np.ndarray]]:
        first: int | None = None
        count = 0
        for frame in self._iter_frames(self.path, [self.topic], self.health):
            first = frame.recv_ns if first is None else first
            count += 1
            yield (frame.recv_ns - first) / 1e9, _to_rgb(frame.image)
        if self.health.truncated and not self._told:
            self._told = True
            print(f"evit-ros play: {self.path} was cut off mid-recording: played the {count} frame(s) of "
                  f"{self.topic} before the cut", file=sys.stderr, flush=True)  # fmt: skip


Source = FolderSource | VideoSource | BagSource


def open_source(source: str | Path, bag_topic: str | None = None) -> Source:
    """The right reader for ``source``; ``ValueError``/``FileNotFoundError`` when it cannot be used."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"source not found: {path}")
    if is_bag_path(path):
        return BagSource(path, bag_topic)
    if bag_topic is not None:
        raise ValueError(f"--bag-topic given but {path} is not a rosbag2 recording")
    if path.is_dir():
        return FolderSource(path)
    return VideoSource(path)


def schedule(
    source: Source, rate: float | None = None, speed: float = 1.0, loop: bool = False
) -> Iterator[tuple[float, np.ndarray]]:
    """``(due_s, rgb)`` for every frame to publish, ``due_s`` counted from the first frame.

    ``rate`` (Hz) overrides the source's own timing; ``speed`` divides the times. With ``loop`` the source
    restarts one mean frame interval after its last frame.
    """
    index = 0
    base = 0.0
    while True:
        count, last = 0, 0.0
        for offset, image in source.iter_pass():
            due = index / rate if rate else base + offset
            yield due / speed, image
            index += 1
            count += 1
            last = offset
        if not loop or count == 0:
            return
        if not rate:
            base += last + (last / (count - 1) if count > 1 and last > 0 else 1.0 / DEFAULT_FOLDER_RATE)


# --- ROS ------------------------------------------------------------------------------------------------------


class ImagePlayer(Node):
    """Publishes ``frames`` (``(due_s, rgb)`` pairs) as ``sensor_msgs/Image`` on ``topic``.

    Call :meth:`start` once ready (e.g. after subscribers matched); spin until :attr:`done`.
    """

    def __init__(
        self,
        frames: Iterator[tuple[float, np.ndarray]],
        topic: str = "image",
        frame_id: str = "camera",
        encoding: str = "bgr8",
        reliability: str = "reliable",
        max_frames: int = 0,
        node_name: str = "evit_player",
        context: rclpy.Context | None = None,
    ) -> None:
        super().__init__(node_name, context=context)
        policy = ReliabilityPolicy.RELIABLE if reliability == "reliable" else ReliabilityPolicy.BEST_EFFORT
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=1, reliability=policy, durability=DurabilityPolicy.VOLATILE
        )
        self.publisher = self.create_publisher(Image, topic, qos)
        self.reliable = policy == ReliabilityPolicy.RELIABLE
        self.frame_id = frame_id
        self.encoding = encoding
        self.max_frames = max_frames
        self.published = 0
        self.first_publish: float | None = None
        self.last_publish: float | None = None
        self.done = False
        self._frames = frames
        self._next = next(self._frames, None)
        self._t0 = 0.0
        self._timer = None
        self._steady = Clock(clock_type=ClockType.STEADY_TIME)
        if self._next is None:
            self.done = True

    def start(self) -> None:
        """Publish the first frame now and the others on schedule."""
        if self.done or self._timer is not None:
            return
        self._t0 = time.monotonic() - self._next[0]
        self._timer = self.create_timer(MIN_TIMER_NS / 1e9, self._on_timer, clock=self._steady)

    def subscription_count(self) -> int:
        return self.publisher.get_subscription_count()

    def _on_timer(self) -> None:
        if self.done or self._next is None:
            return
        _, image = self._next
        header = Header(frame_id=self.frame_id, stamp=self.get_clock().now().to_msg())
        self.publisher.publish(image_to_msg(image, self.encoding, header))
        now = time.monotonic()
        self.first_publish = now if self.first_publish is None else self.first_publish
        self.last_publish = now
        self.published += 1
        if self.max_frames and self.published >= self.max_frames:
            self._finish()
            return
        self._next = next(self._frames, None)  # read/decode the next frame while waiting for its turn
        if self._next is None:
            self._finish()
            return
        delay = self._t0 + self._next[0] - time.monotonic()
        if delay < 0:  # late (slow reader): slip the schedule rather than burst
            self._t0 -= delay
            delay = 0.0
        self._timer.timer_period_ns = max(MIN_TIMER_NS, int(delay * 1e9))
        self._timer.reset()

    def _finish(self) -> None:
        self.done = True
        if self._timer is not None:
            self._timer.cancel()

    def summary(self) -> str:
        span = (self.last_publish or 0.0) - (self.first_publish or 0.0)
        rate = (self.published - 1) / span if self.published > 1 and span > 0 else 0.0
        return (
            f"evit-ros play: published {self.published} frames to {self.publisher.topic_name} "
            f"in {span:.2f} s ({rate:.2f} Hz)"
        )


def _spin_once(executor: SingleThreadedExecutor, timeout: float) -> None:
    """One executor turn; ``ExternalShutdownException`` once SIGINT/SIGTERM has shut the context down."""
    context = executor.context
    if not context.ok():
        raise ExternalShutdownException()
    try:
        executor.spin_once(timeout_sec=timeout)
    except _rclpy.RCLError:  # the context went away during the call (signal race): that is a shutdown too
        if context.ok():
            raise
        raise ExternalShutdownException() from None


def _spin_for(executor: SingleThreadedExecutor, seconds: float, until=None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until and until()):
        _spin_once(executor, min(0.05, max(0.0, deadline - time.monotonic())))


def play(
    source_path: str | Path,
    topic: str = "image",
    rate: float | None = None,
    speed: float = 1.0,
    loop: bool = False,
    frame_id: str = "camera",
    encoding: str = "bgr8",
    reliability: str = "reliable",
    max_frames: int = 0,
    start_delay: float = 0.0,
    wait_subscribers: int = 0,
    wait_timeout: float = 10.0,
    bag_topic: str | None = None,
    ros_args: Sequence[str] | None = None,
) -> int:
    """Publish ``source_path`` as a camera until it ends, ``max_frames`` or a signal; returns the exit status."""
    try:
        source = open_source(source_path, bag_topic)
        frames = schedule(source, rate=rate, speed=speed, loop=loop)
    except (OSError, ValueError, ImportError) as exc:
        print(f"evit-ros play: {exc}", file=sys.stderr)
        return 1

    context = rclpy.Context()
    # SIGINT and SIGTERM shut the context down, which ends the spin loop below (clean exit, summary printed).
    rclpy.init(
        args=list(ros_args) if ros_args is not None else None,
        context=context,
        signal_handler_options=SignalHandlerOptions.ALL,
    )
    executor = SingleThreadedExecutor(context=context)
    player = None
    status = 0
    try:
        player = ImagePlayer(
            frames,
            topic=topic,
            frame_id=frame_id,
            encoding=encoding,
            reliability=reliability,
            max_frames=max_frames,
            context=context,
        )
        executor.add_node(player)
        log = player.get_logger()
        log.info(f"playing {source.describe()} on {player.publisher.topic_name} ({encoding})")
        if wait_subscribers:
            _spin_for(executor, wait_timeout, lambda: player.subscription_count() >= wait_subscribers)
            if player.subscription_count() < wait_subscribers:
                log.warning(
                    f"only {player.subscription_count()} of {wait_subscribers} subscribers matched "
                    f"after {wait_timeout:g} s; starting anyway"
                )
            else:  # discovery is not symmetric: give the subscribers a moment to match this publisher too
                _spin_for(executor, SETTLE_S)
        if start_delay:
            _spin_for(executor, start_delay)
        player.start()
        while not player.done:
            _spin_once(executor, 0.1)
        # Let the last frame reach the subscribers before the publisher goes away.
        if player.reliable:
            player.publisher.wait_for_all_acked(Duration(seconds=2))
        else:
            _spin_for(executor, 0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except _rclpy.RCLError:
        if context.ok():  # a real failure, not the signal race
            raise
    except (ValueError, NameValidationException) as exc:  # e.g. an invalid --topic, or an unreadable bag frame
        print(f"evit-ros play: {exc}", file=sys.stderr)
        status = 1
    finally:
        if player is not None:
            print(player.summary(), flush=True)
            executor.remove_node(player)
            player.destroy_node()
        executor.shutdown()
        context.try_shutdown()
    return status


if __name__ == "__main__":  # `python -m evit_ros.ros.play`, the older name of `evit-ros play` / `evit_play`
    import runpy

    runpy.run_module("evit_ros.cli.play", run_name="__main__", alter_sys=True)
