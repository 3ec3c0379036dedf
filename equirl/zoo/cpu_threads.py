"""torch's OpenMP worker threads and the Atari emulator's threads take turns on the same cores.

On a CPU, acting and learning run each torch operation on OpenMP worker threads, and ale-py runs
the emulators on threads of its own, on the same cores, in turn. Between two operations a worker
either spins, waiting for the next one, or sleeps:

- asleep (``OMP_WAIT_POLICY=PASSIVE``), every parallel operation first has to wake it: ~45 us on
  this repo's 2-core machine, about 6 ms of an a3c update's ~44 (BENCHMARKS.md);
- spinning, it stays ready, but while the envs step it holds a core the emulator needs.

So ``import equirl`` lets libgomp's workers spin (``GOMP_SPINCOUNT``; other OpenMP runtimes
wait passively), and :func:`release` ends them before every emulator step, through OpenMP 5.0's
``omp_pause_resource_all``: the next torch operation starts them again, one start (~45 us) per
env step instead of one wake-up per operation. a3c on Pong: ~14% faster than waiting passively
(BENCHMARKS.md). Where the runtime has no such call, :func:`release` does nothing.

Workers started again copy the calling thread's floating-point mode (flush-to-zero: see
:mod:`equirl.zoo.numerics`, which releases them when it changes that mode).
"""
from __future__ import annotations

import ctypes
import functools
import os

# OpenMP runtimes torch may be built with: GNU (pip wheels on Linux), Intel, LLVM.
_RUNTIMES = ("libgomp", "libiomp5", "libomp")
_PAUSE_SOFT = 1  # omp_pause_soft: end the threads, keep the runtime usable


@functools.cache
def _pause_functions() -> tuple:
    """``omp_pause_resource_all`` of each OpenMP runtime loaded in this process (torch's among
    them: it is loaded with torch, which the modules calling this have imported)."""
    try:
        with open("/proc/self/maps", encoding="utf-8") as maps:
            paths = sorted({line.split()[-1] for line in maps if "/" in line})
    except OSError:  # not Linux: nothing to release
        return ()
    functions = []
    for path in paths:
        if not os.path.basename(path).startswith(_RUNTIMES):
            continue
        try:
            pause = ctypes.CDLL(path).omp_pause_resource_all
        except (OSError, AttributeError):  # an OpenMP older than 5.0
            continue
        pause.argtypes, pause.restype = [ctypes.c_int], ctypes.c_int
        functions.append(pause)
    return tuple(functions)


def can_release() -> bool:
    """Whether :func:`release` can end torch's worker threads in this process."""
    return bool(_pause_functions())


def release() -> bool:
    """End the calling thread's idle OpenMP worker threads (they start again with the next
    parallel torch operation). Call it outside any torch operation, before work on other threads
    that needs the cores. True if a runtime released its threads."""
    released = [pause(_PAUSE_SOFT) == 0 for pause in _pause_functions()]  # every runtime, no short cut
    return any(released)
