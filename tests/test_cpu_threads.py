"""torch's OpenMP worker threads are ended before the Atari emulator steps (equirl/zoo/cpu_threads.py),
and start again, with the same results, on the next torch operation."""
from __future__ import annotations

import os
import subprocess
import sys

PROBE = """
import glob, os, sys, numpy as np, torch
import equirl
from equirl.zoo import cpu_threads
from equirl.zoo.envs import make_vector_env

def threads():
    return len(glob.glob(f"/proc/{os.getpid()}/task/*"))

torch.set_num_threads(2)
env = make_vector_env(sys.argv[1], 4, int(sys.argv[2]))
env.reset(seed=0)
x = torch.arange(1 << 20, dtype=torch.float64)
expected = float((x * 3).sum())
counts = []
for _ in range(3):
    assert float((x * 3).sum()) == expected  # a parallel operation: the workers run
    counts.append(threads())
    env.step(np.zeros(4, dtype=np.int64))
    counts.append(threads())
print(cpu_threads.can_release(), os.environ["GOMP_SPINCOUNT"], *counts)
"""


def _run(env_id, groups):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", PROBE, env_id, str(groups)], check=False, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    can, spin, *counts = out.stdout.split()
    return can == "True", spin, [int(c) for c in counts]


def test_atari_steps_end_torchs_worker_threads_and_torch_starts_them_again():
    can, spin, counts = _run("PongNoFrameskip-v4", 1)
    assert can and spin == "300000"  # pip's torch ships libgomp; import equirl lets it spin
    busy, stepped = counts[0::2], counts[1::2]
    assert all(b == busy[0] for b in busy) and all(s == busy[0] - 1 for s in stepped), counts


def test_grouped_atari_envs_release_before_sending():
    _, _, counts = _run("PongNoFrameskip-v4", 2)
    busy, stepped = counts[0::2], counts[1::2]
    assert all(s == b - 1 for b, s in zip(busy, stepped)), counts


def test_classic_control_steps_leave_the_threads_alone():
    # Gymnasium's envs step on the calling thread: nothing waits for a core there.
    _, _, counts = _run("CartPole-v1", 1)
    assert len(set(counts)) == 1, counts
