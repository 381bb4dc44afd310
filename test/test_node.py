"""seg_node over real rclpy / Fast DDS (loopback only, private domain from conftest), with the official B0
weights on real CamVid frames.

Most tests share two in-process nodes (raw and compressed input) spun by a MultiThreadedExecutor in a thread;
the shutdown and startup-failure tests run the node as a subprocess, as a user would.
"""

from __future__ import annotations

import array
import json
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
from conftest import stamp as _stamped
from conftest import stamp_ns as _stamp_ns

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed")
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import CameraInfo, CompressedImage, Image  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from evit_ros.pipeline import processing  # noqa: E402
from evit_ros.ros.conversions import image_to_msg  # noqa: E402
from evit_ros.ros.rcl_serialized import SerializedSubscription  # noqa: E402
from evit_ros.ros.seg_node import DIAGNOSTICS_WINDOW, SegNode, _parameter_table  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
NODE_POSTPROCESS = _parameter_table()["postprocess_mode"].default  # what the node runs unless told
RESOLUTION = "256x512"
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
OUTPUTS = ("labels", "color", "overlay", "confidence", "camera_info")


def _params(model: NodeModel, **extra) -> list[Parameter]:
    values = {
        "model": "b0-cityscapes",
        "weights": str(model.weights),
        "resolution": RESOLUTION,
        "backend": model.backend,
        "num_threads": 1,
        **extra,
    }
    return [Parameter(k, value=v) for k, v in values.items()]


def _wait(predicate, timeout: float = 10.0, step: float = 0.01) -> bool:
    return wait_until(predicate, timeout, step)


class Harness:
    """A context with a seg node, a compressed-input seg node, and a tester node that records outputs."""

    def __init__(self, model: NodeModel) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = SegNode(context=self.context, namespace="/raw", parameter_overrides=_params(model))
        self.cnode = SegNode(
            context=self.context,
            namespace="/cmp",
            parameter_overrides=_params(model, input_transport="compressed", publish_overlay=False),
        )
        # The raw node hands its serialized outputs to rcl (this middleware reads them back); the compressed one takes
        # the message path a middleware with another layout would use, so both reach a subscriber here.
        assert self.node.publish_path == "rcl"
        assert isinstance(self.node.sub_image, SerializedSubscription)  # and frames are taken through rcl
        for image_publisher in self.cnode.cameras[0].images.values():
            image_publisher.path = "message"
        self.tester = rclpy.create_node("seg_tester", context=self.context)
        self.lock = threading.Lock()
        self.received: dict[str, list] = {}
        for ns in ("raw", "cmp"):
            for out in OUTPUTS:
                msg_type = CameraInfo if out == "camera_info" else Image
                self._record(msg_type, f"/{ns}/segmentation/{out}", f"{ns}/{out}")
        self._record(DiagnosticArray, "/diagnostics", "diagnostics")
        self.pub_raw = self.tester.create_publisher(Image, "/raw/image", RELIABLE)
        self.pub_info = self.tester.create_publisher(CameraInfo, "/raw/camera_info", RELIABLE)
        self.pub_cmp = self.tester.create_publisher(CompressedImage, "/cmp/image/compressed", RELIABLE)
        self.executor = MultiThreadedExecutor(num_threads=3, context=self.context)
        for n in (self.node, self.cnode, self.tester):
            self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        matched = _wait(
            lambda: (
                self.pub_raw.get_subscription_count() >= 1
                and self.pub_cmp.get_subscription_count() >= 1
                and self.node.pub_labels.get_subscription_count() >= 1
                and self.cnode.pub_labels.get_subscription_count() >= 1
                and self.node.pub_overlay.get_subscription_count() >= 1
            ),
            timeout=20,
        )
        assert matched, "DDS discovery between the test and the node did not complete"

    def _record(self, msg_type, topic: str, key: str) -> None:
        self.received[key] = []

        def callback(msg, key=key):
            with self.lock:
                self.received[key].append((time.monotonic(), time.time_ns(), msg))

        self.tester.create_subscription(msg_type, topic, callback, RELIABLE)

    def clear(self) -> None:
        with self.lock:
            for v in self.received.values():
                v.clear()

    def messages(self, key: str) -> list:
        with self.lock:
            return [m for _, _, m in self.received[key]]

    def wait_for(self, key: str, stamp_ns: int, timeout: float = 20.0):
        """The message on ``key`` whose header stamp is ``stamp_ns``."""
        found = []

        def check():
            for msg in self.messages(key):
                if _stamp_ns(msg.header) == stamp_ns:
                    found.append(msg)
                    return True
            return False

        assert _wait(check, timeout), f"no {key} message for stamp {stamp_ns}"
        return found[0]

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2)
        for n in (self.node, self.cnode):
            n.destroy_node()
        # destroy_node also destroys the frame subscription, which is kept off the node's own list
        assert _wait(lambda: self.pub_raw.get_subscription_count() == 0, timeout=10)
        self.tester.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self.thread.join(timeout=5)


