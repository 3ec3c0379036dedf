"""soft-q's update on a GPU as equirl runs it, against the same update captured once as a CUDA
graph and replayed: what graph capture would give the soft-q GPU target (issue 6) before it is
built into the agent.

Three timings per round, each over ``--updates`` updates of batch 32 on random Pong-shaped data
(no emulator), with paired_speed.py's soft-q settings:

* ``eager``: ``agent.learn`` with each batch moved to the device as the training loop moves it
  (``to_tensor``), and the host synchronising for the metrics it returns, as in training;
* ``graph``: the batch copied into the graph's input tensors through pinned memory, then one
  ``replay()`` for the whole update (forward, target, loss, backward, clipping, Adam);
* ``graph replay only``: ``replay()`` on unchanged inputs (the GPU-side floor).

It also checks the captured update against ``agent.learn``: two agents from the same weights take
the same batches, one eagerly, one through the graph, and the largest parameter difference is
printed. On CPU (no CUDA graphs) it times ``eager`` and checks that the graph's update function,
run eagerly, is ``agent.learn`` bit for bit, so that the script is known to run before a GPU does.

    python benchmarks/graph_update.py --device cuda --updates 200 --rounds 3
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import equirl  # noqa: F401  (before torch: equirl sets OpenMP's wait settings)

# isort: split
import numpy as np
import torch
from paired_speed import SOFT_Q_SETTINGS  # benchmarks/ is on the path when this script runs
from torch import nn

from equirl.agents.base import ObsInfo, ReplaySample
from equirl.zoo import presets
from equirl.zoo.envs import spec_from_id
from equirl.zoo.train import build_agent

OBS_SHAPE, ACTIONS = (4, 84, 84), 6  # Pong


def make_agent(device: torch.device):
    spec = spec_from_id("PongNoFrameskip-v4")
    cfg = presets.make_config("soft-q", presets.family_of(spec.kind), **SOFT_Q_SETTINGS)
    return build_agent("soft-q", cfg, spec, ObsInfo(OBS_SHAPE, "uint8"), ACTIONS, device, 0)


def host_batches(count: int, batch: int, window: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random replay samples in host memory, as ReplayBuffer.sample holds them before moving."""
    rng = np.random.default_rng(seed)
    return [{"obs": rng.integers(0, 256, (batch, *OBS_SHAPE), dtype=np.uint8),
             "bootstrap_obs": rng.integers(0, 256, (batch, *OBS_SHAPE), dtype=np.uint8),
             "actions": rng.integers(0, ACTIONS, batch),
             "rewards": rng.choice(np.array([-1.0, 0.0, 1.0], dtype=np.float32), (window, batch)),
             "kl": rng.random((window, batch), dtype=np.float32),
             "terminated": rng.random((window, batch)) < 0.01,
             "truncated": np.zeros((window, batch), dtype=bool)} for _ in range(count)]


def to_sample(agent, host: dict[str, np.ndarray]) -> ReplaySample:
    """What ReplayBuffer.sample hands agent.learn: observations through to_tensor, the rest as is."""
    device = agent.device
    return ReplaySample(obs=agent.to_tensor(host["obs"]),
                        actions=torch.as_tensor(host["actions"], device=device),
                        rewards=torch.as_tensor(host["rewards"], device=device),
                        kl=torch.as_tensor(host["kl"], device=device),
                        terminated=torch.as_tensor(host["terminated"], device=device),
                        truncated=torch.as_tensor(host["truncated"], device=device),
                        bootstrap_obs=agent.to_tensor(host["bootstrap_obs"]))


def update(agent, batch: ReplaySample) -> torch.Tensor:
    """SoftQ.learn's arithmetic (soft backup, Adam step, gradient clipping) with no host sync and
    no Python decision on a tensor's value, so that it can be captured. The caller sets the
    gradients to None first (in capture: once, before it)."""
    cfg = agent.config
    loss = agent.td_loss(agent.network(batch.obs), batch)[0]
    loss.backward()
    params = [p for p in agent.network.parameters() if p.grad is not None]
    norm = nn.utils.get_total_norm([p.grad for p in params])
    # Always scaled (by 1 within the limit), as torch's clip_grad_norm_ does: no branch on the norm.
    nn.utils.clip_grads_with_norm_(params, cfg.max_grad_norm, norm)
    agent.optimizer.step()
    return loss.detach()


