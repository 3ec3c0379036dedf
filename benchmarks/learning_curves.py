"""Learning curves of training runs side by side, from their metrics.jsonl: the mean raw score of
the last 20 episodes finished by each step of a grid (the curve `equirl experiment` plots), and
each run's steps so far. For comparing runs that differ in one setting, e.g. float32 and bf16:

    .venv/bin/python benchmarks/learning_curves.py /work/zoo-runs/softq-pong-f32-s0 \\
        /work/zoo-runs/softq-pong-bf16-s0 --every 100000
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from equirl.zoo.experiments import _curve, _episodes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with metrics.jsonl)")
    parser.add_argument("--every", type=int, default=100_000, help="grid step, in agent steps")
    parser.add_argument("--window", type=int, default=20, help="episodes averaged at each grid point")
    args = parser.parse_args()
    data = []
    for run in args.runs:
        if not (run / "metrics.jsonl").is_file():
            raise SystemExit(f"{run}: no metrics.jsonl (not a run directory)")
        data.append(_episodes(run))
    reached = min(int(steps[-1]) if len(steps) else 0 for steps, _ in data)
    grid = np.arange(args.every, reached + 1, args.every)
    print("| agent steps | " + " | ".join(run.name for run in args.runs) + " |")
    print("|---|" + "---|" * len(args.runs))
    curves = [_curve(steps, scores, grid, args.window) for steps, scores in data]
    for i, step in enumerate(grid):
        print(f"| {step:,} | " + " | ".join(f"{curve[i]:.2f}" for curve in curves) + " |")
    print("| episodes so far | " + " | ".join(f"{len(scores)} (to step {int(steps[-1]):,})" if len(steps) else "0"
                                             for steps, scores in data) + " |")


if __name__ == "__main__":
    main()