@pytest.fixture(scope="module")
def model(b0_model) -> NodeModel:
    return b0_model(RESOLUTION)


@pytest.fixture(scope="module")
def harness(model):
    h = Harness(model)
    yield h
    h.close()


@pytest.fixture(scope="module")
def reference(model):
    """An independent Segmenter with the node's parameters."""
    seg = model.segmenter(postprocess_mode=NODE_POSTPROCESS)
    yield seg
    seg.close()


@pytest.fixture(scope="module")
def frames_bgr(camvid_pairs) -> list[np.ndarray]:
    return [cv2.imread(str(img), cv2.IMREAD_COLOR) for img, _ in camvid_pairs[:4]]


def _bgr8_msg(bgr: np.ndarray) -> Image:
    return image_to_msg(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "bgr8")


def _as_array(msg: Image) -> np.ndarray:
    channels = {"mono8": 1, "rgb8": 3, "bgr8": 3}[msg.encoding]
    data = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)[:, : msg.width * channels]
    return data.reshape(msg.height, msg.width, channels) if channels == 3 else data


def _diag_value(h: Harness, node: SegNode, key: str, since: float) -> str | None:
    name = f"{node.get_fully_qualified_name()}: segmentation"
    with h.lock:
        arrays = [m for t, _, m in h.received["diagnostics"] if t >= since]
    for arr in reversed(arrays):
        for status in arr.status:
            if status.name == name:
                return {kv.key: kv.value for kv in status.values}.get(key)
    return None


def test_outputs_headers_encodings_and_labels_match_segmenter(harness, reference, frames_bgr):
    h = harness
    for bgr in frames_bgr[:2]:
        msg = _bgr8_msg(bgr)
        stamp = _stamped(msg)
        h.pub_raw.publish(msg)
        labels = h.wait_for("raw/labels", stamp)
        color = h.wait_for("raw/color", stamp)
        overlay = h.wait_for("raw/overlay", stamp)
        for out, enc in ((labels, "mono8"), (color, "rgb8"), (overlay, "bgr8")):
            assert out.header == msg.header  # stamp and frame_id unchanged
            assert out.encoding == enc
            assert (out.height, out.width) == bgr.shape[:2]
        expected = reference.segment(bgr, order="bgr").labels
        got = _as_array(labels)
        assert got.shape == expected.shape
        assert np.array_equal(got, expected)
        # colour image: the class palette of those labels
        assert np.array_equal(_as_array(color), reference.palette[expected])
        assert len(np.unique(expected)) >= 3  # a real street scene, not a constant map


