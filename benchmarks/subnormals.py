"""How much subnormal optimizer state slows a training run's optimizer step on CPU.

Late in training many Adam/RMSprop moments decay below float32's smallest normal (1.2e-38). x86
handles such subnormal operands in slow microcode. This reports the subnormal fraction of every
optimizer-state tensor in a run's checkpoint, then times one fused Adam step of the largest
parameter with that stored state against the same state with subnormals flushed to zero
(alternated, medians, one thread).

    .venv/bin/python benchmarks/subnormals.py /work/zoo-runs/soft-q-PongNoFrameskip-v4
"""
from __future__ import annotations

import argparse
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
    return 1000 * sorted(seconds)[len(seconds) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder with checkpoint.safetensors")
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
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
