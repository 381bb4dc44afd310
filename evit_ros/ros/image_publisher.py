"""Publish numpy images as ``sensor_msgs/Image`` with the fewest copies of the pixels the platform allows.

rclpy's ways to publish a 1080p image each copy it more than once on the way in: a message is converted to C
and serialized (two full copies); ``Publisher.publish(bytes)`` needs the serialized bytes built in Python (one
copy) and hands them to rcl as a ``std::string`` argument (a second copy, made while holding the GIL).

:class:`ImagePublisher` writes the serialized message once into a buffer it keeps and reuses, then passes that
buffer to rcl's public C function ``rcl_publish_serialized_message`` (``rcl/publisher.h``) through ctypes, which
releases the GIL while the middleware copies it. It is the call rclpy's own ``publish_raw`` makes
(``rclpy/src/rclpy/publisher.cpp``), given the pointer that rclpy exposes as ``Publisher.handle.pointer``. rclpy
frees its own buffer as soon as that call returns, so every middleware has copied the data by then and the buffer
may be reused; rmw_fastrtps's ``__rmw_publish_serialized_message`` writes it into the DataWriter's history
before it returns.

Where this cannot be used it falls back, once per process, to the next cheapest path: serialized ``bytes`` where
rclpy reads this package's CDR back (:func:`~evit_ros.ros.conversions.cdr_round_trips`), else messages. The
environment variable ``EVIT_ROS_DIRECT_PUBLISH=0`` turns the rcl path off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import threading

import numpy as np
from rclpy.publisher import Publisher
from std_msgs.msg import Header

from evit_ros.io.encodings import encode_labels
from evit_ros.ros.conversions import array_to_cdr, array_to_msg, cdr_image_prefix, cdr_round_trips

__all__ = ["PUBLISH_PATHS", "ImagePublisher", "publish_path"]

PUBLISH_PATHS = ("rcl", "serialized", "message")


class _Allocator(ctypes.Structure):
    # rcutils_allocator_t (rcutils/allocator.h); unused by the publish call, zero here.
    _fields_ = [
        ("allocate", ctypes.c_void_p),
        ("deallocate", ctypes.c_void_p),
        ("reallocate", ctypes.c_void_p),
        ("zero_allocate", ctypes.c_void_p),
        ("state", ctypes.c_void_p),
    ]


class _SerializedMessage(ctypes.Structure):
    # rcl_serialized_message_t = rmw_serialized_message_t = rcutils_uint8_array_t (rcutils/types/uint8_array.h)
    _fields_ = [
        ("buffer", ctypes.c_void_p),
        ("buffer_length", ctypes.c_size_t),
        ("buffer_capacity", ctypes.c_size_t),
        ("allocator", _Allocator),
    ]


def _loaded_librcl() -> str | None:
    """The path of the librcl this process already uses (rclpy loaded it), from the process's memory map."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                if os.path.basename(path).split(".so")[0] == "librcl" and ".so" in path:
                    return path
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=1)
def _rcl_publish_serialized():
    """``rcl_publish_serialized_message`` from the loaded librcl, or None."""
    if os.environ.get("EVIT_ROS_DIRECT_PUBLISH", "1") == "0":
        return None
    import rclpy.publisher  # noqa: F401 - rclpy's extension is what loads librcl

    for name in (_loaded_librcl(), "librcl.so"):
        if not name:
            continue
        try:
            function = ctypes.CDLL(name).rcl_publish_serialized_message
        except (OSError, AttributeError):
            continue
        function.argtypes = [ctypes.c_void_p, ctypes.POINTER(_SerializedMessage), ctypes.c_void_p]
        function.restype = ctypes.c_int  # rcl_ret_t; RCL_RET_OK == 0
        return function
    return None


def publish_path() -> str:
    """How this process publishes images: ``rcl`` (one copy into a reused buffer), ``serialized`` (bytes) or
    ``message``."""
    if not cdr_round_trips():
        return "message"
    return "serialized" if _rcl_publish_serialized() is None else "rcl"


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
        """Publish a label map as mono8 / mono16 (see :func:`evit_ros.io.encodings.encode_labels`)."""
        encoding = encode_labels(labels)[0]
        self.publish(labels, encoding, header)

    def _publish_rcl(self, pixels: np.ndarray, encoding: str, header: Header | None) -> None:
        height, width = pixels.shape[:2]
        nbytes = pixels.size * pixels.itemsize
        prefix = cdr_image_prefix(header, height, width, encoding, nbytes // height, nbytes)
        total = len(prefix) + nbytes
        with self._lock:
            if self._buffer.size < total:
                self._buffer = np.empty(total, np.uint8)
            buf = self._buffer
            buf[: len(prefix)] = np.frombuffer(prefix, np.uint8)
            # The pixels' offset is a multiple of 4 from the buffer's start, so any pixel type lies aligned.
            np.copyto(buf[len(prefix) : total].view(pixels.dtype).reshape(pixels.shape), pixels)
            message = _SerializedMessage(buf.ctypes.data, total, total)
            with self.publisher.handle:
                status = _rcl_publish_serialized()(self.publisher.handle.pointer, ctypes.byref(message), None)
        if status != 0:
            raise RuntimeError(f"rcl_publish_serialized_message failed on {self.publisher.topic_name} (rcl {status})")