def test_rgb8_input_gives_the_same_labels(harness, reference, frames_bgr):
    h = harness
    bgr = frames_bgr[2]
    msg = image_to_msg(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "rgb8")
    # pad each row by 7 bytes to exercise the row step
    padded = np.zeros((msg.height, msg.step + 7), dtype=np.uint8)
    padded[:, : msg.step] = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)
    msg.step += 7
    msg.data = array.array("B", padded.tobytes())
    stamp = _stamped(msg)
    h.pub_raw.publish(msg)
    labels = h.wait_for("raw/labels", stamp)
    expected = reference.segment(bgr, order="bgr").labels
    assert np.array_equal(_as_array(labels), expected)
    # blended in RGB, then written into the bgr8 message: the overlay a bgr8 frame gets
    overlay = h.wait_for("raw/overlay", stamp)
    assert overlay.encoding == "bgr8"
    palette_bgr = np.ascontiguousarray(reference.palette[:, ::-1])
    assert np.array_equal(_as_array(overlay), processing.overlay(bgr, expected, palette_bgr, 0.5))


def test_compressed_jpeg_input(harness, reference, frames_bgr):
    h = harness
    bgr = frames_bgr[0]
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    msg = CompressedImage(format="jpeg", data=array.array("B", jpeg.tobytes()))
    stamp = _stamped(msg)
    h.pub_cmp.publish(msg)
    labels = h.wait_for("cmp/labels", stamp)
    assert labels.header == msg.header
    assert (labels.height, labels.width) == bgr.shape[:2]
    decoded = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)  # what the node sees
    assert np.array_equal(_as_array(labels), reference.segment(decoded, order="bgr").labels)
    assert not h.messages("cmp/overlay")  # publish_overlay:=false on this node


def test_class_table_is_latched_json(harness):
    got = []
    # Left in place: destroying an entity while the harness's executor waits on it kills the executor's thread
    # (rclpy InvalidHandle), and with it every later test. The harness destroys it after the executor stops.
    harness.tester.create_subscription(String, "/raw/segmentation/class_table", got.append, LATCHED)
    assert _wait(lambda: bool(got), 10), "late subscriber did not get the transient-local class table"
    table = json.loads(got[0].data)
    assert table["model"] == "b0-cityscapes" and table["dataset"] == "cityscapes"
    assert table["num_classes"] == 19 and table["label_encoding"] == "mono8"
    assert [c["id"] for c in table["classes"]] == list(range(19))
    assert table["classes"][0]["name"] == "road" and table["classes"][0]["color"] == [128, 64, 128]


