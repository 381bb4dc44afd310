"""The node's copy-free conversions: rgb8/bgr8 read in place in their own channel order, outputs filled straight
from numpy, BGR out of the compressed decoder, labels coloured in either channel order."""

from __future__ import annotations

import array

import cv2
import numpy as np
import pytest

pytest.importorskip("rclpy")
from sensor_msgs.msg import CompressedImage  # noqa: E402

from evit_ros.io.encodings import image_view  # noqa: E402
from evit_ros.network.classes import CITYSCAPES_PALETTE  # noqa: E402
from evit_ros.pipeline.processing import colorize, overlay  # noqa: E402
from evit_ros.ros.conversions import (  # noqa: E402
    array_to_msg,
    compressed_to_image,
    image_to_msg,
    labels_to_msg,
    msg_to_image,
    msg_to_rgb,
)


@pytest.fixture(scope="module")
def bgr(camvid_pairs) -> np.ndarray:
    return cv2.imread(str(camvid_pairs[0][0]), cv2.IMREAD_COLOR)


@pytest.mark.parametrize("encoding", ["bgr8", "rgb8"])
def test_colour_frames_are_viewed_in_place_in_their_own_order(bgr, encoding):
    msg = image_to_msg(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), encoding)
    image, order = msg_to_image(msg)
    assert order == encoding[:3]
    assert np.shares_memory(image, np.frombuffer(msg.data, np.uint8))  # no copy
    assert not image.flags.writeable
    expected = bgr if encoding == "bgr8" else bgr[:, :, ::-1]
    np.testing.assert_array_equal(image, expected)


def test_row_padding_is_honoured_without_a_copy(bgr):
    h, w = bgr.shape[:2]
    padded = np.zeros((h, w * 3 + 5), np.uint8)
    padded[:, : w * 3] = bgr.reshape(h, -1)
    image, order = image_view("bgr8", h, w, w * 3 + 5, padded.reshape(-1))
    assert order == "bgr" and np.shares_memory(image, padded)
    np.testing.assert_array_equal(image, bgr)
    # OpenCV reads the strided view as it is (the node resizes it for the network and blends the overlay on it)
    np.testing.assert_array_equal(cv2.resize(image, (64, 48)), cv2.resize(bgr, (64, 48)))


def test_other_encodings_are_decoded_to_rgb(bgr):
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    msg = image_to_msg(gray, "mono8")
    image, order = msg_to_image(msg)
    assert order == "rgb"
    np.testing.assert_array_equal(image, msg_to_rgb(msg))


@pytest.mark.parametrize(
    "encoding, height, width, step, size, match",
    [
        ("bgr8", 4, 5, 14, 56, "smaller than one bgr8 row"),
        ("rgb8", 4, 5, 15, 50, "needs 60 bytes"),
        ("bgr8", 0, 5, 15, 0, "must be positive"),
        ("bgr9000", 4, 5, 15, 60, "unsupported image encoding"),
    ],
)
def test_bad_colour_frames_are_refused(encoding, height, width, step, size, match):
    with pytest.raises(ValueError, match=match):
        image_view(encoding, height, width, step, bytes(size))


def test_compressed_frames_come_out_bgr(bgr):
    ok, png = cv2.imencode(".png", bgr)
    assert ok
    image, order = compressed_to_image(CompressedImage(format="png", data=array.array("B", png.tobytes())))
    assert order == "bgr"
    np.testing.assert_array_equal(image, bgr)


def test_output_messages_hold_the_array_bytes(bgr):
    msg = array_to_msg(bgr, "bgr8")
    assert isinstance(msg.data, array.array) and msg.data.typecode == "B"
    assert (msg.height, msg.width, msg.step, msg.encoding) == (*bgr.shape[:2], bgr.shape[1] * 3, "bgr8")
    np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(bgr.shape), bgr)
    conf = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    msg = array_to_msg(conf, "32FC1")
    assert (msg.height, msg.width, msg.step) == (3, 4, 16)
    np.testing.assert_array_equal(np.frombuffer(msg.data, "<f4").reshape(3, 4), conf)
    with pytest.raises(ValueError, match="empty"):
        array_to_msg(np.zeros((0, 4), np.uint8), "mono8")


