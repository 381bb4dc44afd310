"""ROS image payloads <-> numpy, without ROS.

Pure numpy + OpenCV conversions of ``sensor_msgs/Image`` and ``sensor_msgs/CompressedImage`` payloads to
RGB ``uint8`` arrays, and of label maps to ``mono8``/``mono16`` payloads. This module never imports rclpy:
the ROS layer (``evit_ros.ros``) passes it the message fields.

Conventions:

* Every decoder returns an ``H x W x 3`` ``uint8`` RGB array that is C-contiguous and owns (or solely
  references) writable memory; the payload is viewed with ``np.frombuffer`` + ``as_strided`` (honouring the
  row ``step``) and converted with a single OpenCV call, so there is at most one copy.
* ``mono16`` is reduced to 8 bits by keeping the high byte (``value >> 8``): a full-range 16-bit image maps
  to the full 8-bit range, and no per-frame normalisation makes brightness jump between frames.
  ``is_bigendian`` is honoured.
* ``yuv422`` is UYVY byte order (ROS 2's ``sensor_msgs/image_encodings`` ``YUV422 = "yuv422"`` is UYVY, and
  ``uyvy`` is the newer alias); ``yuv422_yuy2`` and ``yuyv`` are YUYV. YUV is decoded with OpenCV's
  BT.601 limited-range conversion.
* ``nv12``/``nv21``: ``step`` is the stride of the Y rows; the interleaved chroma plane (``height / 2`` rows
  of the same stride) starts ``height * step`` bytes after the start.
* Bayer names follow ROS (the 2x2 pattern starting at the top-left pixel). OpenCV's classic two-letter
  codes name the pattern from the second row/column, so ROS ``bayer_rggb8`` is ``COLOR_BayerBG2RGB``
  (OpenCV 5 also spells it ``COLOR_BayerRGGB2RGB``); the tests verify this on a synthetic mosaic.

Malformed input raises ``ValueError`` with the reason.
"""

from __future__ import annotations

import cv2
import numpy as np
from numpy.lib.stride_tricks import as_strided

__all__ = [
    "MAX_PIXELS",
    "MAX_SIDE",
    "SUPPORTED_ENCODINGS",
    "TRANSPORT_CODECS",
    "bytes_per_pixel",
    "decode_compressed",
    "decode_transport",
    "encode_transport",
    "transport_format",
    "decode_image",
    "encode_labels",
    "label_dtype_encoding",
    "label_encoding",
    "image_view",
    "rgb_to_bgr",
]

MAX_SIDE = 16384
MAX_PIXELS = 1 << 28

# encoding -> (channels of the packed view, bytes per channel, OpenCV code or None)
_PACKED: dict[str, tuple[int, int, int | None]] = {
    "rgb8": (3, 1, None),
    "bgr8": (3, 1, cv2.COLOR_BGR2RGB),
    "rgba8": (4, 1, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, 1, cv2.COLOR_BGRA2RGB),
    "mono8": (1, 1, cv2.COLOR_GRAY2RGB),
    "mono16": (1, 2, cv2.COLOR_GRAY2RGB),
    "yuv422": (2, 1, cv2.COLOR_YUV2RGB_UYVY),
    "uyvy": (2, 1, cv2.COLOR_YUV2RGB_UYVY),
    "yuv422_yuy2": (2, 1, cv2.COLOR_YUV2RGB_YUYV),
    "yuyv": (2, 1, cv2.COLOR_YUV2RGB_YUYV),
    # ROS names the pattern from the top-left pixel; OpenCV's two-letter names from the second row/column.
    "bayer_rggb8": (1, 1, cv2.COLOR_BayerBG2RGB),
    "bayer_bggr8": (1, 1, cv2.COLOR_BayerRG2RGB),
    "bayer_gbrg8": (1, 1, cv2.COLOR_BayerGR2RGB),
    "bayer_grbg8": (1, 1, cv2.COLOR_BayerGB2RGB),
}
_PLANAR: dict[str, int] = {"nv12": cv2.COLOR_YUV2RGB_NV12, "nv21": cv2.COLOR_YUV2RGB_NV21}
_YUV422 = frozenset({"yuv422", "uyvy", "yuv422_yuy2", "yuyv"})

SUPPORTED_ENCODINGS: tuple[str, ...] = (*_PACKED, *_PLANAR)


