"""equirl.zoo.heap: glibc keeps the few-MB blocks a training update frees (no page faults when
the same sizes come back), and malloc settings the user made are left alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from equirl.zoo import heap

# An "update" that allocates two 6 MB tensors (the size of the FC layer's weight gradient) and a
# smaller one, writes and frees them; ten warm-ups, then the page faults of 20 more, in a fresh
# process. With glibc's own thresholds this pattern faulted 66,000 pages in some processes (the
# freed top of the heap trimmed, then faulted in again) and ~200 in others. With the blocks kept,
# the heap still grows by one such block at the 2nd and the 9th update in some processes (13 and 5
# of 30, 2026-11-28; never later in 60 updates), so the count starts after the 10th.
_PROBE = """
import json, resource, sys, torch
from equirl.zoo import heap
kept = heap.keep_freed_blocks() if sys.argv[1] == "keep" else None
def update():
    return float(torch.ones(512, 3136).sum() + torch.ones(512, 3136).sum() + torch.ones(64, 3136).sum())
for _ in range(10):
    update()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    update()
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""
PAGES = 512 * 3136 * 4 // 4096  # 1,568 pages in one 6 MB tensor


def _probe(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in heap._USER_SETTINGS}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True,
                         env={**environ, **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not heap.applies() and not any(os.environ.get(n) for n in heap._USER_SETTINGS),
                    reason="not glibc: equirl leaves malloc alone there")
def test_freed_blocks_are_reused_without_page_faults():
    kept = _probe("keep")
    assert kept["kept"] is True
    assert kept["faults"] < PAGES, kept  # 40 such tensors: served from the heap, not new mappings


def test_the_users_malloc_settings_win():
    probe = _probe("keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert probe["kept"] is False


def test_train_keeps_freed_blocks(monkeypatch):
    from equirl.zoo.train import train

    calls = []
    monkeypatch.setattr(heap, "keep_freed_blocks", lambda: calls.append(True))
    train("a3c", "CartPole-v1", 20, config_values={"num_envs": 2})
    assert calls == [True]
