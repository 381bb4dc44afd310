"""Serialized messages in and out through rcl's public C API, without rclpy's Python ``bytes`` in between.

rclpy moves a serialized message through a Python ``bytes`` object both ways: ``Publisher.publish(bytes)`` copies
it into a ``std::string`` before ``rcl_publish_serialized_message``, and a ``raw=True`` subscription copies what
``rcl_take_serialized_message`` took into a new ``bytes``, both while holding the GIL. For a 1080p frame each copy
is about a millisecond on a small CPU. This module makes the same two rcl calls (``rcl/publisher.h``,
``rcl/subscription.h``) through ctypes, on the rcl objects whose addresses rclpy exposes as ``handle.pointer``,
from the librcl this process already loaded; ctypes releases the GIL during each call.

- :func:`publish_serialized`: publish a buffer the caller owns and may reuse once the call returns. rclpy's own
  ``publish_raw`` frees its buffer right after the same call (``rclpy/src/rclpy/publisher.cpp``), so every
  middleware has copied the data by then; rmw_fastrtps writes it into the DataWriter's history.
- :class:`SerializedSubscription`: a subscription whose callback gets a ``memoryview`` of the buffer the
  middleware copied the message into (allocated with rcutils' default allocator, freed when the last view of it
  goes). It is an rclpy ``Waitable``: the executor waits on the rcl subscription through it, and it takes the
  message itself. The rclpy ``Subscription`` it wraps is kept off the node's list of subscriptions, so that no
  executor handles it as one of the node's: rclpy's experimental ``EventsExecutor`` would otherwise register the
  same rcl subscription twice and abort the process, and the wait-set executors would take from it themselves.

:func:`available` says whether this works here; callers fall back to rclpy's own paths otherwise.
``EVIT_ROS_DIRECT_RCL=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import functools
import os
import weakref
from collections.abc import Callable

from rclpy.callback_groups import CallbackGroup
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.qos import QoSProfile
from rclpy.waitable import NumberOfEntities, Waitable

__all__ = ["SerializedSubscription", "available", "destroy_serialized_subscriptions", "publish_serialized"]

_RCL_RET_OK = 0
_RCL_RET_SUBSCRIPTION_TAKE_FAILED = 401  # rcl/types.h: nothing to take, no error
_MESSAGE_INFO_BYTES = 512  # room for rmw_message_info_t (under 100 bytes in every distro), filled by rmw


class _Allocator(ctypes.Structure):
    # rcutils_allocator_t (rcutils/allocator.h)
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


class _ErrorString(ctypes.Structure):
    # rcutils_error_string_t (rcutils/error_handling.h: RCUTILS_ERROR_MESSAGE_MAX_LENGTH is 1024)
    _fields_ = [("str", ctypes.c_char * 1024)]


_DEALLOCATE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)


def _loaded_library(stem: str) -> str | None:
    """The path of the library ``<stem>.so*`` this process has loaded, from its memory map (Linux)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                path = line.rstrip("\n").split(maxsplit=5)[-1]
                name = os.path.basename(path)
                if name.startswith(stem + ".so"):
                    return path
    except OSError:
        pass
    return None


def _function(stem: str, name: str, argtypes: list, restype):
    for library in (_loaded_library(stem), stem + ".so"):
        if not library:
            continue
        try:
            function = getattr(ctypes.CDLL(library), name)
        except (OSError, AttributeError):
            continue
        function.argtypes, function.restype = argtypes, restype
        return function
    return None


@functools.lru_cache(maxsize=1)
def _rcl() -> dict | None:
    """The rcl and rcutils functions used here, from the libraries rclpy loaded; None where any is missing."""
    if os.environ.get("EVIT_ROS_DIRECT_RCL", "1") == "0":
        return None
    import rclpy.publisher  # noqa: F401 - rclpy's extension is what loads librcl and librcutils

    message = ctypes.POINTER(_SerializedMessage)
    functions = {
        "publish": _function("librcl", "rcl_publish_serialized_message",
                             [ctypes.c_void_p, message, ctypes.c_void_p], ctypes.c_int),
        "take": _function("librcl", "rcl_take_serialized_message",
                          [ctypes.c_void_p, message, ctypes.c_void_p, ctypes.c_void_p], ctypes.c_int),
        "default_allocator": _function("librcutils", "rcutils_get_default_allocator", [], _Allocator),
        "error_string": _function("librcutils", "rcutils_get_error_string", [], _ErrorString),
        "reset_error": _function("librcutils", "rcutils_reset_error", [], None),
    }  # fmt: skip
    return functions if all(functions.values()) else None


def available() -> bool:
    """Whether rcl's serialized publish and take can be called directly in this process."""
    return _rcl() is not None


def _take_error_message() -> str:
    """The message rcl set for the call that just failed, and the error state cleared. The state is per thread
    (ctypes runs the call in this one); left set, the next failure would also print an "overwriting" warning."""
    functions = _rcl()
    message = functions["error_string"]().str.decode("utf-8", "replace")
    functions["reset_error"]()
    return message


def publish_serialized(publisher: Publisher, buffer: memoryview | bytearray, length: int) -> None:
    """Publish the first ``length`` bytes of ``buffer`` (a serialized message of the publisher's type) through
    ``rcl_publish_serialized_message``; ``buffer`` may be reused once this returns."""
    view = (ctypes.c_uint8 * length).from_buffer(buffer)
    message = _SerializedMessage(ctypes.addressof(view), length, length)
    with publisher.handle:
        status = _rcl()["publish"](publisher.handle.pointer, ctypes.byref(message), None)
    if status != _RCL_RET_OK:
        raise RuntimeError(
            f"rcl_publish_serialized_message failed on {publisher.topic_name} (rcl {status}: {_take_error_message()})"
        )


