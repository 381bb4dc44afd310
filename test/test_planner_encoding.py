"""The encoders of the planner outputs without ROS: image_transport's ``compressed`` format strings, the lossless
PNG round trip (16-bit labels included), the class-mask parameter and the masks' lookup table.

The format strings are checked against ros-perception/image_transport_plugins, compressed_image_transport,
src/compressed_publisher.cpp: branch humble (ef9442d8) lines 169 (format = the raw encoding), 197
("; jpeg compressed "), 204-212 (+ "bgr8" for colour, "mono8" for mono), 258 ("; png compressed "), 266-270
(+ "bgr" << bitDepth for colour only); branch rolling (7404d772) lines 172, 200, 207-215, 261, 269-273, the same
text. The decoding side, compressed_subscriber.cpp (humble lines 121-175, rolling 118-172: imdecode with the
default mode "unchanged", the encoding taken from the text before ';', BGR swapped back for rgb8), is what
decode_transport follows.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from evit_ros.io.encodings import decode_transport, encode_transport, transport_format
from evit_ros.network.classes import ADE20K_CLASSES, CITYSCAPES_CLASSES, parse_class_masks
from evit_ros.pipeline import processing

# What compressed_image_transport writes (see the module docstring for the source lines).
PLUGIN_FORMATS = {
    ("mono8", "png"): "mono8; png compressed ",
    ("mono16", "png"): "mono16; png compressed ",
    ("rgb8", "png"): "rgb8; png compressed bgr8",
    ("bgr8", "png"): "bgr8; png compressed bgr8",
    ("bgr8", "jpeg"): "bgr8; jpeg compressed bgr8",
    ("mono8", "jpeg"): "mono8; jpeg compressed mono8",
}


@pytest.mark.parametrize(("encoding", "codec"), sorted(PLUGIN_FORMATS))
def test_format_string_is_the_plugins(encoding, codec):
    assert transport_format(encoding, codec) == PLUGIN_FORMATS[encoding, codec]


def test_transport_refuses_what_the_plugin_cannot_restore():
    with pytest.raises(ValueError, match="jpeg"):
        transport_format("mono16", "jpeg")  # the plugin scales 16-bit JPEG: not a label map any more
    with pytest.raises(ValueError, match="32FC1"):
        transport_format("32FC1", "png")
    with pytest.raises(ValueError, match="BGR|H x W x 3"):
        encode_transport(np.zeros((4, 4), np.uint8), "rgb8", "png")


def test_png_round_trip_is_exact_and_rgb8_comes_back_rgb():
    rng = np.random.default_rng(0)
    labels16 = rng.integers(0, 65536, (37, 53), dtype=np.uint16)
    fmt, data = encode_transport(labels16, "mono16", "png")
    pixels, encoding = decode_transport(fmt, data)
    assert encoding == "mono16" and pixels.dtype == np.uint16 and np.array_equal(pixels, labels16)
    # exactly what compressed_subscriber's cv::imdecode(IMREAD_UNCHANGED) sees: a 16-bit single-channel image
    assert np.array_equal(cv2.imdecode(data, cv2.IMREAD_UNCHANGED), labels16)
    rgb = rng.integers(0, 256, (31, 17, 3), dtype=np.uint8)
    fmt, data = encode_transport(np.ascontiguousarray(rgb[:, :, ::-1]), "rgb8", "png")  # the codec gets BGR
    pixels, encoding = decode_transport(fmt, data)
    assert encoding == "rgb8" and np.array_equal(pixels, rgb)
    # the file itself holds the true colours (PNG stores RGB; OpenCV reads it back as BGR)
    assert np.array_equal(cv2.imdecode(data, cv2.IMREAD_UNCHANGED)[:, :, ::-1], rgb)


def test_parse_class_masks():
    masks = parse_class_masks("{drivable: [road, sidewalk], people: [person, rider], signs: traffic sign}",
                              CITYSCAPES_CLASSES)  # fmt: skip
    assert masks == {"drivable": (0, 1), "people": (11, 12), "signs": (7,)}
    assert parse_class_masks("", CITYSCAPES_CLASSES) == {}
    assert parse_class_masks("{ground: [floor, road]}", ADE20K_CLASSES) == {"ground": (3, 6)}


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("{drivable: [road, sidwalk]}", "valid classes: road, sidewalk, building"),
        ("{drivable: [road}", "not valid YAML"),
        ("[road, sidewalk]", "must map mask names"),
        ("{9lives: [road]}", "cannot be a topic name"),
        ("{'a/b': [road]}", "cannot be a topic name"),
        ("{drivable: []}", "must list class names"),
        ("{drivable: [1, 2]}", "must list class names"),
    ],
)
def test_parse_class_masks_rejects(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_class_masks(text, CITYSCAPES_CLASSES)


def test_class_mask_is_the_lut_over_labels():
    rng = np.random.default_rng(1)
    for dtype, ids in ((np.uint8, (0, 1, 255)), (np.uint16, (3, 300, 65535))):
        labels = rng.choice(np.array([0, 1, 2, 3, 255, 300, 40000, 65535]).astype(dtype), size=(61, 77))
        lut = processing.class_lut(ids, dtype)
        expected = np.where(np.isin(labels, ids), 255, 0).astype(np.uint8)
        assert np.array_equal(processing.class_mask(labels, lut), expected)
        out = np.full(labels.shape, 7, np.uint8)
        assert processing.class_mask(labels, lut, out=out) is out and np.array_equal(out, expected)
