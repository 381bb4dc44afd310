"""seg_node with frame_path device (torch on the CPU: the device pipeline with CPU tensors) publishes the labels,
colours and overlay of the device pipeline, and the same labels as a host-path node."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="rclpy is not installed")
torch = pytest.importorskip("torch", reason="torch is not installed (the device frame path is torch)")
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from evit_ros.pipeline import processing  # noqa: E402
from evit_ros.ros.conversions import image_to_msg  # noqa: E402
from evit_ros.ros.seg_node import ConfigError, SegNode  # noqa: E402

RESOLUTION = "256x512"
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


def _params(weights, **extra) -> list[Parameter]:
    values = {"model": "b0-cityscapes", "weights": str(weights), "resolution": RESOLUTION, "backend": "torch",
              "device": "cpu", "num_threads": 1, "postprocess_mode": "exact", **extra}  # fmt: skip
    return [Parameter(k, value=v) for k, v in values.items()]


def _wait(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def _pixels(msg: Image) -> np.ndarray:
    channels = 1 if msg.encoding == "mono8" else 3
    data = np.frombuffer(msg.data, dtype=np.uint8).reshape(msg.height, msg.step)[:, : msg.width * channels]
    return data.reshape(msg.height, msg.width, channels) if channels == 3 else data


def test_device_frame_path_node_publishes_the_host_labels(b0_checkpoint, camvid_pairs) -> None:
    from evit_ros.pipeline.segmenter import Segmenter

    context = rclpy.Context()
    rclpy.init(context=context)
    nodes = {
        path: SegNode(
            context=context, namespace=f"/{path}", parameter_overrides=_params(b0_checkpoint, frame_path=path)
        )
        for path in ("host", "device")
    }
    assert nodes["device"].info["frame_path"] == "device" and nodes["host"].info["frame_path"] == "host"
    tester = rclpy.create_node("tester", context=context)
    lock, received = threading.Lock(), {}

    def record(key):
        def callback(msg):
            with lock:
                received.setdefault(key, []).append(msg)

        return callback

    for path in nodes:
        for out in ("labels", "color", "overlay"):
            tester.create_subscription(Image, f"/{path}/segmentation/{out}", record(f"{path}/{out}"), RELIABLE)
    pubs = {path: tester.create_publisher(Image, f"/{path}/image", RELIABLE) for path in nodes}
    executor = MultiThreadedExecutor(num_threads=3, context=context)
    for node in (*nodes.values(), tester):
        executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    reference = Segmenter("b0-cityscapes", b0_checkpoint, RESOLUTION, backend="torch", device="cpu", num_threads=1,
                          frame_path="device")  # fmt: skip
    try:
        assert _wait(lambda: all(n.pub_overlay.get_subscription_count() and p.get_subscription_count()
                                 for n, p in zip(nodes.values(), pubs.values(), strict=True)))  # fmt: skip
        for i, (image_path, _) in enumerate(camvid_pairs[:2]):
            bgr = cv2.imread(str(image_path))
            encoding = ("bgr8", "rgb8")[i]
            msg = image_to_msg(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), encoding)  # takes RGB, writes `encoding`
            msg.header.stamp.sec = i + 1
            with lock:
                received.clear()
            for pub in pubs.values():
                pub.publish(msg)
            keys = [f"{p}/{o}" for p in nodes for o in ("labels", "color", "overlay")]
            assert _wait(lambda keys=keys: all(received.get(k) for k in keys)), f"outputs missing: {received.keys()}"
            with lock:
                out = {k: _pixels(received[k][-1]) for k in keys}
            # the device node's labels are the device pipeline's (up to float rounding of the network, threads
            # being shared); the host node's agree but for pixels the IPP-accelerated host resize moves
            # (test_device_path compares against OpenCV's own kernel)
            expected = out["device/labels"]
            assert np.mean(reference.segment(bgr, "bgr").labels == expected) >= 0.9999
            assert np.mean(out["device/labels"] == out["host/labels"]) >= 0.999
            assert np.array_equal(out["device/color"], reference.palette[expected])
            host_blend = processing.overlay(bgr, expected, np.ascontiguousarray(reference.palette[:, ::-1]), 0.5)
            assert np.abs(out["device/overlay"].astype(np.int16) - host_blend).max() <= 1
            assert len(np.unique(expected)) >= 3
        for node in nodes.values():
            assert node.stats.bad == 0
        # A frame the device cannot take (CUDA out of memory; a stand-in raises it, as no GPU is here) is a bad
        # frame with its reason, and the next frame is segmented as usual.
        device_node = nodes["device"]
        backend = device_node.segmenter.backend

        def out_of_memory_stand_in(batch):
            raise torch.OutOfMemoryError("CUDA out of memory (stand-in)")

        backend.infer_device = out_of_memory_stand_in
        msg.header.stamp.sec = 10
        pubs["device"].publish(msg)
        assert _wait(lambda: device_node.stats.bad == 1)
        assert "OutOfMemoryError" in device_node.stats.last_error
        del backend.infer_device  # the class's own method again
        with lock:
            received.clear()
        msg.header.stamp.sec = 11
        pubs["device"].publish(msg)
        assert _wait(lambda: received.get("device/labels")), "no labels after the failed frame"
        assert received["device/labels"][-1].header.stamp.sec == 11 and device_node.stats.bad == 1
    finally:
        executor.shutdown(timeout_sec=2)
        for node in nodes.values():
            node.destroy_node()
        tester.destroy_node()
        rclpy.try_shutdown(context=context)
        thread.join(timeout=5)
        reference.close()


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_device_frame_path_refused_with_cpu_backends(backend) -> None:
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        with pytest.raises(ConfigError, match=f"frame_path device needs .*{backend}"):
            SegNode(context=context, parameter_overrides=_params("random", backend=backend, frame_path="device"))
    finally:
        rclpy.try_shutdown(context=context)
