"""Allocator settings for worker processes.

A secure-computation worker allocates and frees arrays of megabytes many times per query (every protocol step
makes new shares, masks and messages).  glibc's malloc serves blocks above its mmap threshold with fresh
`mmap`s and returns them with `munmap`, and gives freed heap memory back to the system above its trim
threshold; either way the next array of that size page-faults all of its pages in again, which the kernel also
zeroes.  On a CNN batch-128 query that was ~7% of a server's CPU (page faults and `clear_page`), and the whole
query took ~8% longer than with the settings below (three servers on two cores, measured by alternating runs).

`tune_allocator` keeps such blocks in the heap and the freed heap mapped, so a worker's memory is reused
across protocol steps.  The cost is that a worker keeps up to `TRIM_THRESHOLD_BYTES` of freed memory after a
large query instead of returning it.  Only workers call it (they are our processes); a library must not change
the allocator of its user's process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["MMAP_THRESHOLD_BYTES", "TOP_PAD_BYTES", "TRIM_THRESHOLD_BYTES", "tune_allocator"]

_log = logging.getLogger(__name__)

# mallopt parameters from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3

# The largest mmap threshold glibc accepts on 64-bit systems (HEAP_MAX_SIZE / 2): arrays up to 32 MiB (4M ring
# elements) come from the heap.
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# Freed memory at the top of the heap is given back only above this.
TRIM_THRESHOLD_BYTES = 512 * 1024 * 1024
# Extra room taken whenever the heap grows, so that a growing working set does not grow it page by page.
TOP_PAD_BYTES = 64 * 1024 * 1024


def tune_allocator() -> bool:
    """Applies the settings above to this process's glibc malloc; returns whether it could.

    Off glibc (musl, macOS) it changes nothing and returns False: those allocators have no such knobs, and the
    worker is correct without them, only slower.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        _log.info("allocator tuning skipped: no mallopt in this C library (%s)", name)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
        (_M_TOP_PAD, TOP_PAD_BYTES),
    )
    ok = all(mallopt(param, value) == 1 for param, value in settings)
    if not ok:
        _log.warning("allocator tuning: mallopt refused a setting; the worker runs with glibc's defaults")
    return ok
