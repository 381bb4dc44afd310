"""seg_node serving several cameras with one network, over real rclpy / Fast DDS (loopback only, private domain
from conftest), with the official B0 weights on real CamVid frames.

Counts and structure only, never milliseconds: these tests must pass on a loaded two-core machine.
"""

from __future__ import annotations

import array
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import NodeModel, wait_until
from conftest import stamp as _stamp
from conftest import stamp_ns as _stamp_ns

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed")
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from evit_ros.ros.conversions import image_to_msg, msg_to_rgb  # noqa: E402
from evit_ros.ros.seg_node import ConfigError, SegNode, _parameter_table  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_POSTPROCESS = _parameter_table()["postprocess_mode"].default  # what the node runs unless told
RESOLUTION = "128x256"  # small: the overload tests need many network runs
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def _params(model: NodeModel, **extra) -> list[Parameter]:
    values = {
        "model": "b0-cityscapes",
        "weights": str(model.weights),
        "resolution": RESOLUTION,
        "backend": model.backend,
        "num_threads": 1,
        "publish_color": False,
        "qos_reliability": "reliable",  # fairness is the node's to show: no frames lost in DDS under load
        **extra,
    }
    # An empty list has no type of its own: the string-array parameter is given as one explicitly.
    return [Parameter(k, Parameter.Type.STRING_ARRAY, v) if k == "cameras" else Parameter(k, value=v)
            for k, v in values.items()]  # fmt: skip


def _wait(predicate, timeout: float = 20.0, step: float = 0.01) -> bool:
    return wait_until(predicate, timeout, step)


def _labels(msg: Image) -> np.ndarray:
    assert msg.encoding == "mono8"
    return np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)[:, : msg.width]


class Graph:
    """A context spun by a MultiThreadedExecutor in a thread, with a tester node that publishes and records."""

    def __init__(self) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.tester = rclpy.create_node("multicam_tester", context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=3, context=self.context)
        self.executor.add_node(self.tester)
        self.nodes: list[SegNode] = []
        self.lock = threading.Lock()
        self.received: dict[str, list] = {}
        self.record(DiagnosticArray, "/diagnostics")
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def add_node(self, namespace: str, model: NodeModel, **params) -> SegNode:
        node = SegNode(context=self.context, namespace=namespace, parameter_overrides=_params(model, **params))
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def record(self, msg_type, topic: str) -> None:
        if topic in self.received:  # one subscription per topic, whichever test asks first
            return
        self.received[topic] = []

        def callback(msg, topic=topic):
            with self.lock:
                self.received[topic].append((time.monotonic(), msg))

        self.tester.create_subscription(msg_type, topic, callback, RELIABLE)

    def messages(self, topic: str, since: float = 0.0) -> list:
        with self.lock:
            return [m for t, m in self.received[topic] if t >= since]

    def publisher(self, topic: str):
        return self.tester.create_publisher(Image, topic, RELIABLE)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2)
        for n in (*self.nodes, self.tester):
            n.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def graph():
    g = Graph()
    yield g
    g.close()


@pytest.fixture(scope="module")
def model(b0_model) -> NodeModel:
    return b0_model(RESOLUTION)


@pytest.fixture(scope="module")
def reference(model):
    """The single-camera Segmenter with the node's parameters."""
    seg = model.segmenter(postprocess_mode=NODE_POSTPROCESS)
    yield seg
    seg.close()


@pytest.fixture(scope="module")
def frames_bgr(camvid_pairs) -> list[np.ndarray]:
    return [cv2.imread(str(img), cv2.IMREAD_COLOR) for img, _ in camvid_pairs[:3]]


def _matched(pubs, node: SegNode) -> bool:
    return all(p.get_subscription_count() >= 1 for p in pubs) and all(
        cam.pub_labels.get_subscription_count() >= 1 for cam in node.cameras
    )