def test_labels_messages(bgr):
    labels = (bgr[:, :, 0] % 19).astype(np.uint8)
    msg = labels_to_msg(labels[:, ::2])  # not contiguous: packed, step = its own width
    assert (msg.encoding, msg.width, msg.step) == ("mono8", labels[:, ::2].shape[1], labels[:, ::2].shape[1])
    np.testing.assert_array_equal(np.frombuffer(msg.data, np.uint8).reshape(msg.height, -1), labels[:, ::2])
    wide = labels.astype(np.uint16) * 300
    msg = labels_to_msg(wide)
    assert (msg.encoding, msg.step, msg.is_bigendian) == ("mono16", 2 * wide.shape[1], 0)
    np.testing.assert_array_equal(np.frombuffer(msg.data, "<u2").reshape(wide.shape), wide)


def test_overlay_in_bgr_is_the_rgb_overlay_swapped(bgr):
    labels = (bgr[:, :, 1] // 12).astype(np.uint8)  # ids 0..21: some outside the 19-colour palette
    palette_bgr = np.ascontiguousarray(CITYSCAPES_PALETTE[:, ::-1])
    rgb_result = overlay(np.ascontiguousarray(bgr[:, :, ::-1]), labels, CITYSCAPES_PALETTE, 0.4)
    bgr_result = overlay(bgr, labels, palette_bgr, 0.4)
    np.testing.assert_array_equal(bgr_result, rgb_result[:, :, ::-1])
    into = np.zeros_like(bgr)  # seg_node blends straight into the overlay message's pixels
    assert overlay(bgr, labels, palette_bgr, 0.4, out=into) is into
    np.testing.assert_array_equal(into, bgr_result)
    strided = np.zeros((bgr.shape[0], bgr.shape[1] * 2, 3), np.uint8)[:, ::2]
    assert overlay(bgr, labels, palette_bgr, 0.4, out=strided) is strided
    np.testing.assert_array_equal(strided, bgr_result)
    with pytest.raises(ValueError, match="out must be"):
        overlay(bgr, labels, palette_bgr, 0.4, out=np.zeros(bgr.shape[:2], np.uint8))
    lut = np.zeros((256, 3), np.uint8)
    lut[:19] = CITYSCAPES_PALETTE
    np.testing.assert_array_equal(colorize(labels, CITYSCAPES_PALETTE), lut[labels])  # unknown ids are black


@pytest.mark.parametrize("frame_id", ["", "c", "cam", "left", "front_camera_optical"])
def test_serialized_outputs_are_the_messages_rclpy_would_send(bgr, frame_id):
    """array_to_cdr: bytes rclpy deserializes to exactly the message array_to_msg / labels_to_msg builds, for every
    string padding, colour (strided too), mono8, mono16 and float images; image_from_cdr reads them back."""
    from builtin_interfaces.msg import Time
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from evit_ros.ros.conversions import array_to_cdr, cdr_round_trips, image_from_cdr

    assert cdr_round_trips()
    header = Header(stamp=Time(sec=1_700_000_123, nanosec=999_999_999), frame_id=frame_id)
    small = bgr[:37, :53]  # odd sizes: no alignment by luck
    labels16 = (np.arange(37 * 53, dtype=np.uint16) * 7).reshape(37, 53)
    depth = labels16.astype("<f4") / 3
    cases = [
        (array_to_cdr(small, "bgr8", header), array_to_msg(small, "bgr8", header)),
        (array_to_cdr(small[:, :, ::-1], "rgb8", header), image_to_msg(small[:, :, ::-1], "rgb8", header)),
        (array_to_cdr(labels16, "mono16", header), labels_to_msg(labels16, header)),
        (array_to_cdr(labels16.astype(np.uint8), "mono8", header), labels_to_msg(labels16.astype(np.uint8), header)),
        (array_to_cdr(depth, "32FC1", header), array_to_msg(depth, "32FC1", header)),
    ]  # fmt: skip
    for serialized, expected in cases:
        assert isinstance(serialized, bytes)
        got = deserialize_message(serialized, Image)
        assert got.header == expected.header
        assert (got.height, got.width, got.encoding, got.is_bigendian, got.step) == (
            expected.height, expected.width, expected.encoding, expected.is_bigendian, expected.step
        )  # fmt: skip
        assert bytes(got.data) == bytes(expected.data)
        view = image_from_cdr(serialized)
        assert view.header == expected.header and view.step == expected.step
        assert bytes(view.data) == bytes(expected.data)
    with pytest.raises(ValueError, match="empty"):
        array_to_cdr(np.zeros((0, 4, 3), np.uint8), "bgr8")
