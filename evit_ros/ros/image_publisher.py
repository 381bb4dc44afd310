"""Publish numpy images as ``sensor_msgs/Image`` with the fewest copies of the pixels the platform allows.

rclpy's ways to publish a 1080p image each copy it more than once on the way in: a message is converted to C
and serialized (two full copies); ``Publisher.publish(bytes)`` needs the serialized bytes built in Python (one
copy) and hands them to rcl as a ``std::string`` argument (a second copy, made while holding the GIL).

:class:`ImagePublisher` writes the serialized message once into a buffer it keeps and reuses, then hands that
buffer to rcl (:func:`evit_ros.ros.rcl_serialized.publish_serialized`: the GIL is released while the middleware
copies it). Where that is not available it falls back, once per process, to the next cheapest path: serialized
``bytes`` where rclpy reads this package's CDR back (:func:`~evit_ros.ros.conversions.cdr_round_trips`), else
messages.

:meth:`ImagePublisher.loan` goes one copy further: it lends the message's own pixel buffer, so a computed image
(labels, an overlay) is written straight into the message instead of into an array that is then copied there.
A 1080p image does not fit in the CPU's caches, so every copy of it costs a pass over main memory.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np
from rclpy.publisher import Publisher
from std_msgs.msg import Header

from evit_ros.io.encodings import label_encoding
from evit_ros.ros import rcl_serialized
from evit_ros.ros.conversions import array_to_cdr, array_to_msg, cdr_image_prefix, cdr_round_trips

__all__ = ["PUBLISH_PATHS", "ImagePublisher", "publish_path"]

PUBLISH_PATHS = ("rcl", "serialized", "message")


def publish_path() -> str:
    """How this process publishes images: ``rcl`` (one copy into a reused buffer), ``serialized`` (bytes) or
    ``message``."""
    if not cdr_round_trips():
        return "message"
    return "rcl" if rcl_serialized.available() else "serialized"


class ImagePublisher:
    """A ``sensor_msgs/Image`` publisher fed with numpy arrays (see the module docstring).

    ``path`` forces one of :data:`PUBLISH_PATHS` (tests); by default the cheapest that works here. Safe to call
    from several threads: one at a time fills and sends this publisher's buffer.
    """

    def __init__(self, publisher: Publisher, path: str | None = None) -> None:
        if path is not None and path not in PUBLISH_PATHS:
            raise ValueError(f"unknown publish path {path!r}; use one of {', '.join(PUBLISH_PATHS)}")
        self.publisher = publisher
        self.path = path or publish_path()
        if self.path == "rcl" and not hasattr(publisher.handle, "pointer"):  # an rclpy without the rcl address
            self.path = "serialized"
        self._buffer = np.empty(0, np.uint8)
        self._lock = threading.Lock()

    def publish(self, pixels: np.ndarray, encoding: str, header: Header | None = None) -> None:
        """Publish ``pixels`` (H x W or H x W x C, any strides) as ``encoding``, packed rows, little-endian."""
        if pixels.ndim < 2 or pixels.shape[0] == 0 or pixels.shape[1] == 0:
            raise ValueError(f"image is empty or not 2-D: shape {pixels.shape}")
        pixels = pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)  # is_bigendian is 0
        if self.path == "message":
            self.publisher.publish(array_to_msg(pixels, encoding, header))
        elif self.path == "serialized":
            self.publisher.publish(array_to_cdr(pixels, encoding, header))
        else:
            self._publish_rcl(pixels, encoding, header)

    def publish_labels(self, labels: np.ndarray, header: Header | None = None) -> None:
        """Publish a label map as mono8 / mono16 (see :func:`evit_ros.io.encodings.label_encoding`); the pixels are
        copied once, straight into the message, whatever their strides."""
        self.publish(labels, label_encoding(labels), header)

    @contextlib.contextmanager
    def loan(
        self, shape: tuple[int, ...], dtype: np.dtype | type, encoding: str, header: Header | None = None
    ) -> Iterator[np.ndarray]:
        """An uninitialised ``shape`` array of ``dtype`` (little-endian) to fill inside the ``with`` block; on a
        normal exit it is published as ``encoding`` with ``header``, after an exception it is not.

        Through rcl the array is this message's own pixel buffer, so filling it is the pixels' only copy before the
        middleware's; on the other paths it is a new array, published as :meth:`publish` would. Either way it stays
        readable after the block until this publisher's next ``publish`` or ``loan``, which may reuse the buffer.
        """
        shape = tuple(int(n) for n in shape)
        if len(shape) < 2 or shape[0] <= 0 or shape[1] <= 0:
            raise ValueError(f"image is empty or not 2-D: shape {shape}")
        dtype = np.dtype(dtype).newbyteorder("<")
        if self.path != "rcl":
            pixels = np.empty(shape, dtype)
            yield pixels
            self.publish(pixels, encoding, header)
            return
        with self._lock:
            buf, start, total = self._message_buffer(shape, dtype, encoding, header)
            yield buf[start:total].view(dtype).reshape(shape)
            rcl_serialized.publish_serialized(self.publisher, buf, total)

    def _message_buffer(
        self, shape: tuple[int, ...], dtype: np.dtype, encoding: str, header: Header | None
    ) -> tuple[np.ndarray, int, int]:
        """This publisher's buffer holding the serialized message up to its pixels; (buffer, pixels' offset, message
        length). The caller holds the lock."""
        nbytes = int(np.prod(shape)) * dtype.itemsize
        prefix = cdr_image_prefix(header, shape[0], shape[1], encoding, nbytes // shape[0], nbytes)
        total = len(prefix) + nbytes
        if self._buffer.size < total:
            self._buffer = np.empty(total, np.uint8)
        self._buffer[: len(prefix)] = np.frombuffer(prefix, np.uint8)
        # The pixels' offset is a multiple of 4 from the buffer's start, so any pixel type lies aligned.
        return self._buffer, len(prefix), total

    def _publish_rcl(self, pixels: np.ndarray, encoding: str, header: Header | None) -> None:
        with self.loan(pixels.shape, pixels.dtype, encoding, header) as message_pixels:
            np.copyto(message_pixels, pixels)
