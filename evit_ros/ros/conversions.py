"""sensor_msgs <-> numpy for the ROS layer: thin wrappers over :mod:`evit_ros.encodings`."""

from __future__ import annotations

import array

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from evit_ros.io.encodings import decode_compressed, decode_image

__all__ = ["OUTPUT_ENCODINGS", "compressed_to_rgb", "image_to_msg", "msg_to_rgb"]

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


def image_to_msg(image_rgb: np.ndarray, encoding: str = "bgr8", header: Header | None = None) -> Image:
    """A ``sensor_msgs/Image`` holding ``image_rgb`` (RGB uint8 ``H x W x 3``; or ``H x W`` uint8/uint16 for
    mono8/mono16) in ``encoding``, with a correct ``step`` and packed rows. ``header`` is used as given."""
    pixels = _pixels_for(np.asarray(image_rgb), encoding)
    if pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"image is empty: shape {pixels.shape}")
    data = array.array("B")
    data.frombytes(pixels.reshape(-1).view(np.uint8))  # one copy; array.array skips the per-element check
    msg = Image()
    msg.header = header if header is not None else Header()
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(pixels.strides[0])
    msg.data = data
    return msg


def msg_to_rgb(msg: Image) -> np.ndarray:
    """RGB uint8 ``H x W x 3`` from a ``sensor_msgs/Image``; ``ValueError`` for a bad or unsupported image."""
    return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)


def compressed_to_rgb(msg: CompressedImage) -> np.ndarray:
    """RGB uint8 ``H x W x 3`` from a ``sensor_msgs/CompressedImage`` (JPEG/PNG); ``ValueError`` if corrupt."""
    return decode_compressed(msg.format, msg.data)
