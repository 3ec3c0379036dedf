"""Eager vs ``torch.compile`` on CPU: the a3c network's forward+backward on one update's 80 uint8
frames plus an RMSprop step, the two alternated in rounds (BENCHMARKS.md).

    python benchmarks/compile_update.py --threads 1 --rounds 10
"""
from __future__ import annotations

import argparse
import statistics
import time

import equirl  # noqa: F401  (before torch: equirl sets OpenMP's wait settings)

# isort: split
import torch

from equirl.agents import losses
from equirl.agents.networks import ActorCriticNetwork

TRUNK = {"kind": "nature_cnn", "obs_shape": [4, 84, 84], "features": 512}
BATCH, ACTIONS = 80, 6  # 16 envs x 5 steps; Pong's action set
TAU, VALUE_COEF = 0.01, 0.5  # a3c's Atari defaults


def make() -> tuple[ActorCriticNetwork, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = ActorCriticNetwork(TRUNK, ACTIONS)
    return net, torch.optim.RMSprop(net.parameters(), lr=7e-4, alpha=0.99, eps=1e-5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--updates", type=int, default=5, help="updates timed per round and mode")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    obs = torch.randint(0, 256, (BATCH, 4, 84, 84), dtype=torch.uint8)
    actions = torch.randint(0, ACTIONS, (BATCH,))
    returns = torch.randn(BATCH)

    log_ref = losses.log_reference(ACTIONS, "uniform")

    def loss_fn(net: ActorCriticNetwork) -> torch.Tensor:
        # a3c's loss terms (agents/a3c.py) on fixed returns: what the compiler sees is the
        # network plus the losses' few elementwise ops.
        logits, values = net(obs)
        log_pi = torch.log_softmax(logits, -1)
        advantages = returns - values.detach()
        return (losses.policy_gradient_loss(log_pi.gather(1, actions[:, None]).squeeze(1), advantages)
                + losses.kl_penalty_loss(losses.kl_to_reference(log_pi, log_ref), TAU)
                + VALUE_COEF * losses.value_loss(values, returns))

    def update(net, optimizer, fn) -> None:
        optimizer.zero_grad(set_to_none=True)
        fn(net).backward()
        optimizer.step()

    modes = {"eager": (*make(), loss_fn), "compiled": (*make(), torch.compile(loss_fn))}
    start = time.perf_counter()
    for _ in range(3):
        update(*modes["compiled"])
    print(f"compilation and warm-up: {time.perf_counter() - start:.1f} s")
    for _ in range(3):
        update(*modes["eager"])

    times: dict[str, list[float]] = {name: [] for name in modes}
    for _ in range(args.rounds):
        for name, mode in modes.items():
            start = time.perf_counter()
            for _ in range(args.updates):
                update(*mode)
            times[name].append((time.perf_counter() - start) / args.updates * 1e3)
    eager, compiled = (statistics.median(times[name]) for name in modes)
    print(f"{args.threads} thread(s): eager {eager:.1f} ms, compiled {compiled:.1f} ms per update "
          f"(medians of {args.rounds} rounds); compiled is {eager / compiled:.2f}x")
    for name, values in times.items():
        print(f"  {name}: {', '.join(f'{v:.1f}' for v in values)}")


if __name__ == "__main__":
    main()
