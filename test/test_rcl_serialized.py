"""rcl's serialized publish and take over real DDS: every ImagePublisher path delivers exactly the message
array_to_msg describes, and SerializedSubscription hands over exactly what was sent, in buffers that stay valid
while viewed and are freed after."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")
from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from evit_ros.ros.conversions import array_to_msg, image_from_cdr, labels_to_msg  # noqa: E402
from evit_ros.ros.image_publisher import PUBLISH_PATHS, ImagePublisher, publish_path  # noqa: E402
from evit_ros.ros.rcl_serialized import SerializedSubscription  # noqa: E402

QOS = QoSProfile(depth=64, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)


class _Graph:
    """One context and node with an executor; ``received`` collects what a subscription delivers."""

    def __init__(self, name: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.received: list = []

    def matched_publisher(self, topic: str) -> rclpy.publisher.Publisher:
        pub = self.node.create_publisher(Image, topic, QOS)
        deadline = time.monotonic() + 10
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
        assert pub.get_subscription_count() == 1, "the subscription was not matched"
        return pub

    def wait_for(self, count: int) -> list:
        deadline = time.monotonic() + 20
        while len(self.received) < count and time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
        return self.received

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def graph():
    """An rclpy subscription recording ``images`` messages; a way to make matched publishers and to wait."""
    g = _Graph("image_publisher_test")
    g.node.create_subscription(Image, "images", g.received.append, QOS)
    yield (lambda: g.matched_publisher("images")), g.wait_for
    g.close()


def _cases() -> list[tuple[np.ndarray, str, Header]]:
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    labels16 = rng.integers(0, 1000, (9, 11), dtype=np.uint16)
    depth = rng.random((5, 6), dtype=np.float32)
    return [
        (rgb[:, :, ::-1], "bgr8", Header(stamp=Time(sec=1_700_000_001, nanosec=5), frame_id="cam")),  # strided view
        (rgb[3:20, 7:40], "rgb8", Header(frame_id="")),  # a crop: rows not packed
        (labels16, "mono16", Header(frame_id="abc")),
        (depth, "32FC1", Header(frame_id="x" * 7)),
        (rgb[:, :, 0], "mono8", Header(frame_id="left_camera")),
    ]


@pytest.mark.parametrize("path", PUBLISH_PATHS)
def test_every_path_delivers_the_message_array_to_msg_describes(graph, path):
    make_publisher, wait_for = graph
    images = ImagePublisher(make_publisher(), path)
    assert images.path == path
    cases = _cases()
    for pixels, encoding, header in cases:
        images.publish(pixels, encoding, header)
    label_maps = [
        np.arange(12, dtype=np.uint8).reshape(3, 4),
        np.arange(70, dtype=np.uint8).reshape(7, 10)[1:6, 2:9],  # a crop: rows not packed
        np.arange(0, 6000, 100, dtype=np.uint16).reshape(6, 10)[:, ::2],  # every other column
    ]
    for labels in label_maps:
        images.publish_labels(labels, Header(frame_id="labels"))
    received = wait_for(len(cases) + len(label_maps))
    expected = [array_to_msg(p, e, h) for p, e, h in cases]
    expected += [labels_to_msg(labels, Header(frame_id="labels")) for labels in label_maps]
    assert len(received) == len(expected)
    for got, want in zip(received, expected, strict=True):
        assert got == want, f"{path}: {want.encoding} {want.height}x{want.width} differs"


@pytest.mark.parametrize("path", PUBLISH_PATHS)
def test_a_loaned_image_is_published_as_filled_and_stays_readable_until_the_next(graph, path):
    make_publisher, wait_for = graph
    images = ImagePublisher(make_publisher(), path)
    rng = np.random.default_rng(3)
    first = rng.integers(0, 1000, (9, 11), dtype=np.uint16)
    second = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    with images.loan(first.shape, np.uint16, "mono16", Header(frame_id="a")) as into:
        assert into.shape == first.shape and into.dtype == np.dtype("<u2") and into.flags.writeable
        into[:] = first
    assert np.array_equal(into, first), "the loaned array changed after its publish"
    kept = into
    with pytest.raises(RuntimeError, match="failed while filling"):
        with images.loan(second.shape, np.uint8, "bgr8", Header(frame_id="not sent")) as into:
            into[:] = 0
            raise RuntimeError("failed while filling")
    with images.loan(second.shape, np.uint8, "bgr8", Header(frame_id="b")) as into:
        np.copyto(into, second)
    received = wait_for(2)
    assert [m.header.frame_id for m in received] == ["a", "b"], "a loan left by an exception must not be published"
    assert received[0] == labels_to_msg(first, Header(frame_id="a"))
    assert received[1] == array_to_msg(second, "bgr8", Header(frame_id="b"))
    if path == "rcl":  # the message's own buffer: the next loan reuses it
        assert np.shares_memory(kept, into)
    with pytest.raises(ValueError, match="empty or not 2-D"):
        with images.loan((0, 4), np.uint8, "mono8"):
            pass


def test_the_reused_buffer_is_free_again_once_publish_returns(graph):
    """Large then small then large images through one buffer: each arrives as it was when published."""
    make_publisher, wait_for = graph
    images = ImagePublisher(make_publisher(), "rcl")
    frames = [np.full((480, 640, 3), value, np.uint8) for value in (11, 22)]
    frames.insert(1, np.full((8, 8, 3), 33, np.uint8))
    for index, frame in enumerate(frames):
        images.publish(frame, "bgr8", Header(frame_id=str(index)))
        frame[:] = 0  # the caller's array is free to change too
    received = wait_for(3)
    assert [m.header.frame_id for m in received] == ["0", "1", "2"]
    for msg, value in zip(received, (11, 33, 22), strict=True):
        assert np.all(np.frombuffer(msg.data, np.uint8) == value)


def test_threads_sharing_one_publisher_do_not_mix_their_images(graph):
    make_publisher, wait_for = graph
    images = ImagePublisher(make_publisher(), "rcl")

    def send(value: int) -> None:
        for _ in range(8):
            images.publish(np.full((120, 160, 3), value, np.uint8), "bgr8", Header(frame_id=str(value)))

    threads = [threading.Thread(target=send, args=(value,)) for value in (50, 200)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    received = wait_for(16)
    assert len(received) == 16
    for msg in received:
        assert np.all(np.frombuffer(msg.data, np.uint8) == int(msg.header.frame_id))


def test_this_platform_publishes_through_rcl_unless_turned_off():
    """Here (Linux, rclpy exposing its rcl pointers, Fast DDS) the direct path is taken; the switch turns it off."""
    assert publish_path() == "rcl"
    code = "from evit_ros.ros.image_publisher import publish_path; print(publish_path())"
    env = {**os.environ, "EVIT_ROS_DIRECT_RCL": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "serialized"


def test_bad_arguments_are_refused(graph):
    make_publisher, _ = graph
    with pytest.raises(ValueError, match="unknown publish path"):
        ImagePublisher(make_publisher(), "shared_memory")
    images = ImagePublisher(make_publisher(), "rcl")
    with pytest.raises(ValueError, match="empty or not 2-D"):
        images.publish(np.zeros((0, 4, 3), np.uint8), "bgr8")
    with pytest.raises(ValueError, match="uint8 or uint16"):
        images.publish_labels(np.zeros((4, 4), np.int32))


@pytest.fixture
def direct_graph():
    """A SerializedSubscription on 'frames' (its views kept in ``received``) and a matched publisher."""
    g = _Graph("serialized_subscription_test")
    subscription = SerializedSubscription(g.node, Image, "frames", g.received.append, QOS)
    yield g.matched_publisher("frames"), subscription, g.received, g.wait_for
    subscription.destroy()
    g.close()


def test_serialized_subscription_delivers_the_serialized_message(direct_graph):
    """Each message arrives once, serialized, through the waitable (the wrapped rclpy
    subscription's own callback is never run: it would raise in the executor and stop it)."""
    from rclpy.serialization import deserialize_message

    pub, _, received, wait_for = direct_graph
    cases = _cases()
    messages = [array_to_msg(np.ascontiguousarray(p), e, h) for p, e, h in cases]
    for msg in messages:
        pub.publish(msg)
    got = wait_for(len(messages))
    assert len(got) == len(messages)
    for view, msg in zip(got, messages, strict=True):
        assert isinstance(view, memoryview)
        assert deserialize_message(bytes(view), Image) == msg  # fields: rclpy leaves padding bytes undefined
        assert image_from_cdr(view).header == msg.header


def test_taken_buffers_are_freed_once_no_view_is_left(direct_graph):
    """100 frames of 1 MB taken and dropped leave the process no larger than a few of them (each take is a
    buffer of its own, released with its allocator when the last view goes)."""
    import gc
    import resource

    pub, _, received, wait_for = direct_graph
    frame = array_to_msg(np.full((512, 683, 3), 7, np.uint8), "bgr8")

    def rss_mib() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize() / 2**20

    before = rss_mib()
    for _ in range(100):
        pub.publish(frame)
        wait_for(1)
        assert len(received) == 1 and received[0][-1] == 7
        received.clear()
        gc.collect()
    grown = rss_mib() - before
    assert grown < 40, f"RSS grew by {grown:.0f} MiB over 100 frames of 1 MiB"


def test_a_view_outlives_later_takes(direct_graph):
    """A frame kept by the node (its slot) is not overwritten by the frames taken after it."""
    pub, _, received, wait_for = direct_graph
    for value in (1, 2, 3):
        pub.publish(array_to_msg(np.full((64, 64, 3), value, np.uint8), "bgr8", Header(frame_id=str(value))))
        wait_for(value)
    assert [np.frombuffer(image_from_cdr(v).data, np.uint8).max() for v in received] == [1, 2, 3]


def test_destroy_removes_the_subscription(direct_graph):
    pub, subscription, _, _ = direct_graph
    subscription.destroy()
    deadline = time.monotonic() + 10
    while pub.get_subscription_count() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pub.get_subscription_count() == 0
    assert subscription not in list(subscription.node.waitables)


def test_the_wrapped_subscription_is_left_to_the_waitable(direct_graph):
    """No executor sees the rcl subscription as one of the node's: only the waitable waits on it and takes."""
    _, subscription, _, _ = direct_graph
    assert subscription.subscription not in list(subscription.node.subscriptions)
    assert subscription in list(subscription.node.waitables)


_EVENTS_EXECUTOR_CHILD = """
import sys, time
import numpy as np
import rclpy
from rclpy.experimental import EventsExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from evit_ros.ros.conversions import image_from_cdr
from evit_ros.ros.rcl_serialized import SerializedSubscription

count = int(sys.argv[1])
rclpy.init()
node = rclpy.create_node("events_executor_child")
received = []
qos = QoSProfile(depth=64, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)
subscription = SerializedSubscription(node, Image, "frames", received.append, qos)
executor = EventsExecutor()
executor.add_node(node)
print("ready", flush=True)
deadline = time.monotonic() + 30
while len(received) < count and time.monotonic() < deadline:
    executor.spin_once(timeout_sec=0.05)
for view in received:
    msg = image_from_cdr(view)
    print(msg.header.frame_id, int(np.frombuffer(msg.data, np.uint8).max()), flush=True)
subscription.destroy()
node.destroy_node()
executor.shutdown()
rclpy.shutdown()
"""


def test_serialized_subscription_runs_under_the_events_executor():
    """rclpy's experimental EventsExecutor (Kilted on) delivers through the waitable. It aborted the process while
    the wrapped subscription was also on the node's list (registered twice), hence a child process."""
    pytest.importorskip("rclpy.experimental", reason="this rclpy has no EventsExecutor")
    count = 5
    feeder = _Graph("events_executor_feeder")
    child = subprocess.Popen(
        [sys.executable, "-c", _EVENTS_EXECUTOR_CHILD, str(count)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        pub = feeder.node.create_publisher(Image, "frames", QOS)
        deadline = time.monotonic() + 20
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pub.get_subscription_count() == 1, "the child's subscription was not matched"
        for value in range(1, count + 1):
            pub.publish(array_to_msg(np.full((64, 64, 3), value, np.uint8), "bgr8", Header(frame_id=str(value))))
        out, err = child.communicate(timeout=60)
    finally:
        child.kill()
        feeder.close()
    assert child.returncode == 0, err
    assert out.split("\n")[:count] == [f"{v} {v}" for v in range(1, count + 1)]


def test_a_failed_rcl_call_reports_rcl_s_message_and_clears_it():
    """rcl's error state is read into the error and reset, so a later failure starts clean (no "overwriting")."""
    import ctypes

    from evit_ros.ros import rcl_serialized

    functions = rcl_serialized._rcl()
    error_is_set = rcl_serialized._function("librcutils", "rcutils_error_is_set", [], ctypes.c_bool)
    empty = rcl_serialized._SerializedMessage(None, 0, 0)
    for _ in range(2):
        status = functions["publish"](None, ctypes.byref(empty), None)  # no publisher: rcl refuses and says why
        assert status != 0 and error_is_set()
        assert "publisher" in rcl_serialized._take_error_message()
        assert not error_is_set()
