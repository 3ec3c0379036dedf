"""Memory targets: soft-q's Atari replay stores each frame once; a3c training stays small.

1. Fills a 1M-transition replay buffer (4 env streams, Atari's 4 x 84 x 84 uint8 stacks) with
   real Pong frames and reports its bytes, and the process's resident-memory growth, against the
   bytes of its unique 84 x 84 frames (1M x 7,056 B = 7.06 GB).
2. Trains a3c on Pong in a child process and reports its peak resident memory.

    .venv/bin/python benchmarks/memory.py [--transitions 1000000] [--a3c-steps 20000]
"""
from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def replay_memory(transitions: int, num_envs: int = 4) -> dict:
    from equirl.zoo.envs import make_vector_env, spec_from_id
    from equirl.zoo.replay import ReplayBuffer

    env = make_vector_env(spec_from_id("PongNoFrameskip-v4"), num_envs)
    obs, rng = env.reset(seed=0), np.random.default_rng(0)
    recorded = []  # 2,000 real vector steps, replayed in a loop to fill the buffer
    for _ in range(2_000):
        step = env.step(rng.integers(0, env.num_actions, num_envs))
        recorded.append((obs, step))
        obs = step.obs
    env.close()
    before = rss_bytes()
    buffer = ReplayBuffer(transitions, num_envs, (4, 84, 84), "uint8", frame_stack=True)
    start = time.perf_counter()
    zeros = np.zeros(num_envs, np.float32)
    for i in range(buffer.slots):
        obs, step = recorded[i % len(recorded)]
        buffer.add(obs, rng.integers(0, 6, num_envs), step.rewards, step.terminated,
                   step.truncated & ~step.terminated, zeros, step.final_obs)
    seconds = time.perf_counter() - start
    unique = buffer.slots * num_envs * 84 * 84
    return {"transitions": buffer.slots * num_envs, "unique_frame_bytes": unique, "buffer_bytes": buffer.nbytes,
            "bytes_ratio": buffer.nbytes / unique, "rss_growth": rss_bytes() - before,
            "rss_ratio": (rss_bytes() - before) / unique, "fill_seconds": seconds,
            "whole_stack_bytes_would_be": unique * 4}


def a3c_peak_rss(steps: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "equirl", "train", "a3c", "PongNoFrameskip-v4", "--steps", str(steps),
                        "--out", f"{tmp}/run", "--no-progress", "--device", "cpu"], check=True, capture_output=True)
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # Linux reports KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--a3c-steps", type=int, default=20_000)
    args = parser.parse_args()
    peak = a3c_peak_rss(args.a3c_steps)  # first, so the big buffer is not in this process yet
    r = replay_memory(args.transitions)
    gb = 1e9
    print(f"soft-q replay, {r['transitions']:,} transitions, frame-once storage:")
    print(f"  unique 84x84 frames: {r['unique_frame_bytes'] / gb:.3f} GB")
    print(f"  buffer bytes:        {r['buffer_bytes'] / gb:.3f} GB = {r['bytes_ratio']:.4f}x the unique frames")
    print(f"  resident growth:     {r['rss_growth'] / gb:.3f} GB = {r['rss_ratio']:.4f}x the unique frames")
    print(f"  (whole 4-frame stacks would take {r['whole_stack_bytes_would_be'] / gb:.2f} GB; "
          f"filled in {r['fill_seconds']:.0f} s)")
    print(f"a3c on PongNoFrameskip-v4, {args.a3c_steps} steps: peak resident memory {peak / gb:.2f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