def bytes_per_pixel(encoding: str) -> float:
    """Bytes per pixel of a supported encoding (1.5 for nv12/nv21, counting both planes)."""
    if encoding in _PACKED:
        channels, depth, _ = _PACKED[encoding]
        return channels * depth
    if encoding in _PLANAR:
        return 1.5
    raise ValueError(f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")


def _check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if height > MAX_SIDE or width > MAX_SIDE or height * width > MAX_PIXELS:
        raise ValueError(f"image size {width}x{height} is implausible (limit {MAX_SIDE} a side, {MAX_PIXELS} pixels)")


def _as_bytes(data: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """A flat uint8 view of any buffer (no copy for contiguous input)."""
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"image data of type {type(data).__name__} is not a byte buffer: {exc}") from exc


def _convert(view: np.ndarray, code: int, encoding: str) -> np.ndarray:
    try:
        return cv2.cvtColor(view, code)
    except cv2.error as exc:  # not expected after the checks above; keep the ValueError contract anyway
        raise ValueError(f"OpenCV cannot convert this {encoding} image ({view.shape}): {exc}") from exc


def decode_image(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: bytes | bytearray | memoryview | np.ndarray,
    is_bigendian: int = 0,
) -> np.ndarray:
    """Decode a raw ``sensor_msgs/Image`` payload into an ``H x W x 3`` uint8 RGB C-contiguous array.

    Raises ``ValueError`` for an unsupported encoding, a non-positive or implausible size, a ``step``
    smaller than one row, data shorter than the image, or dimensions the chroma subsampling cannot split.
    """
    height, width, step = int(height), int(width), int(step)
    if encoding not in _PACKED and encoding not in _PLANAR:
        raise ValueError(f"unsupported image encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}")
    _check_size(height, width)
    buf = _as_bytes(data)

    if encoding in _PLANAR:
        if height % 2 or width % 2:
            raise ValueError(f"{encoding} needs an even width and height, got {width}x{height}")
        if step < width:
            raise ValueError(f"step {step} is smaller than one {encoding} Y row ({width} bytes)")
        rows = height + height // 2
        if buf.size < step * rows:
            raise ValueError(
                f"{encoding} {width}x{height} with step {step} needs {step * rows} bytes "
                f"(Y plane + UV plane), got {buf.size}"
            )
        view = as_strided(buf, shape=(rows, width), strides=(step, 1), writeable=False)
        return _convert(view, _PLANAR[encoding], encoding)

    channels, depth, code = _PACKED[encoding]
    if encoding in _YUV422 and width % 2:
        raise ValueError(f"{encoding} needs an even width (two pixels share chroma), got {width}")
    _check_rows(encoding, height, width, step, channels * depth, buf)

    if depth == 2:  # mono16 -> 8 bits: keep the high byte (value >> 8), whichever end of the word it is at
        high_byte = 0 if is_bigendian else 1
        view = as_strided(buf[high_byte:], shape=(height, width), strides=(step, 2), writeable=False)
        return _convert(np.ascontiguousarray(view), cv2.COLOR_GRAY2RGB, encoding)

    if channels == 1:
        view = as_strided(buf, shape=(height, width), strides=(step, 1), writeable=False)
    else:
        view = as_strided(buf, shape=(height, width, channels), strides=(step, channels, 1), writeable=False)
    if code is None:  # rgb8: only a copy is needed (compact, writable, detached from the message buffer)
        return np.array(view, dtype=np.uint8, order="C", copy=True)
    return _convert(view, code, encoding)


def _check_rows(encoding: str, height: int, width: int, step: int, pixel_bytes: int, buf: np.ndarray) -> None:
    if step < width * pixel_bytes:
        raise ValueError(f"step {step} is smaller than one {encoding} row ({width} px x {pixel_bytes} B)")
    if buf.size < step * height:
        raise ValueError(f"{encoding} {width}x{height} with step {step} needs {step * height} bytes, got {buf.size}")


def image_view(
    encoding: str,
    height: int,
    width: int,
    step: int,
    data: bytes | bytearray | memoryview | np.ndarray,
    is_bigendian: int = 0,
) -> tuple[np.ndarray, str]:
    """``(image, order)``: an ``H x W x 3`` uint8 image and its channel order (``"rgb"`` or ``"bgr"``).

    ``rgb8`` and ``bgr8`` are not copied: the image is a read-only view of ``data`` in the payload's own channel
    order and row step, valid while ``data`` lives. Every other encoding is decoded as :func:`decode_image` does.
    Raises ``ValueError`` as :func:`decode_image` does.
    """
    if encoding not in ("rgb8", "bgr8"):
        return decode_image(encoding, height, width, step, data, is_bigendian), "rgb"
    height, width, step = int(height), int(width), int(step)
    _check_size(height, width)
    buf = _as_bytes(data)
    _check_rows(encoding, height, width, step, 3, buf)
    return as_strided(buf, shape=(height, width, 3), strides=(step, 3, 1), writeable=False), encoding[:3]


def decode_compressed(fmt: str, data: bytes | bytearray | memoryview | np.ndarray, order: str = "rgb") -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` payload (JPEG, PNG, ... anything cv2.imdecode reads) to RGB.

    ``fmt`` is the message's ``format`` field: ``"jpeg"``, ``"png"``, or image_transport's
    ``"<encoding>; <jpeg|png> compressed <encoding>"``. Whatever the original encoding, the compressed
    stream holds an ordinary image, which OpenCV decodes to BGR; this returns RGB. ``compressedDepth``
    streams (16/32-bit depth with a custom header) are rejected. ``order="bgr"`` returns OpenCV's BGR as is.
    """
    if order not in ("rgb", "bgr"):
        raise ValueError(f"order must be 'rgb' or 'bgr', got {order!r}")
    if "compresseddepth" in fmt.lower().replace(" ", ""):
        raise ValueError(f"compressedDepth images are not supported (format {fmt!r})")
    bgr = _imdecode(fmt, data, cv2.IMREAD_COLOR)
    return bgr if order == "bgr" else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _imdecode(fmt: str, data: bytes | bytearray | memoryview | np.ndarray, flags: int) -> np.ndarray:
    """``cv2.imdecode`` of a CompressedImage payload, with a clear ValueError for empty, corrupt or oversized data."""
    buf = _as_bytes(data)
    if buf.size == 0:
        raise ValueError(f"compressed image ({fmt!r}) has no data")
    try:
        pixels = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        raise ValueError(f"cannot decode compressed image ({fmt!r}, {buf.size} bytes): {exc}") from exc
    if pixels is None or pixels.size == 0:
        raise ValueError(f"cannot decode compressed image ({fmt!r}, {buf.size} bytes): corrupt or unknown format")
    _check_size(pixels.shape[0], pixels.shape[1])
    return pixels


def label_dtype_encoding(dtype: np.dtype | type) -> str:
    """The ``sensor_msgs/Image`` encoding of label maps of ``dtype``: ``uint8`` -> ``"mono8"``, ``uint16`` ->
    ``"mono16"``."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return "mono8"
    if dtype == np.uint16:
        return "mono16"
    raise ValueError(f"labels must be uint8 or uint16, got {dtype}")


def label_encoding(labels: np.ndarray) -> str:
    """The ``sensor_msgs/Image`` encoding of a 2-D label map (:func:`label_dtype_encoding`). Checks the map
    without touching its pixels."""
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D array, got shape {labels.shape}")
    _check_size(labels.shape[0], labels.shape[1])
    return label_dtype_encoding(labels.dtype)


def encode_labels(labels: np.ndarray) -> tuple[str, int, np.ndarray]:
    """A 2-D label map as ``(encoding, step, data)`` for a ``sensor_msgs/Image``; ``data`` is a flat uint8 array
    (a view of ``labels`` when it is already packed: no copy). ``mono16`` is little-endian (``is_bigendian = 0``);
    see :func:`label_encoding`.
    """
    labels = np.asarray(labels)
    encoding = label_encoding(labels)
    if encoding == "mono16":
        labels = labels.astype("<u2", copy=False)
    contiguous = np.ascontiguousarray(labels)
    return encoding, contiguous.strides[0], contiguous.reshape(-1).view(np.uint8)


# ROS 2 compressed_image_transport (ros-perception/image_transport_plugins, compressed_publisher.cpp on the humble and
# rolling branches) writes CompressedImage.format as the raw image's encoding, then "; png compressed " or
# "; jpeg compressed " (trailing space included), then the colour order the codec was given: for PNG "bgr" + bit
# depth for colour images and nothing for mono; for JPEG "bgr8" for colour and "mono8" for mono. Its subscriber
# (compressed_subscriber.cpp) takes the encoding from the text before ';' and reverses the BGR order for rgb* images.
TRANSPORT_CODECS = ("png", "jpeg")
_TRANSPORT_ENCODINGS = {"mono8": 8, "mono16": 16, "rgb8": 8, "bgr8": 8}


def transport_format(encoding: str, codec: str) -> str:
    """The ``sensor_msgs/CompressedImage.format`` ROS 2's compressed_image_transport writes for a ``encoding`` image
    compressed with ``codec`` (``png`` or ``jpeg``), for the encodings this package publishes."""
    if encoding not in _TRANSPORT_ENCODINGS:
        raise ValueError(f"cannot compress {encoding!r}; supported: {', '.join(_TRANSPORT_ENCODINGS)}")
    colour = encoding in ("rgb8", "bgr8")
    if codec == "png":
        return f"{encoding}; png compressed " + (f"bgr{_TRANSPORT_ENCODINGS[encoding]}" if colour else "")
    if codec == "jpeg":
        if _TRANSPORT_ENCODINGS[encoding] != 8:
            raise ValueError(f"jpeg is lossy and 8-bit: {encoding} images are sent as png")
        return f"{encoding}; jpeg compressed " + ("bgr8" if colour else "mono8")
    raise ValueError(f"unknown codec {codec!r}; use one of {', '.join(TRANSPORT_CODECS)}")


# Label maps, masks and colour maps are large areas of one value: filtering each row against the row above leaves
# mostly zero runs, which zlib's run-length strategy packs as small as its default settings do, about 3x faster.
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # older OpenCV: its default filters, as fast as level 1 gets
    _PNG_PARAMS += [cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
    _PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def encode_transport(pixels: np.ndarray, encoding: str, codec: str, quality: int = 90) -> tuple[str, np.ndarray]:
    """``(format, data)`` of the ``sensor_msgs/CompressedImage`` that compressed_image_transport would publish for
    an ``encoding`` image: ``pixels`` is H x W (mono8 uint8, mono16 uint16) or H x W x 3 uint8 **in BGR order**
    whatever ``encoding`` says (the order the codec is given; the format tells the decoder to swap rgb8 back).
    ``quality`` is the JPEG quality (1-100). PNG is lossless, mono16 included (16-bit PNG)."""
    fmt = transport_format(encoding, codec)
    shape = "H x W x 3" if encoding in ("rgb8", "bgr8") else "H x W"
    dtype = np.dtype(np.uint16 if encoding == "mono16" else np.uint8)
    if pixels.dtype != dtype or pixels.ndim != len(shape.split(" x ")) or pixels.shape[2:] not in ((), (3,)):
        raise ValueError(f"{encoding} needs {shape} {dtype} pixels, got {pixels.dtype} {pixels.shape}")
    if codec == "png":
        ok, data = cv2.imencode(".png", pixels, _PNG_PARAMS)
    else:
        ok, data = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode a {encoding} {pixels.shape} image as {codec}")
    return fmt, data.reshape(-1)


def decode_transport(fmt: str, data: bytes | bytearray | memoryview | np.ndarray) -> tuple[np.ndarray, str]:
    """``(pixels, encoding)`` of a compressed_image_transport ``CompressedImage``, as its subscriber restores the
    ``sensor_msgs/Image`` in its default ``mode: unchanged``: the file decoded as stored (mono8 / mono16 / 3-channel),
    the encoding read from ``fmt`` up to ``';'``, and rgb8 images swapped back from the codec's BGR. The exact
    image for PNG; for a format without ``';'`` (older publishers) the encoding follows the channel count."""
    pixels = _imdecode(fmt, data, cv2.IMREAD_UNCHANGED)
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if ";" not in fmt:
        return pixels, ("mono8" if channels == 1 else "bgr8")
    encoding, rest = fmt.split(";", 1)
    if encoding in ("rgb8", "rgb16") and "compressed bgr" in rest and channels == 3:
        pixels = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
    return pixels, encoding


def rgb_to_bgr(image: np.ndarray) -> np.ndarray:
    """Swap the channel order of an ``H x W x 3`` image (RGB <-> BGR), returning a C-contiguous copy."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 image, got shape {image.shape}")
    return np.ascontiguousarray(image[:, :, ::-1])
