"""How close the Nature CNN's convolutions run to the CPU's arithmetic peak: GFLOP/s of each
convolution's forward (channels-last float32, as the trunk runs them) at the row counts soft-q
uses (4 acting, 32 a batch, 36 both in one pass), and of MKL's sgemm for the FC layer as
``F.linear`` would run it. Medians of timed calls in one process, torch's default threads.
``--backward`` adds each convolution's weight gradient (with its bias's) and input gradient
(which conv1 never needs: its input is the pixels), as the trunk's backward calls them;
``--bf16`` runs everything in bfloat16 instead (what ``bf16=true`` convolves with).

    .venv/bin/python benchmarks/conv_throughput.py [--rows 4 32 36 68 256] [--backward] [--bf16]

Run it with ONEDNN_MAX_CPU_ISA=AVX2 to see what the AVX-512 kernels bring.
"""
from __future__ import annotations

import argparse
import time

import equirl  # noqa: F401  (before torch: equirl sets OpenMP's wait settings)

# isort: split
import torch
import torch.nn.functional as F

# (in channels, out channels, kernel, stride, input height = width): conv1, conv2, conv3
LAYERS = ((4, 32, 8, 4, 84), (32, 64, 4, 2, 20), (64, 64, 3, 1, 9))


def median_seconds(fn, calls: int = 40) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[calls // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[4, 32, 36, 68, 256])
    parser.add_argument("--backward", action="store_true", help="also the convolutions' two gradients")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 instead of float32")
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    print(f"torch threads {torch.get_num_threads()}, {dtype}\n\n| layer | pass | rows | ms | GFLOP/s |\n|---|---|---|---|---|")
    for number, (c_in, c_out, kernel, stride, size) in enumerate(LAYERS, 1):
        weight = torch.randn(c_out, c_in, kernel, kernel, dtype=dtype).contiguous(memory_format=torch.channels_last)
        bias = torch.randn(c_out, dtype=dtype)
        out_size = (size - kernel) // stride + 1
        flops = 2 * out_size * out_size * c_out * c_in * kernel * kernel  # per row, each pass
        for rows in args.rows:
            x = torch.randn(rows, c_in, size, size, dtype=dtype).contiguous(memory_format=torch.channels_last)
            grad = torch.randn(rows, c_out, out_size, out_size, dtype=dtype).contiguous(memory_format=torch.channels_last)
            passes = {"forward": lambda x=x, w=weight, b=bias, s=stride: F.conv2d(x, w, b, s)}
            if args.backward:
                for name, mask in (("weight grad", [False, True, True]), ("input grad", [True, False, False])):
                    passes[name] = lambda x=x, g=grad, w=weight, s=stride, m=mask: torch.ops.aten.convolution_backward(
                        g, x, w, [w.shape[0]], [s, s], [0, 0], [1, 1], False, [0, 0], 1, m)
            for name, fn in passes.items():
                seconds = median_seconds(fn)
                print(f"| conv{number} ({c_in}->{c_out}, {kernel}x{kernel}/{stride}) | {name} | {rows} | "
                      f"{seconds * 1e3:.3f} | {flops * rows / seconds / 1e9:.0f} |")
    weight = torch.randn(512, 3136, dtype=dtype)
    for rows in args.rows:
        x = torch.randn(rows, 3136, dtype=dtype)
        seconds = median_seconds(lambda x=x: F.linear(x, weight))
        print(f"| FC as F.linear (3136->512) | forward | {rows} | {seconds * 1e3:.3f} | {2 * 3136 * 512 * rows / seconds / 1e9:.0f} |")


if __name__ == "__main__":
    main()
