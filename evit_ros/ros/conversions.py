"""sensor_msgs <-> numpy for the ROS layer: thin wrappers over :mod:`evit_ros.io.encodings`."""

from __future__ import annotations

import array

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from evit_ros.io.encodings import decode_compressed, decode_image, encode_labels, image_view

__all__ = [
    "OUTPUT_ENCODINGS",
    "array_to_msg",
    "compressed_to_image",
    "compressed_to_rgb",
    "image_to_msg",
    "labels_to_msg",
    "msg_to_image",
    "msg_to_rgb",
]

OUTPUT_ENCODINGS = ("rgb8", "bgr8", "mono8", "mono16")


def _pixels_for(image: np.ndarray, encoding: str) -> np.ndarray:
    """The C-contiguous array laid out as ``encoding`` says."""
    colour = image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8
    if encoding in ("rgb8", "bgr8"):
        if not colour:
            raise ValueError(f"{encoding} output needs an H x W x 3 uint8 RGB image, got {image.dtype} {image.shape}")
        return np.ascontiguousarray(image if encoding == "rgb8" else image[:, :, ::-1])
    if encoding == "mono8":
        if image.ndim == 2 and image.dtype == np.uint8:
            return np.ascontiguousarray(image)
        if colour:
            return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        raise ValueError(f"mono8 output needs an H x W uint8 (or RGB) image, got {image.dtype} {image.shape}")
    if encoding == "mono16":
        if image.ndim == 2 and image.dtype == np.uint16:
            return np.ascontiguousarray(image, dtype="<u2")  # little-endian: is_bigendian = 0
        raise ValueError(f"mono16 output needs an H x W uint16 image, got {image.dtype} {image.shape}")
    raise ValueError(f"unsupported output encoding {encoding!r}; use one of {', '.join(OUTPUT_ENCODINGS)}")


def array_to_msg(pixels: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """A ``sensor_msgs/Image`` whose bytes are those of ``pixels`` as laid out (packed rows, ``step`` from the
    array), labelled ``encoding``; no channel conversion. One copy, straight into the message's buffer."""
    pixels = np.ascontiguousarray(pixels)
    if pixels.ndim < 2 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"image is empty or not 2-D: shape {pixels.shape}")
    return _message(header, pixels.shape[0], pixels.shape[1], encoding, pixels.strides[0], pixels.reshape(-1))


def labels_to_msg(labels: np.ndarray, header: Header | None = None) -> Image:
    """A label map as a mono8 / mono16 ``sensor_msgs/Image`` (see :func:`evit_ros.io.encodings.encode_labels`)."""
    encoding, step, data = encode_labels(labels)
    return _message(header, labels.shape[0], labels.shape[1], encoding, step, data)


def _message(header: Header | None, height: int, width: int, encoding: str, step: int, data: np.ndarray) -> Image:
    # rclpy keeps an array.array('B') as is; array.frombytes copies the numpy buffer once, with no bytes in between.
    buf = array.array("B")
    buf.frombytes(data.view(np.uint8))
    msg = Image()
    msg.header = header if header is not None else Header()
    msg.height, msg.width = int(height), int(width)
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(step)
    msg.data = buf
    return msg


def image_to_msg(image_rgb: np.ndarray, encoding: str = "bgr8", header: Header | None = None) -> Image:
    """A ``sensor_msgs/Image`` holding ``image_rgb`` (RGB uint8 ``H x W x 3``; or ``H x W`` uint8/uint16 for
    mono8/mono16) in ``encoding``, with a correct ``step`` and packed rows. ``header`` is used as given."""
    return array_to_msg(_pixels_for(np.asarray(image_rgb), encoding), encoding, header)


def msg_to_rgb(msg: Image) -> np.ndarray:
    """RGB uint8 ``H x W x 3`` from a ``sensor_msgs/Image``; ``ValueError`` for a bad or unsupported image."""
    return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)


def msg_to_image(msg: Image) -> tuple[np.ndarray, str]:
    """``(image, order)`` from a ``sensor_msgs/Image``: rgb8/bgr8 as a read-only view of ``msg.data`` (no copy;
    valid while ``msg`` lives) in their own channel order, anything else decoded to RGB."""
    return image_view(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """RGB uint8 ``H x W x 3`` from a ``sensor_msgs/CompressedImage`` (JPEG/PNG); ``ValueError`` if corrupt."""
    return decode_compressed(msg.format, msg.data)


def compressed_to_image(msg: CompressedImage) -> tuple[np.ndarray, str]:
    """``(image, "bgr")`` from a ``sensor_msgs/CompressedImage``: the decoder's own BGR, no channel swap."""
    return decode_compressed(msg.format, msg.data, order="bgr"), "bgr"
