"""Paired training-speed benchmark: equirl against Stable-Baselines3's A2C on the same machine.

Runs the two alternately, ROUNDS times each, with the same Atari settings (16 envs, 5-step
rollouts, Nature CNN, RMSprop), and prints steps/s per run and the ratio of medians. Alternating
runs in one invocation keep a shared, noisy machine fair to both sides.

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python benchmarks/paired_speed.py --agents a3c matched-q --steps 8000 --rounds 3

The SB3 side runs ../shared/bench/sb3_a2c_reference.py (SB3's own Atari wrappers, as its users
run it); pass --sb3-script to point elsewhere.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SB3 = HERE.parent.parent / "shared" / "bench" / "sb3_a2c_reference.py"


def equirl_sps(agent: str, env_id: str, steps: int, threads: int) -> float:
    """A fresh process per run, like the SB3 side; a short warm-up run first in the same process."""
    threads_line = f"torch.set_num_threads({threads})\n" if threads else ""
    code = (
        "import json, torch\n" + threads_line +
        "from equirl.zoo.train import train\n"
        f"train({agent!r}, {env_id!r}, 800, seed=0, device='cpu')\n"
        f"r = train({agent!r}, {env_id!r}, {steps}, seed=0, device='cpu')\n"
        "print(json.dumps({'sps': r.steps_per_second}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["sps"]


def sb3_sps(script: Path, env_id: str, steps: int, threads: int) -> float:
    args = [sys.executable, str(script), "--env", env_id, "--n-envs", "16", "--steps", str(steps)]
    if threads:
        args += ["--threads", str(threads)]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["sps"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", nargs="+", default=["a3c", "matched-q", "entropy-pg"])
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: default)")
    parser.add_argument("--sb3-script", type=Path, default=DEFAULT_SB3)
    args = parser.parse_args()
    if not args.sb3_script.exists():
        parser.exit(2, f"paired_speed: error: SB3 reference script not found: {args.sb3_script}\n")
    runs: dict[str, list[float]] = {"sb3-a2c": [], **{a: [] for a in args.agents}}
    for round_ in range(args.rounds):
        for name in runs:
            sps = (sb3_sps(args.sb3_script, args.env, args.steps, args.threads) if name == "sb3-a2c"
                   else equirl_sps(name, args.env, args.steps, args.threads))
            runs[name].append(sps)
            print(f"round {round_ + 1}: {name:<12} {sps:8.1f} steps/s", flush=True)
    base = statistics.median(runs["sb3-a2c"])
    print(f"\n| system | median steps/s ({args.rounds} runs, {args.steps} steps each) | ratio to SB3 A2C |")
    print("|---|---|---|")
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
