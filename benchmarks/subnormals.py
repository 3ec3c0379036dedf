"""How much subnormal optimizer state slows a training run's optimizer step on CPU.

Late in training many Adam/RMSprop moments decay below float32's smallest normal (1.2e-38). x86
handles such subnormal operands in slow microcode. This reports the subnormal fraction of every
optimizer-state tensor in a run's checkpoint, then times one fused Adam step of the largest
parameter with that stored state against the same state with subnormals flushed to zero
(alternated, medians, one thread).

With ``--train-steps N`` it also measures the whole training loop: copies of the run are resumed
for N steps past the buffer refill, alternately with ``EQUIRL_FLUSH_DENORMAL=0`` and with
flushing (equirl's default), and the steps/s after the refill are compared.

    .venv/bin/python benchmarks/subnormals.py /work/zoo-runs/soft-q-PongNoFrameskip-v4 [--train-steps 4000]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file


def flushed(tensor: torch.Tensor) -> torch.Tensor:
    return torch.where(tensor.abs() < torch.finfo(tensor.dtype).tiny, torch.zeros_like(tensor), tensor)


def adam_step_seconds(exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor) -> float:
    param, grad = torch.zeros_like(exp_avg), exp_avg.clone()  # a gradient of the moments' size
    exp_avg, exp_avg_sq = exp_avg.clone(), exp_avg_sq.clone()
    start = time.perf_counter()
    torch._fused_adam_([param], [grad], [exp_avg], [exp_avg_sq], [], [torch.tensor(1000.0)], lr=1e-4,
                       beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1.5e-4, amsgrad=False, maximize=False)
    return time.perf_counter() - start


def median_ms(seconds: list[float]) -> float:
    return 1000 * statistics.median_high(seconds)


def resumed_speed(run: Path, steps: int, flush: bool) -> float:
    """Steps/s of a copy of ``run`` resumed for ``steps`` steps after its refill, learning only."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("tb"))
        config = json.loads((copy / "config.json").read_text())
        start = json.loads((copy / "checkpoint.json").read_text())["steps"]
        refill = config["hyperparameters"].get("learning_starts", 0)
        # The interval that is timed: from the first update logged after the refill to the last.
        end = start + refill + steps
        env = {**os.environ, "EQUIRL_FLUSH_DENORMAL": "1" if flush else "0"}
        done = subprocess.run([sys.executable, "-m", "equirl", "train", config["agent"], config["env"]["env_id"],
                               "--steps", str(end), "--out", str(copy), "--resume", "--no-progress",
                               "--checkpoint-every", str(10 * end)], env=env, check=False, capture_output=True,
                               text=True)
        if done.returncode != 0:
            raise SystemExit(f"resuming a copy of {run} failed:\n{done.stderr}")
        # metrics.jsonl's sps is cumulative since the resume: elapsed = (step - start) / sps.
        updates = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
        updates = [u for u in updates if u["kind"] == "update" and u["step"] > start + refill and u["sps"] > 0]
        first, last = updates[0], updates[-1]
        elapsed = [(u["step"] - start) / u["sps"] for u in (first, last)]
        return (last["step"] - first["step"]) / (elapsed[1] - elapsed[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder with checkpoint.safetensors")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--train-steps", type=int, default=0, help="also time the training loop, N steps a run")
    parser.add_argument("--train-rounds", type=int, default=2)
    args = parser.parse_args()
    if args.train_steps:
        speeds = {False: [], True: []}
        for _ in range(args.train_rounds):
            for flush in (False, True):
                speeds[flush].append(resumed_speed(args.run, args.train_steps, flush))
                print(f"training loop, {'flushing' if flush else 'EQUIRL_FLUSH_DENORMAL=0'}: "
                      f"{speeds[flush][-1]:.1f} steps/s", flush=True)
        ratio = statistics.median_high(speeds[True]) / statistics.median_high(speeds[False])
        print(f"median speed-up from flushing: {ratio:.2f}x")
    torch.set_num_threads(1)
    state = {name: t for name, t in load_file(str(args.run / "checkpoint.safetensors")).items()
             if name.startswith("optim.") and t.dtype == torch.float32 and t.numel() > 1}
    if not state:
        raise SystemExit(f"{args.run}: no float32 optimizer state in checkpoint.safetensors")
    tiny = torch.finfo(torch.float32).tiny
    print("| optimizer state | shape | subnormal | zero |\n|---|---|---|---|")
    for name, tensor in state.items():
        subnormal = ((tensor != 0) & (tensor.abs() < tiny)).double().mean()
        print(f"| {name} | {tuple(tensor.shape)} | {float(subnormal):.1%} | {float((tensor == 0).double().mean()):.1%} |")
    largest = max((n for n in state if n.endswith("exp_avg")), key=lambda n: state[n].numel(), default=None)
    if largest is None:
        return
    moments = state[largest], state[largest + "_sq"]
    clean = tuple(flushed(t) for t in moments)
    stored, without = [], []
    for _ in range(args.rounds):
        stored.append(adam_step_seconds(*moments))
        without.append(adam_step_seconds(*clean))
    print(f"fused Adam step of {largest.removesuffix('.exp_avg')} {tuple(moments[0].shape)}: "
          f"{median_ms(stored):.2f} ms with the stored state, {median_ms(without):.2f} ms with subnormals flushed")


if __name__ == "__main__":
    main()
