"""Keep freed frame-sized buffers in the process instead of handing them back to the kernel after every frame.

glibc serves each allocation above its mmap threshold with a fresh mmap and unmaps it on free, and trims the
heap top once it holds more than the trim threshold. A frame's working set (the 1080p frame, the labels, the
overlay, the output messages, post-processing temporaries: tens of MB in buffers of 0.5-8 MB) then costs
thousands of page faults per frame, every frame: about 3 ms of the refined post-processing alone at 1080p on a
2-core machine, and more across a node's whole frame path. Raising both thresholds lets the heap reuse those
pages. The cost: up to ``trim_threshold`` bytes of freed memory stay resident for reuse.

The process entry points (``seg_node``, ``evit-ros``) call :func:`retain_freed_memory` at start-up; a library
user with a long-running frame loop can call it too. It changes nothing on C libraries other than glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os

log = logging.getLogger(__name__)

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # glibc's largest accepted value on 64-bit; larger blocks are rare one-offs
TRIM_THRESHOLD = 128 << 20
DISABLE_ENV = "EVIT_ROS_RETAIN_FREED_MEMORY"  # "0": leave the C library's defaults alone


@functools.lru_cache(maxsize=1)
def retain_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True when they were set.

    False, with nothing changed, on other C libraries, where ``EVIT_ROS_RETAIN_FREED_MEMORY=0``, or where the
    environment already sets glibc's own ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (the user's
    choice wins).
    """
    if os.environ.get(DISABLE_ENV, "1") == "0":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        gnu_get_libc_version = libc.gnu_get_libc_version
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return False
    gnu_get_libc_version.restype = ctypes.c_char_p
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        log.debug("glibc %s refused the malloc thresholds", gnu_get_libc_version().decode())
    return ok
