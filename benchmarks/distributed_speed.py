"""Training speed with 1 and with N processes (torchrun, data-parallel), run alternately.

Both sides train the same algorithm: ``num_envs`` is the total over all processes, so each of N
processes steps num_envs/N environments. Prints steps/s per run and the ratio of medians.

    .venv/bin/python benchmarks/distributed_speed.py --agent a3c --env PongNoFrameskip-v4 \
        --steps 8000 --rounds 3 --nproc 2 [--device cuda]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

TRAINED = re.compile(r"\(([\d.]+) steps/s\)")


def sps(nproc: int, agent: str, env_id: str, steps: int, device: str, threads: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        train = ["-m", "equirl", "train", agent, env_id, "--steps", str(steps), "--device", device,
                 "--out", f"{tmp}/run", "--no-progress", "--check-sync-every", "0"]
        launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
                  if nproc > 1 else [sys.executable])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        out = subprocess.run(launch + train, capture_output=True, text=True, env=env, check=True)
        return float(TRAINED.search(out.stdout).group(1))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default="a3c")
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    args = parser.parse_args()
    runs: dict[int, list[float]] = {1: [], args.nproc: []}
    for round_ in range(args.rounds):
        for nproc, values in runs.items():
            value = sps(nproc, args.agent, args.env, args.steps, args.device, args.threads)
            values.append(value)
            print(f"round {round_ + 1}: {nproc} process(es): {value:.1f} steps/s", flush=True)
    one, many = statistics.median(runs[1]), statistics.median(runs[args.nproc])
    print("\n| processes | median steps/s | runs |\n|---|---|---|")
    for nproc, values in runs.items():
        print(f"| {nproc} | {statistics.median(values):.1f} | {', '.join(f'{v:.0f}' for v in values)} |")
    print(f"\n{args.nproc} processes / 1 process: {many / one:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
