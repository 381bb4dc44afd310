"""Latest-frame slots for one or more cameras, served in turn by one worker (no ROS here).

Each camera has a depth-1 slot: a frame the worker has not taken yet is replaced by a newer one (counted as
dropped), so a camera faster than the network never builds a queue. The worker takes the ready frames in
round-robin order starting after the camera it served last, so with every camera faster than the network each
one is served equally often, and a camera with nothing in its slot is simply skipped: a silent camera never
holds the others up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

__all__ = ["FrameSlot", "RoundRobinSlots"]


class FrameSlot:
    """A one-frame mailbox: ``put`` replaces an untaken frame (counted as dropped), ``take`` waits for one.

    Slots of one :class:`RoundRobinSlots` share its condition variable, so one worker can wait on all of them.
    """

    def __init__(self, cond: threading.Condition | None = None) -> None:
        self._cond = cond if cond is not None else threading.Condition()
        self._item = None
        self.dropped = 0
        self.last_put = float("-inf")  # time.monotonic() of the newest frame
        self._closed = False

    def put(self, item) -> bool:
        """Store ``item``; True when it replaced a frame the worker never took."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self.last_put = time.monotonic()
            self._cond.notify_all()
            return replaced

    def take(self, timeout: float):
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            return self._pop()

    @property
    def ready(self) -> bool:
        return self._item is not None

    def _pop(self):
        item, self._item = self._item, None
        return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class RoundRobinSlots:
    """One :class:`FrameSlot` per camera and the fair, batching ``take`` of the one worker that serves them."""

    def __init__(self, count: int, active_window_s: float = 1.0) -> None:
        if count < 1:
            raise ValueError(f"need at least one camera, got {count}")
        self._cond = threading.Condition()
        self.slots: Sequence[FrameSlot] = tuple(FrameSlot(self._cond) for _ in range(count))
        self._next = 0
        self._closed = False
        self.active_window_s = active_window_s

    def _ready(self) -> list[int]:
        return [i for i, slot in enumerate(self.slots) if slot.ready]

    def _active(self, now: float) -> int:
        return sum(1 for s in self.slots if s.ready or now - s.last_put <= self.active_window_s)

    def take(self, max_frames: int, fill_wait_s: float = 0.0, timeout: float = 0.1) -> list[tuple[int, object]]:
        """Up to ``max_frames`` ``(camera index, frame)`` pairs, in round-robin order; [] after ``timeout`` s
        without a frame, or once closed.

        With ``fill_wait_s`` > 0, once one frame is ready this waits at most that long for more, but only for
        cameras that sent a frame within ``active_window_s``: a camera that stopped is not waited for.
        """
        if max_frames < 1:
            raise ValueError(f"max_frames must be at least 1, got {max_frames}")
        with self._cond:
            if not self._cond.wait_for(lambda: self._closed or bool(self._ready()), timeout) or self._closed:
                return []
            if fill_wait_s > 0:
                deadline = time.monotonic() + fill_wait_s
                target = min(max_frames, self._active(time.monotonic()))
                while not self._closed and len(self._ready()) < target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            taken: list[tuple[int, object]] = []
            n = len(self.slots)
            for k in range(n):
                index = (self._next + k) % n
                if self.slots[index].ready:
                    taken.append((index, self.slots[index]._pop()))
                    if len(taken) == max_frames:
                        break
            if taken:
                self._next = (taken[-1][0] + 1) % n
            return taken

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for slot in self.slots:
                slot._closed = True
            self._cond.notify_all()