def test_bad_inputs_are_counted_and_skipped(harness, reference, frames_bgr):
    h, node = harness, harness.node
    good = frames_bgr[1]
    bad_raw = []
    m = _bgr8_msg(good)
    m.encoding = "bgr9000"  # unknown encoding
    bad_raw.append(m)
    m = _bgr8_msg(good)
    m.data = array.array("B", bytes(m.data)[: m.step * m.height // 2])  # data shorter than step x height
    bad_raw.append(m)
    bad_raw.append(Image(height=0, width=0, encoding="bgr8", step=0))  # zero size
    bad_raw.append(Image(height=4, width=5, encoding="yuv422", step=10, data=array.array("B", bytes(40))))  # odd
    bad_raw.append(Image(height=200000, width=200000, encoding="mono8", step=200000, data=array.array("B", b"x")))
    for msg in bad_raw:
        before = node.stats.bad
        _stamped(msg)
        h.pub_raw.publish(msg)
        assert _wait(lambda before=before: node.stats.bad == before + 1, 10), f"bad frame not counted: {msg.encoding}"
    cbefore = h.cnode.stats.bad
    corrupt = CompressedImage(format="jpeg", data=array.array("B", b"\xff\xd8\xff\xe0" + bytes(500)))
    _stamped(corrupt)
    h.pub_cmp.publish(corrupt)
    assert _wait(lambda: h.cnode.stats.bad == cbefore + 1, 10), "corrupt JPEG not counted"

    # the node is alive and still segments good frames
    msg = _bgr8_msg(good)
    stamp = _stamped(msg)
    h.pub_raw.publish(msg)
    labels = h.wait_for("raw/labels", stamp)
    assert np.array_equal(_as_array(labels), reference.segment(good, order="bgr").labels)
    # and /diagnostics reports the bad frames
    since = time.monotonic()
    assert _wait(lambda: _diag_value(h, node, "bad_frames", since) is not None, 5)
    assert int(_diag_value(h, node, "bad_frames", since)) >= len(bad_raw)


def test_runtime_parameters(harness, reference, frames_bgr):
    h, node = harness, harness.node
    bgr = frames_bgr[0]
    expected = reference.segment(bgr, order="bgr").labels

    def overlay_with(alpha: float) -> np.ndarray:
        result = node.set_parameters([Parameter("overlay_alpha", value=alpha)])[0]
        assert result.successful, result.reason
        msg = _bgr8_msg(bgr)
        stamp = _stamped(msg)
        h.pub_raw.publish(msg)
        return _as_array(h.wait_for("raw/overlay", stamp))

    try:
        assert np.array_equal(overlay_with(0.0), bgr)  # alpha 0: the camera image itself
        assert np.array_equal(overlay_with(1.0), reference.palette[expected][:, :, ::-1])  # alpha 1: the colours
        half = overlay_with(0.5).astype(int)
        assert np.abs(half - (bgr.astype(int) + reference.palette[expected][:, :, ::-1]) / 2).max() <= 1

        # a toggle stops that output, the others keep flowing
        assert node.set_parameters([Parameter("publish_color", value=False)])[0].successful
        msg = _bgr8_msg(bgr)
        stamp = _stamped(msg)
        h.pub_raw.publish(msg)
        h.wait_for("raw/labels", stamp)
        h.wait_for("raw/overlay", stamp)
        time.sleep(0.3)
        assert all(_stamp_ns(m.header) != stamp for m in h.messages("raw/color"))
    finally:
        node.set_parameters([Parameter("overlay_alpha", value=0.5), Parameter("publish_color", value=True)])

    # rejected: out of range, unknown choice, read-only
    for param in (
        Parameter("overlay_alpha", value=2.0),
        Parameter("mask_resolution", value="huge"),
        Parameter("model", value="b1-cityscapes"),
        Parameter("resolution", value="512x1024"),
    ):
        result = node.set_parameters([param])[0]
        assert not result.successful and result.reason, param.name
    assert node.get_parameter("overlay_alpha").value == 0.5
    assert node.get_parameter("model").value == "b0-cityscapes"


def test_network_resolution_confidence_and_camera_info(harness, reference, frames_bgr):
    h, node = harness, harness.node
    bgr = frames_bgr[3]
    info = CameraInfo(width=480, height=360, distortion_model="plumb_bob")
    info.k = [400.0, 0.0, 240.0, 0.0, 410.0, 180.0, 0.0, 0.0, 1.0]
    info.p = [400.0, 0.0, 240.0, 4.0, 0.0, 410.0, 180.0, 2.0, 0.0, 0.0, 1.0, 0.0]
    _stamped(info)
    h.pub_info.publish(info)
    assert _wait(lambda: node._camera_info is not None, 10)
    ok = node.set_parameters(
        [Parameter("mask_resolution", value="network"), Parameter("publish_confidence", value=True)]
    )
    assert all(r.successful for r in ok)
    try:
        msg = _bgr8_msg(bgr)
        stamp = _stamped(msg)
        h.pub_raw.publish(msg)
        labels = h.wait_for("raw/labels", stamp)
        conf = h.wait_for("raw/confidence", stamp)
        cinfo = h.wait_for("raw/camera_info", stamp)
        overlay = h.wait_for("raw/overlay", stamp)
        assert (labels.height, labels.width) == (256, 512) == (overlay.height, overlay.width)
        expected = reference.segment(bgr, order="bgr", output_size="network", return_confidence=True)
        assert np.array_equal(_as_array(labels), expected.labels)
        assert conf.encoding == "32FC1" and (conf.height, conf.width) == (256, 512)
        values = np.frombuffer(conf.data, dtype="<f4").reshape(256, 512)
        assert np.allclose(values, expected.confidence, atol=1e-5)
        assert 1.0 / 19 - 1e-6 <= values.min() and values.max() <= 1.0 + 1e-6
        sx, sy = 512 / 480, 256 / 360
        assert (cinfo.width, cinfo.height) == (512, 256) and cinfo.header == msg.header
        assert np.allclose(cinfo.k, [400 * sx, 0, 240 * sx, 0, 410 * sy, 180 * sy, 0, 0, 1])
        assert np.allclose(cinfo.p, [400 * sx, 0, 240 * sx, 4 * sx, 0, 410 * sy, 180 * sy, 2 * sy, 0, 0, 1, 0])

        assert node.set_parameters([Parameter("confidence_encoding", value="mono8")])[0].successful
        msg = _bgr8_msg(bgr)
        stamp = _stamped(msg)
        h.pub_raw.publish(msg)
        conf8 = h.wait_for("raw/confidence", stamp)
        assert conf8.encoding == "mono8"
        assert np.abs(_as_array(conf8).astype(float) - expected.confidence * 255).max() <= 1.0
    finally:
        node.set_parameters(
            [
                Parameter("mask_resolution", value="input"),
                Parameter("publish_confidence", value=False),
                Parameter("confidence_encoding", value="32FC1"),
            ]
        )


def test_fast_camera_drops_stale_frames_and_processes_the_newest(harness, frames_bgr):
    """Structure, not milliseconds: stale frames are dropped rather than queued, outputs stay in order, and once
    the camera stops only the frame in flight and the newest one are still to come (a queue would keep going)."""
    h, node = harness, harness.node
    msgs = [_bgr8_msg(b) for b in frames_bgr]
    dropped0, out0 = node.slot.dropped, node.stats.frames_out
    h.clear()
    stamps = []
    period = 1 / 60
    start = time.monotonic()
    for i in range(120):  # 2 s at 60 Hz
        msg = msgs[i % len(msgs)]
        stamps.append(_stamped(msg))
        h.pub_raw.publish(msg)
        time.sleep(max(0.0, start + (i + 1) * period - time.monotonic()))
    burst_end = time.monotonic()
    h.wait_for("raw/labels", stamps[-1], timeout=60)  # the last frame is never dropped
    with h.lock:
        received = list(h.received["raw/labels"])
    got = [_stamp_ns(m.header) for _, _, m in received]
    dropped = node.slot.dropped - dropped0
    processed = node.stats.frames_out - out0
    assert dropped > 0, "a 60 Hz camera faster than inference must make the node drop frames"
    assert processed < 120 and len(received) < 120
    assert got == sorted(got) and len(set(got)) == len(got), "outputs out of order or repeated"
    assert set(got) <= set(stamps) and got[-1] == stamps[-1]
    # After the burst: the frame in flight, possibly one that reached the slot before the last frame, the last.
    after = [t for t, _, _ in received if t > burst_end]
    assert len(after) <= 3, f"{len(after)} outputs after the camera stopped: frames were queued"
    since = time.monotonic()
    assert _wait(lambda: _diag_value(h, node, "dropped_frames", since) is not None, 5)
    assert int(_diag_value(h, node, "dropped_frames", since)) >= dropped


def test_diagnostics_fields(harness, model, frames_bgr):
    h, node = harness, harness.node
    msg = image_to_msg(frames_bgr[0], "bgr8")  # timings need a frame, whichever tests ran before
    stamp = _stamped(msg)
    h.pub_raw.publish(msg)
    h.wait_for("raw/labels", stamp)
    since = time.monotonic()
    assert _wait(lambda: _diag_value(h, node, "backend", since) is not None, 5)
    name = f"{node.get_fully_qualified_name()}: segmentation"
    with h.lock:
        arrays = [m for t, _, m in h.received["diagnostics"] if t >= since]
    # /diagnostics also carries the compressed-input node's arrays: take this node's latest status.
    status = next(s for arr in reversed(arrays) for s in arr.status if s.name == name)
    values = {kv.key: kv.value for kv in status.values}
    backend_key = {"torch": "engine", "onnxruntime": "onnx"}[model.backend]  # what the backend runs
    for key in ("input_rate_hz", "output_rate_hz", "inference_ms", "latency_ms", "dropped_frames", "bad_frames",
                "nan_frames", "backend", "precision", backend_key, "frames_in", "frames_out"):  # fmt: skip
        assert key in values, key
    assert values["backend"] == model.backend and values["precision"] == "fp32"
    assert int(values["nan_frames"]) == 0
    assert float(values["inference_ms"]) > 0
    assert float(values["postprocess_ms"]) > 0 and float(values["segment_ms_p50"]) > 0
    # the Segmenter's frame -> labels in the node: per frame, network (with pre-processing) plus post-processing,
    # and its p50 over the window. (Against the published means alone no bound holds: a loaded machine's few slow
    # frames lift the mean inference above the median frame.)
    stats = node.cameras[0].stats
    direct = {kv.key: kv.value for kv in node.diagnostics_status().values}
    with stats.lock:
        infer, post, segment = (
            list(d)[-DIAGNOSTICS_WINDOW:] for d in (stats.infer_ms, stats.post_ms, stats.segment_ms)
        )
    assert infer and all(p > 0 for p in post) and segment == [i + p for i, p in zip(infer, post)]
    assert float(direct["segment_ms_p50"]) == pytest.approx(float(np.median(segment)), abs=0.006)
    assert float(direct["segment_ms_p50"]) >= min(infer)


# ---------------------------------------------------------------------------------------------- subprocess


def _node_cmd(model: NodeModel, *params: str, ns: str = "/proc_test") -> list[str]:
    args = [sys.executable, "-m", "evit_ros.ros.seg_node", "--ros-args", "-r", f"__ns:={ns}"]
    for p in ("model:=b0-cityscapes", f"weights:={model.weights}", f"resolution:={RESOLUTION}",
              f"backend:={model.backend}", "num_threads:=1", *params):  # fmt: skip
        args += ["-p", p]
    return args


def _env() -> dict[str, str]:
    env = dict(os.environ)  # carries conftest's ROS_DOMAIN_ID / LOCALHOST discovery / RMW
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def test_sigint_stops_a_busy_node_cleanly(harness, model, frames_bgr):
    h = harness
    proc = subprocess.Popen(_node_cmd(model), env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Both stay until the harness closes (see test_class_table_is_latched_json).
    pub = h.tester.create_publisher(Image, "/proc_test/image", RELIABLE)
    got = []
    h.tester.create_subscription(Image, "/proc_test/segmentation/labels", got.append, RELIABLE)
    try:
        msg = _bgr8_msg(frames_bgr[0])
        deadline = time.monotonic() + 60
        while not got and time.monotonic() < deadline and proc.poll() is None:
            _stamped(msg)
            pub.publish(msg)
            time.sleep(0.05)
        assert got, "the subprocess node never produced labels"
        for _ in range(5):  # keep it busy while it is being stopped
            _stamped(msg)
            pub.publish(msg)
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=30)  # a hang fails here; how fast a loaded machine stops is not a test matter
        out = proc.stdout.read()
        assert rc == 0, out
        assert "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "param, fragment",
    [
        ("resolution:=250x512", "multiples of 32"),
        ("overlay_alpha:=2.0", "overlay_alpha"),
        ("mask_resolution:=huge", "mask_resolution"),
        ("frame_path:=gpu", "frame_path must be one of auto, host, device"),
        ("precision:=fp8", "precision must be one of auto"),
    ],
)
def test_invalid_startup_parameter_exits_cleanly(model, param, fragment):
    proc = subprocess.run(_node_cmd(model, param), check=False, env=_env(), capture_output=True, text=True, timeout=60)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert "invalid parameter" in out and fragment in out, out
    assert "Traceback" not in out, out


def test_build_only_exits_zero(model):
    proc = subprocess.run(
        _node_cmd(model, "build_only:=true"),
        check=False,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "build_only" in out and "Traceback" not in out
