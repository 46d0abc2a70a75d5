"""Process-wide settings of the CPU runtime that training depends on for speed (docs/design.md
section 6, "Performance").

:func:`keep_freed_memory`: glibc's ``malloc`` hands every block above its mmap threshold (128 KiB
at first, raised adaptively) to the kernel on ``free`` and maps fresh pages for the next one. A
training step allocates and frees tensors of a few MiB each (log-scores, responsibilities,
gradients), so each step would fault in tens of MiB of new zeroed pages: about 6,000 page faults
per step for topology E at batch 100, a sixth of its step time. Serving those sizes from the heap
and keeping freed memory in the process makes the steps fault-free; the cost is that the
resident size stays at its peak instead of shrinking between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1024 * 1024 * 1024  # free memory kept before the heap is given back


@functools.cache
def keep_freed_memory() -> bool:
    """Serve allocations below 32 MiB from the heap and keep up to 1 GiB of freed heap memory in
    the process (glibc's ``mallopt``); once per process. Returns False where the C library is not
    glibc (macOS, Windows, musl), which keeps its own allocator behaviour."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; setting M_MMAP_THRESHOLD also ends glibc's adaptive threshold
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
