"""Flush-to-zero for training: subnormal floats are slow on x86 CPUs and carry no information.

Late in a run many Adam/RMSprop moments decay below float32's smallest normal number (1.2e-38).
x86 CPUs compute with such subnormal operands in slow microcode: on soft-q-Pong a third of the
FC layer's ``exp_avg`` was subnormal by 0.5M steps, its optimizer step took 16-19 ms instead of
~3, and the whole training loop ran 1.2x faster with flushing (BENCHMARKS.md,
``benchmarks/subnormals.py``). Flushing them to zero changes nothing a run could learn from (the
values are below 1e-38) but makes results not bit-identical to a run without it, so config.json
records which was used.

``torch.set_flush_denormal`` sets the calling thread's FPU mode only. torch's OpenMP worker
threads copy the mode of the thread that starts them, when the first parallel operation runs:
the ``equirl`` command therefore flushes before any tensor work, and :func:`flush_state`
measures rather than assumes what every thread does.

``EQUIRL_FLUSH_DENORMAL=0`` turns it off, e.g. to continue a run made before equirl flushed and
reproduce it bit for bit, or to measure what flushing saves (``benchmarks/subnormals.py``).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from . import cpu_threads

# Enough elements that torch splits the multiply over all its threads (its grain is 32768).
_PROBE_ELEMENTS = 1 << 20


def flush_state() -> str:
    """``"all threads"``, ``"calling thread"`` or ``"off"``: where subnormal results become 0.

    1e-20 squared is 1e-40, a float32 subnormal: each thread that flushes writes 0 for its share
    of the product. The calling thread's own mode is probed on a single element, so a pool that
    does not share it is seen as well as a pool that does.
    """
    tiny = torch.full((1,), 1e-20)
    calling = bool((tiny * tiny == 0).item())
    probe = torch.full((_PROBE_ELEMENTS,), 1e-20)
    zero = probe * probe == 0
    if bool(zero.all()) and calling:
        return "all threads"
    return "calling thread" if calling else "off"


def wanted() -> bool:
    value = os.environ.get("EQUIRL_FLUSH_DENORMAL", "1").strip()
    if value not in ("0", "1"):
        raise ValueError(f"EQUIRL_FLUSH_DENORMAL must be 0 or 1, got {value!r}")
    return value == "1"


def flush_subnormals() -> bool:
    """Flush subnormals in this thread and in torch threads started after it. False if the CPU
    has no such mode or ``EQUIRL_FLUSH_DENORMAL=0`` (then nothing changes)."""
    return wanted() and torch.set_flush_denormal(True)


@contextmanager
def subnormals_flushed():
    """Flush in the calling thread for the duration (the training loop); restore its mode after,
    so that a Python session that called :func:`equirl.zoo.train.train` keeps its own numerics.
    Yields :func:`flush_state` as measured inside."""
    before = flush_state() != "off"
    # Worker threads copy the mode of the thread that starts them: ended here, they start again
    # flushing (whenever the pool existed before), and ended after, they do not keep flushing
    # for the caller.
    cpu_threads.release()
    flush_subnormals()
    try:
        yield flush_state()
    finally:
        torch.set_flush_denormal(before)
        cpu_threads.release()
