"""The Nature CNN's FC layer (3136 -> 512) on CPU: torch's linear/mm (MKL) against the oneDNN
calls equirl runs it as (equirl/agents/networks.py, _FcAsConv: the forward and the input gradient
as convolutions, the weight gradient as oneDNN's matrix product), per call, on this host.

Times the forward, the weight gradient and the input gradient at 4, 16, 32 and 80 rows (soft-q's
acting and batch, a3c's acting step and update), in alternated rounds; prints the median of the
rounds' means and a GEMM's GFLOP/s against a convolution's, to tell which path this CPU favours. Run it on a new host before
trusting BENCHMARKS.md's figures there (they come from an AMD EPYC).

    .venv/bin/python benchmarks/fc_layer.py [--rounds 5] [--calls 200]
"""
from __future__ import annotations

import argparse
import statistics
import time

import equirl  # noqa: F401  (before torch: equirl sets OpenMP's wait settings)

# isort: split
import torch
import torch.nn.functional as F

from equirl.agents.networks import _fc_input_grad, _fc_weight_grad, _fc_weight_grad_as_conv
from equirl.zoo import heap

CL = torch.channels_last


def mean_seconds(fn, calls: int) -> float:
    for _ in range(max(calls // 10, 5)):
        fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    heap.keep_freed_blocks()  # as train() does: no page faults in the figures
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(512, 3136, generator=gen) * 0.02
    bias = torch.zeros(512)
    kernel = weight.view(512, 64, 7, 7).contiguous(memory_format=CL)  # as FcOverMap holds the weight
    cases = {}
    for rows in (4, 16, 32, 80):
        conv3 = torch.relu(torch.randn(rows, 64, 7, 7, generator=gen)).contiguous(memory_format=CL)
        flat = conv3.flatten(1)
        grad = torch.randn(rows, 512, generator=gen)
        cases[f"forward, {rows} rows: linear (MKL)"] = (
            lambda c=conv3: F.linear(c.flatten(1), weight, bias), lambda c=conv3: F.conv2d(c, kernel, bias))
        cases[f"weight gradient, {rows} rows: mm (MKL)"] = (
            lambda g=grad, f=flat: g.t().mm(f), lambda g=grad, c=conv3: _fc_weight_grad(g, c))
        cases[f"weight gradient, {rows} rows: 1x1 convolution (the fallback)"] = (
            lambda g=grad, c=conv3: _fc_weight_grad_as_conv(g, c), lambda g=grad, c=conv3: _fc_weight_grad(g, c))
        cases[f"input gradient, {rows} rows: mm (MKL)"] = (
            lambda g=grad: g.mm(weight), lambda g=grad, c=conv3: _fc_input_grad(g, c, kernel))
    times = {(name, i): [] for name in cases for i in (0, 1)}
    for _ in range(args.rounds):
        for name, pair in cases.items():
            for i, fn in enumerate(pair):
                times[name, i].append(mean_seconds(fn, args.calls))
    a, b = torch.randn(1024, 1024, generator=gen), torch.randn(1024, 1024, generator=gen)
    gemm = 2 * 1024 ** 3 / mean_seconds(lambda: a @ b, 20) / 1e9
    x = torch.randn(80, 64, 9, 9, generator=gen).contiguous(memory_format=CL)
    w = torch.randn(64, 64, 3, 3, generator=gen).contiguous(memory_format=CL)
    conv = 2 * 80 * 49 * w.numel() / mean_seconds(lambda: F.conv2d(x, w), 100) / 1e9
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; 1024^3 matmul (MKL) {gemm:.0f} GFLOP/s, "
          f"conv3 on 80 rows (oneDNN) {conv:.0f} GFLOP/s")
    print(f"| FC layer, median of {args.rounds} rounds of {args.calls} calls: other path | other path | "
          "equirl (oneDNN) | ratio | same values, bit for bit |")
    print("|---|---|---|---|---|")
    for name, (other, ours) in cases.items():
        ours_ms = 1000 * statistics.median(times[name, 1])
        other_ms = 1000 * statistics.median(times[name, 0])
        same = torch.equal(other(), ours()) if "fallback" in name else "-"
        print(f"| {name} | {other_ms:.3f} ms | {ours_ms:.3f} ms | {other_ms / ours_ms:.2f}x | {same} |")


if __name__ == "__main__":
    main()
