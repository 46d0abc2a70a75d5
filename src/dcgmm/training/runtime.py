"""Process-wide settings of the runtime that training depends on for speed and reported numbers
depend on for accuracy (docs/design.md section 6, "Performance").

:func:`flush_denormals`: responsibilities far below 1e-38 are subnormal floats, on which CPU
arithmetic is many times slower; flushing them to zero changes no result beyond 1e-38. The switch
(FTZ/DAZ of x86's MXCSR) belongs to each thread, and a thread starts with its creator's: set on the
main thread after torch's worker threads exist, it leaves them computing with subnormals. With two
threads, topology C's epochs then slowed from 6.6 s to 17 s over 5 epochs as the responsibilities
sharpened (2-core Intel Xeon); set before the workers start, they stayed at 6.5-7 s. The entry
points therefore call it before anything else, the training task and the module again.

:func:`keep_freed_memory`: glibc's ``malloc`` hands every block above its mmap threshold (128 KiB
at first, raised adaptively) to the kernel on ``free`` and maps fresh pages for the next one. A
training step allocates and frees tensors of a few MiB each (log-scores, responsibilities,
gradients), so each step would fault in tens of MiB of new zeroed pages: about 6,000 page faults
per step for topology E at batch 100, a sixth of its step time. Serving those sizes from the heap
and keeping freed memory in the process makes the steps fault-free; the cost is that the
resident size stays at its peak instead of shrinking between steps.

:func:`exact_float32` / :func:`set_tf32`: on NVIDIA GPUs since Ampere, PyTorch runs float32
convolutions through cuDNN in TF32 by default (10-bit mantissa), and matrix products too after
``torch.set_float32_matmul_precision("high")``. The GMM log-scores are such products and
convolutions over hundreds or thousands of input dimensions; in TF32 a reported log-likelihood,
bound or bits/dim moves by far more than float32's rounding. Evaluation therefore always runs in
IEEE float32 (:class:`dcgmm.app.module.DCGMMModule`'s evaluation hooks, the estimator's scoring), and
training uses TF32 only when asked (``model.tf32=true``). On the CPU these switches change nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import platform
import sys
from collections.abc import Iterator
from pathlib import Path

import torch

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1024 * 1024 * 1024  # free memory kept before the heap is given back


def flush_denormals() -> None:
    """Flush subnormal floats to zero on this thread, and so on every worker thread torch starts
    after it (they inherit the setting); call it before the first parallel operation."""
    torch.set_flush_denormal(True)


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


def _tf32_switches() -> list[tuple[object, str, object, object]]:
    """``(backend, attribute, TF32 value, IEEE value)`` of CUDA matrix products and cuDNN
    convolutions: the per-backend ``fp32_precision`` where this torch has it, else ``allow_tf32``
    (older torch; the two APIs must not be mixed)."""
    matmul, conv = torch.backends.cuda.matmul, getattr(torch.backends.cudnn, "conv", None)
    if hasattr(matmul, "fp32_precision") and hasattr(conv, "fp32_precision"):
        return [(matmul, "fp32_precision", "tf32", "ieee"), (conv, "fp32_precision", "tf32", "ieee")]
    return [(matmul, "allow_tf32", True, False), (torch.backends.cudnn, "allow_tf32", True, False)]


def set_tf32(enabled: bool) -> list[tuple[object, str, object]]:
    """Let float32 CUDA matrix products and cuDNN convolutions use TF32 (``enabled``) or run in IEEE
    float32; returns the previous settings for :func:`restore_tf32`."""
    previous = []
    for backend, name, tf32, ieee in _tf32_switches():
        previous.append((backend, name, getattr(backend, name)))
        setattr(backend, name, tf32 if enabled else ieee)
    return previous


def restore_tf32(previous: list[tuple[object, str, object]] | None) -> None:
    """Put back the settings that :func:`set_tf32` returned (``None``: nothing to restore)."""
    for backend, name, value in previous or ():
        setattr(backend, name, value)


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """IEEE float32 CUDA matrix products and convolutions inside the block (no TF32), whatever the
    process-wide setting; the setting is restored on exit."""
    previous = set_tf32(False)
    try:
        yield
    finally:
        restore_tf32(previous)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows: every measured
    figure names its machine."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
