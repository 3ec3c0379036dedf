"""Data-parallel training on ``torch.distributed``, as launched by ``torchrun``.

``torchrun --nproc-per-node N -m equirl train ...`` starts N copies of the training loop. Each
rank steps its own slice of the ``num_envs`` environments (``num_envs`` is the total over all
ranks, so the recorded hyperparameters describe the algorithm, not the launch), gradients are
averaged with one all-reduce per update, and rank 0 alone writes the run directory.

Why this is the same algorithm as one process with all the environments:

* the losses are means over the batch, so the mean of the ranks' gradients (equal shares) is
  the gradient of the whole batch;
* rank r's environments get the seeds one process would give environments ``r*E .. r*E+E-1``;
* every rank draws the random numbers for the *whole* batch of actions from the same generator
  state and keeps its own rows (:attr:`equirl.agents.base.Agent.rows`), so the sampled actions
  are the ones the single process would sample.

What remains different is floating-point summation order (an all-reduce sums per-rank partial
means), and for ``soft-q`` that each rank samples its share of the minibatch from its own replay
buffer (``buffer_size`` and ``batch_size`` are split evenly across ranks).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from ..agents.layouts import is_dense, laid_out_like, memory_view


class DistributedError(RuntimeError):
    """The ranks disagree (different parameters, a bad split); the message says how."""


@dataclass
class Ranks:
    """Where this process stands: ``rank`` of ``world``; ``world == 1`` means no process group."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @classmethod
    def from_environment(cls) -> Ranks:
        """torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK); a plain process is rank 0 of 1."""
        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError as err:
            raise DistributedError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers: {err}") from None
        return cls(rank, world, local_rank)

    def device(self, requested: torch.device) -> torch.device:
        """One GPU per local rank; CPU stays CPU."""
        if self.active and requested.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return requested

    def start(self, device: torch.device) -> None:
        """Join the process group: NCCL for GPUs, gloo for CPU."""
        if not self.active or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def stop(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()

    def split(self, total: int, name: str) -> int:
        """This rank's share of ``total`` (envs, buffer size, batch size)."""
        if total % self.world:
            raise DistributedError(f"{name}={total} does not split evenly over {self.world} processes; "
                                   f"use a multiple of {self.world}")
        return total // self.world

    # ---- collective operations (the same call on every rank, in the same order) ------------
    def average_gradients(self, parameters) -> None:
        """Replace each gradient by its mean over the ranks (one flat all-reduce)."""
        params = [p for p in parameters if p.grad is not None]
        if not params:
            return
        # Each gradient goes into the flat buffer in its parameter's memory order: the same on
        # every rank (the same code builds the parameters), whatever layout autograd gave the
        # gradient on that rank, and for the Nature CNN's channels-last gradients one plain copy
        # each way, where reshape(-1) copies them twice and the copy back scatters through strides.
        grads = [p.grad for p in params]
        flat = torch.cat([memory_view(laid_out_like(p, g)) if is_dense(p) else g.reshape(-1)
                          for p, g in zip(params, grads)])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world
        offset = 0
        for p, g in zip(params, grads):
            part = flat[offset:offset + g.numel()]
            g.copy_(part.as_strided(p.shape, p.stride()) if is_dense(p) else part.view_as(g))
            offset += g.numel()

    def broadcast_bytes(self, data: bytes | None, device: torch.device) -> bytes:
        """Rank 0's ``data`` on every rank (resume reads the run dir on rank 0 only, so the
        other ranks need no shared file system)."""
        if not self.active:
            return data
        size = torch.tensor([len(data) if self.is_main else 0], dtype=torch.int64, device=device)
        dist.broadcast(size, 0)
        buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device) if self.is_main
                  else torch.empty(int(size), dtype=torch.uint8, device=device))
        dist.broadcast(buffer, 0)
        return bytes(buffer.cpu().numpy())

    def exchange(self, device: torch.device, flags: list[float], metrics: dict[str, float] | None,
                 episodes: list[tuple[float, int]], capacity: int):
        """One all-gather per loop iteration: stop/NaN flags (any rank's counts), the ranks'
        mean metrics, and every rank's finished episodes (rank 0 logs them all).

        ``capacity`` bounds the episodes one rank can finish in one iteration (its env steps)."""
        names = sorted(metrics) if metrics else []
        head = len(flags) + 2
        row = np.zeros(head + len(names) + 2 * capacity, dtype=np.float64)
        row[:len(flags)] = flags
        row[len(flags)] = 1.0 if metrics else 0.0
        row[len(flags) + 1] = len(episodes)
        row[head:head + len(names)] = [metrics[n] for n in names]
        for i, (score, length) in enumerate(episodes):
            row[head + len(names) + 2 * i: head + len(names) + 2 * i + 2] = (score, length)
        local = torch.as_tensor(row, device=device)
        gathered = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local)
        table = torch.stack(gathered).cpu().numpy()
        any_flags = table[:, :len(flags)].max(axis=0).tolist()
        mean_metrics = dict(zip(names, table[:, head:head + len(names)].mean(axis=0).tolist())) if metrics else None
        all_episodes = []
        for r in range(self.world):
            body = table[r, head + len(names):]
            for i in range(int(table[r, len(flags) + 1])):
                all_episodes.append((float(body[2 * i]), int(body[2 * i + 1])))
        return any_flags, mean_metrics, all_episodes

    def check_identical(self, module: torch.nn.Module, device: torch.device) -> str:
        """SHA-256 of this rank's parameters, compared across ranks; raises if any differs."""
        digest = parameter_fingerprint(module)
        local = torch.tensor(list(bytes.fromhex(digest)), dtype=torch.uint8, device=device)
        gathered = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local)
        digests = [bytes(t.cpu().tolist()).hex() for t in gathered]
        if len(set(digests)) != 1:
            raise DistributedError("ranks hold different parameters: " +
                                   ", ".join(f"rank {r} {d[:12]}" for r, d in enumerate(digests)))
        return digest


def parameter_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over the exact bytes of every parameter and buffer, in state-dict order."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