class _NeverRun(CallbackGroup):
    """A callback group the executor never runs: its entities are neither waited on nor taken from by it."""

    def can_execute(self, entity) -> bool:
        return False

    def beginning_execution(self, entity) -> bool:
        return False

    def ending_execution(self, entity) -> None:
        pass


class SerializedSubscription(Waitable):
    """A subscription delivering each message serialized, as a ``memoryview`` of the buffer rmw took it into
    (see the module docstring). Created on ``node`` and added to it; :meth:`destroy` removes both. It must be
    called (or :func:`destroy_serialized_subscriptions`) before ``node.destroy_node()``, which does not know of
    the subscription."""

    def __init__(
        self,
        node: Node,
        msg_type,
        topic: str,
        callback: Callable[[memoryview], None],
        qos: QoSProfile,
        callback_group: CallbackGroup | None = None,
    ) -> None:
        super().__init__(callback_group or node.default_callback_group)
        self.node = node
        self.callback = callback
        # rclpy's subscription is the rcl object; this waitable alone waits on it and takes from it.
        self.subscription = node.create_subscription(
            msg_type, topic, _never_called, qos, callback_group=_NeverRun(), raw=True
        )
        self._node_subscriptions = _detach(node, self.subscription)
        self._destroyed = False
        self._index: int | None = None
        self._ready = False
        self._info = ctypes.create_string_buffer(_MESSAGE_INFO_BYTES)
        node.add_waitable(self)

    @property
    def topic_name(self) -> str:
        return self.subscription.topic_name

    def get_publisher_count(self) -> int:
        return self.node.count_publishers(self.subscription.topic_name)

    # rclpy Waitable API
    def __enter__(self) -> None:
        self.subscription.handle.__enter__()

    def __exit__(self, *exc) -> None:
        self.subscription.handle.__exit__(*exc)

    def get_num_entities(self) -> NumberOfEntities:
        return NumberOfEntities(1)  # one subscription (positional: the keyword differs between distros)

    def add_to_wait_set(self, wait_set) -> None:
        self._index = wait_set.add_subscription(self.subscription.handle)

    def is_ready(self, wait_set) -> bool:
        if self._index is not None and wait_set.is_ready("subscription", self._index):
            self._ready = True
        return self._ready

    def take_data(self) -> memoryview | None:
        if not self._ready:
            return None
        self._ready = False
        functions = _rcl()
        allocator = functions["default_allocator"]()
        message = _SerializedMessage(None, 0, 0, allocator)  # rmw allocates exactly what the message needs
        with self.subscription.handle:
            status = functions["take"](self.subscription.handle.pointer, ctypes.byref(message), self._info, None)
        if status == _RCL_RET_SUBSCRIPTION_TAKE_FAILED:
            return None
        if status != _RCL_RET_OK:  # logged, not raised: an exception here would stop the executor's spin
            error = _take_error_message()
            self.node.get_logger().error(
                f"rcl_take_serialized_message failed on {self.topic_name} (rcl {status}: {error})",
                throttle_duration_sec=5.0,
            )
            return None
        return _owned_view(message)

    async def execute(self, taken_data: memoryview | None) -> None:
        if taken_data is not None:
            self.callback(taken_data)

    def destroy(self) -> None:
        """Remove the waitable from the node and destroy the subscription. ``Node.destroy_node`` does neither, as
        the subscription is not on the node's list: owners call this first. Calling it again does nothing."""
        if self._destroyed:
            return
        self._destroyed = True
        self.node.remove_waitable(self)
        if self._node_subscriptions is not None:  # back on the node's list, so the node destroys it its own way
            self._node_subscriptions.append(self.subscription)
        self.node.destroy_subscription(self.subscription)


def destroy_serialized_subscriptions(node: Node) -> None:
    """Destroy every :class:`SerializedSubscription` on ``node``; call it before ``node.destroy_node()``."""
    for waitable in list(node.waitables):
        if isinstance(waitable, SerializedSubscription):
            waitable.destroy()


def _detach(node: Node, subscription) -> list | None:
    """Take ``subscription`` off ``node``'s own list (``Node.subscriptions``); returns that list, or None where
    this rclpy keeps it under another name. rclpy has no public call for this: the list is ``_subscriptions`` in
    Kilted, the first release with the ``EventsExecutor``, and ``_Node__subscriptions`` in older ones. Where
    neither is found the subscription stays listed, in a callback group that keeps the wait-set executors from
    taking from it."""
    for name in ("_subscriptions", "_Node__subscriptions"):
        subscriptions = getattr(node, name, None)
        if isinstance(subscriptions, list) and subscription in subscriptions:
            subscriptions.remove(subscription)
            return subscriptions
    return None


def _never_called(_message) -> None:
    raise AssertionError("the executor took from a subscription that SerializedSubscription owns")


def _owned_view(message: _SerializedMessage) -> memoryview:
    """A view of the buffer rmw allocated for ``message``, freed with its allocator once no view of it is left."""
    deallocate = _DEALLOCATE(message.allocator.deallocate)
    if not message.buffer or message.buffer_length == 0:
        if message.buffer:
            deallocate(message.buffer, message.allocator.state)
        return memoryview(b"")
    array = (ctypes.c_uint8 * message.buffer_length).from_address(message.buffer)
    weakref.finalize(array, deallocate, message.buffer, message.allocator.state)
    return memoryview(array).cast("B")
