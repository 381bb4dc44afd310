"""evit_ros.ros.conversions with real sensor_msgs classes and a real CamVid frame."""

from __future__ import annotations

import array
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy")
from builtin_interfaces.msg import Time  # noqa: E402
from sensor_msgs.msg import CompressedImage  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from evit_ros.ros.conversions import compressed_to_rgb, image_to_msg, msg_to_rgb  # noqa: E402


@pytest.fixture(scope="module")
def rgb(camvid_pairs: list[tuple[Path, Path]]) -> np.ndarray:
    bgr = cv2.imread(str(camvid_pairs[0][0]), cv2.IMREAD_COLOR)
    assert bgr is not None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8"])
def test_colour_round_trip(rgb: np.ndarray, encoding: str) -> None:
    header = Header(frame_id="cam_optical", stamp=Time(sec=12, nanosec=345))
    msg = image_to_msg(rgb, encoding, header)
    h, w = rgb.shape[:2]
    assert (msg.height, msg.width, msg.encoding, msg.step, msg.is_bigendian) == (h, w, encoding, 3 * w, 0)
    assert isinstance(msg.data, array.array) and len(msg.data) == 3 * w * h
    assert msg.header.frame_id == "cam_optical" and msg.header.stamp.nanosec == 345
    first = bytes(msg.data[:3])
    assert first == bytes(rgb[0, 0] if encoding == "rgb8" else rgb[0, 0, ::-1])  # byte order on the wire
    np.testing.assert_array_equal(msg_to_rgb(msg), rgb)


def test_non_contiguous_input_is_packed(rgb: np.ndarray) -> None:
    view = rgb[10:200:2, 5:301:3]
    msg = image_to_msg(view, "bgr8")
    assert msg.step == view.shape[1] * 3 and len(msg.data) == msg.step * view.shape[0]
    np.testing.assert_array_equal(msg_to_rgb(msg), view)


def test_mono_outputs(rgb: np.ndarray) -> None:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    for source in (gray, rgb):  # a 2-D uint8 array as is, or an RGB image converted to grey
        msg = image_to_msg(source, "mono8")
        assert (msg.encoding, msg.step) == ("mono8", gray.shape[1])
        np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(gray.shape), gray)
    labels16 = gray.astype(np.uint16) * 257
    msg = image_to_msg(labels16, "mono16")
    assert (msg.encoding, msg.step, msg.is_bigendian) == ("mono16", 2 * gray.shape[1], 0)
    np.testing.assert_array_equal(np.frombuffer(msg.data, "<u2").reshape(gray.shape), labels16)
    np.testing.assert_array_equal(msg_to_rgb(msg)[..., 1], gray)  # high byte of v * 257 is v


@pytest.mark.parametrize(
    ("image", "encoding", "match"),
    [
        (np.zeros((4, 4), np.uint8), "bgr8", "H x W x 3 uint8"),
        (np.zeros((4, 4, 3), np.float32), "rgb8", "H x W x 3 uint8"),
        (np.zeros((4, 4), np.uint16), "mono8", "mono8 output"),
        (np.zeros((4, 4), np.uint8), "mono16", "mono16 output"),
        (np.zeros((4, 4, 3), np.uint8), "yuv422", "unsupported output encoding"),
        (np.zeros((0, 4, 3), np.uint8), "bgr8", "empty"),
    ],
)
def test_image_to_msg_errors(image: np.ndarray, encoding: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        image_to_msg(image, encoding)


def test_msg_to_rgb_rejects_bad_messages(rgb: np.ndarray) -> None:
    msg = image_to_msg(rgb, "bgr8")
    msg.data = msg.data[:-1]
    with pytest.raises(ValueError, match="needs"):
        msg_to_rgb(msg)
    msg = image_to_msg(rgb, "bgr8")
    msg.encoding = "32FC1"
    with pytest.raises(ValueError, match="unsupported image encoding"):
        msg_to_rgb(msg)


def test_compressed_to_rgb(rgb: np.ndarray) -> None:
    ok, png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    msg = CompressedImage(format="rgb8; png compressed rgb8")
    msg.data = array.array("B", png.tobytes())
    np.testing.assert_array_equal(compressed_to_rgb(msg), rgb)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    msg = CompressedImage(format="jpeg")
    msg.data = array.array("B", jpeg.tobytes())
    assert np.abs(compressed_to_rgb(msg).astype(np.int16) - rgb).mean() < 4.0
    msg.data = array.array("B", jpeg.tobytes()[:100])
    with pytest.raises(ValueError, match="cannot decode"):
        compressed_to_rgb(msg)


@pytest.mark.parametrize("frame_id", ["", "a", "abc", "abcd", "camera_front_optical"])  # every string padding
def test_image_from_cdr_reads_what_rclpy_serialized(frame_id: str) -> None:
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    from evit_ros.ros.conversions import image_from_cdr, msg_to_image

    rng = np.random.default_rng(len(frame_id))
    bgr = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    for encoding, step in (("bgr8", 15), ("bgr8", 16), ("mono16", 11)):
        msg = Image(height=7, width=5, encoding=encoding, step=step, is_bigendian=0)
        msg.header = Header(stamp=Time(sec=-3 if frame_id else 1_795_000_000, nanosec=999_999_999), frame_id=frame_id)
        payload = np.zeros((7, step), np.uint8)
        payload[:, : 15 if encoding == "bgr8" else 10] = bgr.reshape(7, 15)[:, : 15 if encoding == "bgr8" else 10]
        msg.data = array.array("B", payload.tobytes())
        view = image_from_cdr(serialize_message(msg))
        assert view.header == msg.header
        assert (view.height, view.width, view.encoding, view.step, view.is_bigendian) == (7, 5, encoding, step, 0)
        assert bytes(view.data) == payload.tobytes()
        if encoding == "bgr8":
            image, order = msg_to_image(view)
            assert order == "bgr" and np.array_equal(image, bgr)


def test_image_from_cdr_rejects_truncated_buffers() -> None:
    from rclpy.serialization import serialize_message
    from sensor_msgs.msg import Image

    from evit_ros.ros.conversions import image_from_cdr

    msg = Image(height=2, width=2, encoding="mono8", step=2)
    msg.data = array.array("B", [1, 2, 3, 4])
    whole = serialize_message(msg)
    for cut in (2, 4, 9, len(whole) - 1):
        with pytest.raises(ValueError):
            image_from_cdr(whole[:cut])
