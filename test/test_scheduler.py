"""The latest-frame slots and the round-robin worker scheduling of seg_node (pure Python, real threads)."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from evit_ros.ros.scheduler import FrameSlot, RoundRobinSlots


def test_slot_keeps_only_the_newest_frame():
    slot = FrameSlot()
    assert slot.put("a") is False
    assert slot.put("b") is True and slot.put("c") is True
    assert slot.dropped == 2
    assert slot.take(0.0) == "c"
    assert slot.take(0.0) is None


@pytest.mark.parametrize("max_frames", [1, 2, 3, 4])
def test_every_camera_is_served_equally_when_all_are_always_ready(max_frames):
    slots = RoundRobinSlots(4)
    served = Counter()
    for _ in range(60):
        for i, slot in enumerate(slots.slots):  # every camera faster than the worker: all slots refilled
            slot.put(i)
        taken = slots.take(max_frames)
        assert len(taken) == max_frames
        assert len({i for i, _ in taken}) == max_frames  # one frame per camera per batch
        served.update(i for i, _ in taken)
    assert max(served.values()) - min(served.values()) <= 1, served


def test_round_robin_resumes_after_the_last_camera_served():
    slots = RoundRobinSlots(3)
    for i in range(3):
        slots.slots[i].put(i)
    assert [i for i, _ in slots.take(2)] == [0, 1]
    for i in range(2):
        slots.slots[i].put(i)
    assert [i for i, _ in slots.take(2)] == [2, 0]  # camera 2 first: it waited the longest


def test_a_silent_camera_is_skipped_and_a_busy_one_does_not_starve_a_slow_one():
    slots = RoundRobinSlots(3)
    served = Counter()
    for step in range(90):
        slots.slots[0].put("busy")
        if step % 3 == 0:
            slots.slots[1].put("slow")
        # camera 2 never publishes
        taken = slots.take(1)
        served.update(i for i, _ in taken)
    assert served[2] == 0
    assert served[1] == 30  # every frame the slow camera sent was served
    assert served[0] == 60


def test_fill_wait_does_not_wait_for_a_camera_that_never_sent():
    """A batch-fill wait of 1000 s must end at once when the only missing camera is silent."""
    slots = RoundRobinSlots(3)
    slots.slots[0].put("a")
    slots.slots[1].put("b")
    result = []
    worker = threading.Thread(target=lambda: result.append(slots.take(3, fill_wait_s=1000.0, timeout=1000.0)))
    worker.start()
    worker.join(60)
    alive = worker.is_alive()
    slots.close()
    worker.join(5)
    assert not alive, "take() waited for a camera that never sent a frame"
    assert sorted(i for i, _ in result[0]) == [0, 1]


def test_fill_wait_collects_a_frame_from_an_active_camera():
    slots = RoundRobinSlots(2)
    slots.slots[1].put("earlier")  # camera 1 is active
    assert slots.take(1) == [(1, "earlier")]
    slots.slots[0].put("a")
    got = []
    worker = threading.Thread(target=lambda: got.append(slots.take(2, fill_wait_s=1000.0, timeout=1000.0)))
    worker.start()
    slots.slots[1].put("b")  # arrives during the wait: one batch of two
    worker.join(60)
    slots.close()
    assert got and sorted(i for i, _ in got[0]) == [0, 1]


def test_close_wakes_a_waiting_worker():
    slots = RoundRobinSlots(2)
    got = []
    worker = threading.Thread(target=lambda: got.append(slots.take(2, timeout=1000.0)))
    worker.start()
    slots.close()
    worker.join(60)
    assert not worker.is_alive() and got == [[]]


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one camera"):
        RoundRobinSlots(0)
    with pytest.raises(ValueError, match="max_frames"):
        RoundRobinSlots(1).take(0)
