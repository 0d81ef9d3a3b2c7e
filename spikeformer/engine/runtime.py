"""Process-wide runtime settings of the trainer and evaluator."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_applied = False


def reuse_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the OS.

    A training step allocates and frees the same large activation tensors every time. By default glibc serves
    allocations above a threshold (at most 32 MB) with fresh ``mmap`` pages and unmaps them on free, and trims the
    heap top, so every step pays a page fault (and the kernel's zeroing) per 4 KB touched: on the benchmark machine
    that made a bf16 Spikformer-4-384 step about 10-15 % slower (``benchmarks/RESULTS.md``). Raising both
    thresholds lets the heap be reused; peak memory is unchanged (the same tensors are live at the peak), but the
    process does not give memory back until it exits. Linux with glibc only; a no-op elsewhere. Returns whether
    the settings were applied."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _applied = bool(ok)
    return _applied