@torch.no_grad()
def max_difference(a, b) -> float:
    return max(float((p - q).abs().max()) for p, q in zip(a.network.parameters(), b.network.parameters()))


def check_eager_replica(agent, batches) -> float:
    """``update`` run eagerly against ``agent.learn`` from the same state: the largest parameter
    difference after all batches (0.0 on CPU, where learn skips the multiply by 1 bit-neutrally)."""
    twin = copy.deepcopy(agent)
    for host in batches:
        agent.learn(to_sample(agent, host))
        twin.optimizer.zero_grad(set_to_none=True)
        update(twin, to_sample(twin, host))
    return max_difference(agent, twin)


class CapturedUpdate:
    """``update`` captured as a CUDA graph on fixed input tensors, after ``warmup`` eager updates
    on a side stream (the first builds Adam's state and picks cuDNN's algorithms)."""

    def __init__(self, agent, warmup: list[dict[str, np.ndarray]]):
        self.agent = agent
        # torch's optimizers refuse a captured step() unless marked capturable; equirl's Adam
        # keeps its step counts on the device and syncs nothing, which is what the flag asks.
        for group in agent.optimizer.param_groups:
            group["capturable"] = True
        first = warmup[0]
        self.copied: torch.cuda.Event | None = None  # recorded after the last batch's copies
        self.pinned = {k: torch.from_numpy(v).pin_memory() for k, v in first.items()}
        self.inputs = {k: v.to(agent.device) for k, v in self.pinned.items()}
        self.static = ReplaySample(**self.inputs)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for host in warmup:
                self.load(host)
                agent.optimizer.zero_grad(set_to_none=True)
                update(agent, self.static)
        torch.cuda.current_stream().wait_stream(side)
        agent.optimizer.zero_grad(set_to_none=True)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = update(agent, self.static)

    def load(self, host: dict[str, np.ndarray]) -> None:
        # The previous batch's copies out of the pinned buffers run asynchronously, behind the
        # updates queued before them: wait for them before overwriting the buffers (else a
        # replay could learn from half of the next batch). The host stays one update ahead.
        if self.copied is not None:
            self.copied.synchronize()
        for name, value in host.items():
            self.pinned[name].numpy()[...] = value
            self.inputs[name].copy_(self.pinned[name], non_blocking=True)
        self.copied = torch.cuda.Event()
        self.copied.record()

    def __call__(self, host: dict[str, np.ndarray]) -> None:
        self.load(host)
        self.graph.replay()


def timed(fn, items, device: torch.device) -> float:
    """Milliseconds per item, the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for item in items:
        fn(item)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / len(items)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    device = torch.device(args.device)
    agent = make_agent(device)
    window, batch = agent.config.n_steps, agent.config.batch_size
    batches = host_batches(args.updates, batch, window)
    print(f"soft-q update, batch {batch}, window {window}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""), flush=True)
    print(f"check: update() run eagerly vs agent.learn, 20 batches: max |difference| "
          f"{check_eager_replica(make_agent(device), batches[:20]):.3g}", flush=True)
    captured = None
    if device.type == "cuda":
        eager_twin, graph_agent = make_agent(device), make_agent(device)
        captured = CapturedUpdate(graph_agent, batches[:3])
        for host in batches[:3]:
            eager_twin.learn(to_sample(eager_twin, host))
        for host in batches[3:40]:
            eager_twin.learn(to_sample(eager_twin, host))
            captured(host)
        torch.cuda.synchronize()
        print(f"check: graph replay vs agent.learn, 40 batches: max |difference| "
              f"{max_difference(eager_twin, graph_agent):.3g}", flush=True)
    times: dict[str, list[float]] = {"eager": [], "graph": [], "graph replay only": []}
    for round_ in range(args.rounds):
        times["eager"].append(timed(lambda host: agent.learn(to_sample(agent, host)), batches, device))
        if captured is not None:
            times["graph"].append(timed(captured, batches, device))
            times["graph replay only"].append(timed(lambda _: captured.graph.replay(), batches, device))
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.3f} ms" for k, v in times.items() if v), flush=True)
    print("| update of batch 32 | median ms (rounds) |\n|---|---|")
    for name, values in times.items():
        if values:
            print(f"| {name} | {statistics.median(values):.3f} ({', '.join(f'{v:.3f}' for v in values)}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
