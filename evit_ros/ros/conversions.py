"""sensor_msgs <-> numpy for the ROS layer: thin wrappers over :mod:`evit_ros.io.encodings`."""

from __future__ import annotations

import array
import functools
import struct
from dataclasses import dataclass

import cv2
import numpy as np
from builtin_interfaces.msg import Time
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from evit_ros.io.encodings import decode_compressed, decode_image, encode_labels, image_view

__all__ = [
    "OUTPUT_ENCODINGS",
    "ImageView",
    "array_to_msg",
    "compressed_to_image",
    "compressed_to_rgb",
    "array_to_cdr",
    "cdr_image_prefix",
    "cdr_round_trips",
    "image_from_cdr",
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


@dataclass
class ImageView:
    """The fields of a ``sensor_msgs/Image`` read straight from its serialized form: ``data`` is a view of the
    received buffer (no copy), so it works wherever an ``Image`` is read (``msg_to_image``, ``.header``)."""

    header: Header
    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: memoryview


_CDR_LITTLE_ENDIAN = b"\x00\x01"  # RTPS encapsulation id of plain little-endian CDR


class _CdrReader:
    """Reads plain (XCDR1) CDR: primitives aligned to their size, counted from the end of the 4-byte
    encapsulation header; strings are a uint32 length (with the NUL) and the bytes."""

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 4

    def _take(self, size: int, align: int) -> int:
        start = 4 + ((self.pos - 4 + align - 1) & ~(align - 1))
        if start + size > len(self.buf):
            raise ValueError(f"truncated sensor_msgs/Image: {len(self.buf)} bytes, field at {start} needs {size}")
        self.pos = start + size
        return start

    def u32(self) -> int:
        return struct.unpack_from("<I", self.buf, self._take(4, 4))[0]

    def i32(self) -> int:
        return struct.unpack_from("<i", self.buf, self._take(4, 4))[0]

    def u8(self) -> int:
        return self.buf[self._take(1, 1)]

    def string(self) -> str:
        length = self.u32()
        start = self._take(length, 1)
        return bytes(self.buf[start : start + max(0, length - 1)]).decode("utf-8", errors="replace")

    def octets(self) -> memoryview:
        count = self.u32()
        start = self._take(count, 1)
        return self.buf[start : start + count]


def image_from_cdr(serialized: bytes | memoryview) -> ImageView:
    """A ``sensor_msgs/Image`` from its serialized form (a ``raw=True`` subscription), pixels not copied.

    rclpy turning a 1080p frame into a Python message copies it twice (into the C message, then into an
    ``array.array``): about 8 ms of a 1080p frame's latency on a 2-core machine. Little-endian CDR, what every
    common platform sends, is read in place; anything else goes through rclpy. ``ValueError`` for a truncated
    or malformed buffer.
    """
    buf = memoryview(serialized).cast("B")
    if bytes(buf[:2]) != _CDR_LITTLE_ENDIAN:
        if len(buf) < 4:
            raise ValueError(f"not a serialized sensor_msgs/Image ({len(buf)} bytes)")
        try:
            msg = deserialize_message(bytes(buf), Image)
        except Exception as exc:  # noqa: BLE001 - rclpy raises several types for a bad buffer
            raise ValueError(f"cannot deserialize sensor_msgs/Image: {exc}") from exc
        return ImageView(msg.header, msg.height, msg.width, msg.encoding, msg.is_bigendian, msg.step,
                         memoryview(msg.data).cast("B"))  # fmt: skip
    r = _CdrReader(buf)
    stamp = Time(sec=r.i32(), nanosec=r.u32())
    header = Header(stamp=stamp, frame_id=r.string())
    height, width = r.u32(), r.u32()
    encoding = r.string()
    is_bigendian = r.u8()
    step = r.u32()
    return ImageView(header, height, width, encoding, is_bigendian, step, r.octets())


class _CdrWriter:
    """Writes the fields of a message in plain little-endian CDR (the layout :class:`_CdrReader` reads)."""

    def __init__(self) -> None:
        self.buf = bytearray(b"\x00\x01\x00\x00")  # encapsulation: CDR_LE, no options

    def _align(self, size: int) -> None:
        self.buf += bytes(-(len(self.buf) - 4) % size)

    def u32(self, value: int) -> None:
        self._align(4)
        self.buf += struct.pack("<I", value)

    def i32(self, value: int) -> None:
        self._align(4)
        self.buf += struct.pack("<i", value)

    def u8(self, value: int) -> None:
        self.buf.append(value)

    def string(self, text: str) -> None:
        data = text.encode("utf-8")
        self.u32(len(data) + 1)
        self.buf += data + b"\x00"


def array_to_cdr(pixels: np.ndarray, encoding: str, header: Header | None = None) -> bytes:
    """:func:`array_to_msg`, serialized: the bytes of that ``sensor_msgs/Image``, for ``Publisher.publish(bytes)``
    (the fallback of :class:`~evit_ros.ros.image_publisher.ImagePublisher`).

    The pixels are copied once, straight into the serialized bytes. Publishing a message instead converts it to
    C and serializes it: two more full copies, about 2 ms of a 1080p overlay on a 2-core machine. Use it where
    :func:`cdr_round_trips` says the middleware reads this layout.
    """
    pixels = np.ascontiguousarray(pixels)
    if pixels.ndim < 2 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
        raise ValueError(f"image is empty or not 2-D: shape {pixels.shape}")
    octets = pixels.reshape(-1).view(np.uint8)
    prefix = cdr_image_prefix(header, pixels.shape[0], pixels.shape[1], encoding, pixels.strides[0], octets.size)
    return b"".join((prefix, memoryview(octets)))


def cdr_image_prefix(header: Header | None, height: int, width: int, encoding: str, step: int, nbytes: int) -> bytes:
    """The serialized ``sensor_msgs/Image`` up to its pixels (encapsulation header to the data length): the pixels'
    ``nbytes`` follow it directly, so a writer can put them straight into its own buffer after these bytes."""
    header = header if header is not None else Header()
    out = _CdrWriter()
    out.i32(header.stamp.sec)
    out.u32(header.stamp.nanosec)
    out.string(header.frame_id)
    out.u32(height)
    out.u32(width)
    out.string(encoding)
    out.u8(0)  # is_bigendian: numpy's little-endian layout, as in _message
    out.u32(step)
    out.u32(nbytes)
    return bytes(out.buf)


@functools.lru_cache(maxsize=1)
def cdr_round_trips() -> bool:
    """True when rclpy reads back what :func:`array_to_cdr` writes, field for field, on this platform and
    middleware (every string length and data length modulo the CDR alignment); False means publish messages."""
    for frame_id, encoding, shape in (("", "mono8", (1, 1)), ("cam", "bgr8", (1, 3, 3)), ("ab", "mono16", (2, 3)),
                                      ("left_camera", "rgb8", (3, 5, 3)), ("x" * 7, "32FC1", (1, 2))):  # fmt: skip
        dtype = {"mono16": np.uint16, "32FC1": np.float32}.get(encoding, np.uint8)
        pixels = (np.arange(int(np.prod(shape))) * 37 % 251).astype(dtype).reshape(shape)
        header = Header(stamp=Time(sec=1_700_000_003, nanosec=123_456_789), frame_id=frame_id)
        try:
            msg = deserialize_message(array_to_cdr(pixels, encoding, header), Image)
        except Exception:  # noqa: BLE001 - any failure means: do not publish this layout
            return False
        expected = array_to_msg(pixels, encoding, header)
        same = (msg.header == expected.header and msg.height == expected.height and msg.width == expected.width
                and msg.encoding == expected.encoding and msg.is_bigendian == expected.is_bigendian
                and msg.step == expected.step and bytes(msg.data) == bytes(expected.data))  # fmt: skip
        if not same:
            return False
    return True
