"""glibc's malloc: keep the few-MB blocks a training update frees, instead of unmapping them.

Every update frees and allocates tensors of the same few sizes: the FC layer's 6 MB weight
gradient, activations, optimizer temporaries. glibc serves a block above its mmap
threshold (128 KB at first, raised to the size of any mapped block freed since, up to 32 MB) with
a fresh mapping, whose pages fault in on first write (~0.8 us each here), and returns free memory
at the top of its heap to the kernel (the trim threshold, twice the mmap threshold). Which of
these a run gets depends on the order of its first allocations: across processes of the same
soft-q loop on Pong, the FC weight gradient took 0.7 ms or 1.7-1.8 ms, and an update 16.2-19.0 ms.
With the thresholds fixed (mmap above 32 MB only, trim above 1 GB), every process took 0.7 ms
and 16.7-16.8 ms (BENCHMARKS.md).

:func:`keep_freed_blocks` fixes the two thresholds with ``mallopt``, for the rest of the process
(glibc has no way back to its adaptive thresholds). It is called by ``train()``. It leaves malloc
alone where the user may have chosen for it (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``, anything in ``LD_PRELOAD``, where allocators
such as jemalloc or tcmalloc go) and where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 1024 * 1024 * 1024
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


def applies() -> bool:
    """Whether :func:`keep_freed_blocks` would change anything: glibc, and malloc left to us."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc" \
        and not any(os.environ.get(name) for name in _USER_SETTINGS)


@functools.cache
def keep_freed_blocks() -> bool:
    """Fix glibc's mmap and trim thresholds (once per process); True if they were set."""
    if not applies():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))
