"""Training speed against the emulator's own ceiling on the same machine (issue 6's GPU targets).

Alternates, ROUNDS times: ale-py's vector env alone with random actions (the ceiling), then each
agent training on the same env with the same number of envs. Prints steps/s and each agent's
fraction of the ceiling measured in the same run.

    .venv/bin/python benchmarks/device_speed.py --device cuda --num-envs 64 \\
        --agents a3c a3c+groups1 a3c+bf16 soft-q soft-q+bf16 --rounds 3

``+bf16`` trains with ``bf16=True``. On a GPU the on-policy agents step their envs in 2 groups by
default (acting for one while the other emulates); ``+groups1`` is lockstep, for comparison.
soft-q keeps DQN's replay ratio (one update of batch 32 per 4 agent steps, paired_speed.py's
settings) with ``--num-envs`` envs acting together.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from paired_speed import equirl_sps  # benchmarks/ is on the path when this script runs


def raw_sps(env_id: str, num_envs: int, seconds: float) -> float:
    """Random actions through equirl's own env builder (same settings as training)."""
    code = (
        "import json, time, numpy as np\n"
        "from equirl.zoo.envs import make_vector_env\n"
        f"env = make_vector_env({env_id!r}, {num_envs})\n"
        "env.reset(seed=0); rng = np.random.default_rng(0); steps = 0\n"
        "for _ in range(20): env.step(rng.integers(env.num_actions, size=env.num_envs))\n"
        "start = time.perf_counter()\n"
        f"while time.perf_counter() - start < {seconds}:\n"
        "    env.step(rng.integers(env.num_actions, size=env.num_envs)); steps += env.num_envs\n"
        "print(json.dumps({'sps': steps / (time.perf_counter() - start)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["sps"]


def train_sps(name: str, env_id: str, steps: int, num_envs: int, device: str) -> float:
    """Training steps/s with paired_speed's settings (SB3 A2C's model for the on-policy agents,
    DQN's replay settings for soft-q), at ``num_envs`` envs."""
    return equirl_sps(name, env_id, steps, device=device, values={"num_envs": num_envs}, warmup=20 * num_envs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", nargs="+", default=["a3c", "a3c+groups1", "a3c+bf16", "soft-q", "soft-q+bf16"])
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--num-envs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100_000, help="timed steps of the on-policy runs")
    parser.add_argument("--soft-q-steps", type=int, default=30_000, help="timed steps of soft-q")
    parser.add_argument("--raw-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[float]] = {"raw env": [], **{name: [] for name in args.agents}}
    for round_ in range(args.rounds):
        for name, values in runs.items():
            began = time.perf_counter()
            if name == "raw env":
                sps = raw_sps(args.env, args.num_envs, args.raw_seconds)
            else:
                steps = args.soft_q_steps if name.startswith("soft-q") else args.steps
                sps = train_sps(name, args.env, steps, args.num_envs, args.device)
            values.append(sps)
            print(f"round {round_ + 1}: {name:<14} {sps:9.1f} steps/s  ({time.perf_counter() - began:.0f} s)", flush=True)
    ceiling = statistics.median(runs["raw env"])
    print(f"\n{args.env}, {args.num_envs} envs, device {args.device}")
    print(f"| system | median steps/s ({args.rounds} runs) | runs | fraction of the raw env |")
    print("|---|---|---|---|")
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} | {', '.join(f'{v:.0f}' for v in values)} | {median / ceiling:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