def _camera_messages(frames_bgr) -> dict[str, Image]:
    """Three cameras that differ in size and encoding."""
    front = image_to_msg(cv2.cvtColor(frames_bgr[0], cv2.COLOR_BGR2RGB), "bgr8")  # 480x360 bgr8
    left_rgb = cv2.cvtColor(cv2.resize(frames_bgr[1], (320, 240), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    left = image_to_msg(left_rgb, "rgb8")  # 320x240 rgb8
    big = cv2.resize(frames_bgr[2], (640, 480), interpolation=cv2.INTER_LINEAR)
    cam0 = image_to_msg(cv2.cvtColor(big, cv2.COLOR_BGR2GRAY), "mono8")  # 640x480 mono8
    return {"front": front, "left": left, "cam0/color": cam0}


def _publish_for(pubs: dict, msgs: dict, seconds: float, rate_hz: float) -> None:
    """Every camera publishes its frame at ``rate_hz`` for ``seconds`` (fresh stamps)."""
    period = 1.0 / rate_hz
    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        for name, pub in pubs.items():
            _stamp(msgs[name], name)
            pub.publish(msgs[name])
        i += 1
        time.sleep(max(0.0, start + i * period - time.monotonic()))


def _out_counts(node: SegNode) -> dict[str, int]:
    return {cam.name: cam.stats.frames_out for cam in node.cameras}


def _serve(node: SegNode, pubs: dict, msgs: dict, served: list[str], outputs: int = 20) -> dict[str, int]:
    """Overload: every camera publishes at 40 Hz until each camera in ``served`` got ``outputs`` more outputs
    (or 120 s passed: a loaded machine is slow, not wrong); returns the new outputs per camera."""
    _publish_for(pubs, msgs, 1.0, 40.0)  # warm-up: the slots are full from here on
    before = _out_counts(node)
    deadline = time.monotonic() + 120.0
    delta = dict.fromkeys(before, 0)
    while time.monotonic() < deadline and min(delta[n] for n in served) < outputs:
        _publish_for(pubs, msgs, 0.1, 40.0)
        now = _out_counts(node)
        delta = {n: now[n] - before[n] for n in now}
    return delta


def _assert_fair(delta: dict[str, int], names, node: SegNode) -> None:
    counts = [delta[n] for n in names]
    inputs = {cam.name: cam.stats.frames_in for cam in node.cameras}
    assert min(counts) >= 20, f"too few outputs to judge fairness: {delta}, frames in {inputs}"
    assert min(counts) >= 0.9 * max(counts), f"output counts differ by more than 10 %: {delta}, frames in {inputs}"


@pytest.fixture(scope="module")
def multi(graph, model) -> SegNode:
    """Three cameras, batches of up to three (asked for: on the CPU the default runs them one after another)."""
    return graph.add_node("/multi", model, cameras=["front", "left", "cam0/color"], batch_size=3)


def test_three_cameras_get_their_own_outputs_headers_and_labels(graph, multi, reference, frames_bgr):
    node = multi
    assert node.multi_camera and node.segmenter.max_batch == 3
    msgs = _camera_messages(frames_bgr)
    pubs = {name: graph.publisher(f"/multi/{name}/image") for name in msgs}
    for name in msgs:
        for out in ("labels", "overlay"):
            graph.record(Image, f"/multi/{name}/segmentation/{out}")
    assert _wait(lambda: _matched(pubs.values(), node)), "DDS discovery did not complete"
    # nothing is published on the single-camera topics
    assert node.get_publishers_info_by_topic("/multi/segmentation/labels") == []
    assert node.get_subscriptions_info_by_topic("/multi/image") == []

    stamps = {}
    for name, pub in pubs.items():
        stamps[name] = _stamp(msgs[name], f"{name}_optical")
        pub.publish(msgs[name])
    for name, msg in msgs.items():
        topic = f"/multi/{name}/segmentation/labels"
        assert _wait(lambda topic=topic, name=name: any(
            _stamp_ns(m.header) == stamps[name] for m in graph.messages(topic))), f"no labels for {name}"  # fmt: skip
        labels = next(m for m in graph.messages(topic) if _stamp_ns(m.header) == stamps[name])
        assert labels.header == msg.header  # this camera's stamp and frame_id
        assert (labels.height, labels.width) == (msg.height, msg.width)
        expected = reference.segment(msg_to_rgb(msg), order="rgb").labels  # what one camera alone would get
        assert np.array_equal(_labels(labels), expected), name
        assert len(np.unique(expected)) >= 3
        overlay_topic = f"/multi/{name}/segmentation/overlay"
        assert _wait(lambda t=overlay_topic, n=name: any(_stamp_ns(m.header) == stamps[n] for m in graph.messages(t)))
        overlay = next(m for m in graph.messages(overlay_topic) if _stamp_ns(m.header) == stamps[name])
        assert overlay.encoding == "bgr8" and overlay.header == msg.header
    # bgr8 input: the overlay at alpha 0.5 blends the camera's own BGR pixels with the BGR palette
    front = next(
        m for m in graph.messages("/multi/front/segmentation/overlay") if _stamp_ns(m.header) == stamps["front"]
    )
    blended = np.frombuffer(front.data, np.uint8).reshape(front.height, front.width, 3).astype(int)
    expected = reference.segment(frames_bgr[0], order="bgr").labels
    want = (frames_bgr[0].astype(int) + reference.palette[expected][:, :, ::-1]) / 2
    assert np.abs(blended - want).max() <= 1


def test_batched_cameras_are_served_fairly_under_overload(graph, multi, frames_bgr):
    node = multi
    msgs = _camera_messages(frames_bgr)
    pubs = {name: graph.publisher(f"/multi/{name}/image") for name in msgs}
    for name in msgs:  # outputs nobody subscribes to are not computed
        graph.record(Image, f"/multi/{name}/segmentation/labels")
    assert _wait(lambda: _matched(pubs.values(), node))
    batches0 = node.network.snapshot()["batches"]
    _assert_fair(_serve(node, pubs, msgs, list(msgs)), msgs, node)
    assert all(cam.slot.dropped > 0 for cam in node.cameras), "cameras faster than the network must drop frames"
    snap = node.network.snapshot()
    assert snap["batches"] > batches0 and snap["frames_per_batch"] > 1.0, snap  # frames did share network runs


def test_one_after_another_is_round_robin_fair_under_overload(graph, model, frames_bgr):
    # batch_size left at 0 (auto): a CPU backend runs the cameras one after another
    node = graph.add_node("/rr", model, cameras=["front", "left", "cam0/color"])
    assert node.get_parameter("batch_size").value == 0 and node.segmenter.max_batch == 1
    msgs = _camera_messages(frames_bgr)
    pubs = {name: graph.publisher(f"/rr/{name}/image") for name in msgs}
    for name in msgs:
        graph.record(Image, f"/rr/{name}/segmentation/labels")
    assert _wait(lambda: _matched(pubs.values(), node))
    _assert_fair(_serve(node, pubs, msgs, list(msgs)), msgs, node)
    assert node.network.snapshot()["frames_per_batch"] == 1.0


def _statuses(graph: Graph, since: float) -> dict[str, DiagnosticStatus]:
    found = {}
    for arr in graph.messages("/diagnostics", since):
        for status in arr.status:
            found[status.name] = status
    return found


def test_silent_and_malformed_cameras_do_not_stop_the_others(graph, model, frames_bgr):
    names = ["good", "silent", "broken", "other"]
    node = graph.add_node("/mixed", model, cameras=names, batch_size=4, batch_wait_ms=200.0)
    msgs = _camera_messages(frames_bgr)
    good = {"good": msgs["front"], "other": msgs["left"]}
    broken = image_to_msg(cv2.cvtColor(frames_bgr[0], cv2.COLOR_BGR2RGB), "bgr8")
    broken.data = array.array("B", bytes(broken.data)[: len(broken.data) // 2])  # shorter than step x height
    pubs = {name: graph.publisher(f"/mixed/{name}/image") for name in ("good", "other", "broken")}
    for name in names:  # outputs nobody subscribes to are not computed
        graph.record(Image, f"/mixed/{name}/segmentation/labels")
    assert _wait(lambda: _matched(pubs.values(), node))
    cams = {cam.name: cam for cam in node.cameras}

    delta = _serve(node, pubs, {**good, "broken": broken}, ["good", "other"])
    _assert_fair(delta, ["good", "other"], node)
    assert delta["silent"] == 0 and delta["broken"] == 0
    assert cams["silent"].stats.frames_in == 0
    assert cams["broken"].stats.bad >= 20 and cams["broken"].stats.frames_in > 0
    assert cams["good"].stats.bad == 0 and cams["other"].stats.bad == 0
    assert "needs" in cams["broken"].stats.last_error  # the decoder's reason

    # the good camera's outputs still carry its own header
    stamp = _stamp(good["good"], "good_optical")
    pubs["good"].publish(good["good"])
    assert _wait(lambda: any(_stamp_ns(m.header) == stamp for m in graph.messages("/mixed/good/segmentation/labels")))

    # /diagnostics: one status per camera and one for the shared network
    since = time.monotonic()
    prefix = node.get_fully_qualified_name()
    wanted = {f"{prefix}: camera {n}" for n in names} | {f"{prefix}: network"}
    assert _wait(lambda: wanted <= set(_statuses(graph, since)), 10), set(_statuses(graph, since))
    statuses = _statuses(graph, since)
    values = {name: {kv.key: kv.value for kv in s.values} for name, s in statuses.items() if name in wanted}
    assert int(values[f"{prefix}: camera broken"]["bad_frames"]) >= 20
    assert statuses[f"{prefix}: camera broken"].level == DiagnosticStatus.WARN
    assert values[f"{prefix}: camera silent"]["frames_in"] == "0"
    assert statuses[f"{prefix}: camera silent"].level == DiagnosticStatus.WARN  # "no input frames yet"
    assert int(values[f"{prefix}: camera good"]["frames_out"]) >= 20
    for key in ("frames_in", "frames_out", "dropped_frames", "bad_frames", "latency_ms", "inference_ms"):
        assert key in values[f"{prefix}: camera good"], key
    network = values[f"{prefix}: network"]
    assert network["backend"] == model.backend and network["cameras"] == "4" and network["batch_size"] == "4"
    assert int(network["batches"]) > 0 and float(network["frames_per_batch"]) >= 1.0


def test_empty_cameras_in_a_params_file_is_the_single_camera_node(graph, model, frames_bgr, tmp_path):
    """``cameras: []`` (as a params file or ``-p cameras:=[]`` gives it) keeps today's topics and diagnostics."""
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    cameras: []\n")
    cmd = [sys.executable, "-m", "evit_ros.ros.seg_node", "--ros-args", "-r", "__ns:=/single", "--params-file",
           str(params)]  # fmt: skip
    for name, value in (("model", "b0-cityscapes"), ("weights", model.weights), ("resolution", RESOLUTION),
                        ("backend", model.backend), ("num_threads", 1)):  # fmt: skip
        cmd += ["-p", f"{name}:={value}"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pub = graph.publisher("/single/image")
    graph.record(Image, "/single/segmentation/labels")
    try:
        msg = image_to_msg(cv2.cvtColor(frames_bgr[0], cv2.COLOR_BGR2RGB), "bgr8")
        deadline = time.monotonic() + 90
        while not graph.messages("/single/segmentation/labels") and time.monotonic() < deadline and proc.poll() is None:
            _stamp(msg, "camera")
            pub.publish(msg)
            time.sleep(0.1)
        assert graph.messages("/single/segmentation/labels"), "the node with cameras: [] never produced labels"
        since = time.monotonic()
        assert _wait(lambda: "/single/seg_node: segmentation" in _statuses(graph, since), 10)
        names = [n for n, _ in graph.tester.get_topic_names_and_types() if n.startswith("/single/")]
        assert "/single/segmentation/overlay" in names
        # no per-camera topics: only the outputs' image_transport twins (<output>/compressed) are that deep
        assert not [n for n in names if n.count("/") > 3 and not n.endswith("/compressed")], names
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        # The publisher stays until the graph closes: destroying it while the graph's executor waits on it can
        # kill the executor's thread (rclpy InvalidHandle).
    assert proc.returncode == 0, proc.stdout.read()


@pytest.mark.parametrize(
    "cameras, fragment",
    [(["/front"], "relative topic namespace"), (["front", "front"], "listed twice"), (["9cam"], "relative")],
)
def test_invalid_camera_names_are_refused(model, cameras, fragment):
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ConfigError, match=fragment):
            SegNode(context=context, namespace="/bad", parameter_overrides=_params(model, cameras=cameras))
    finally:
        rclpy.try_shutdown(context=context)
