"""soft-q's pipelined vector step against the plain order, alternated in one process.

Pipelined (ReplayCollector.step with next_batch/learn, what train() runs): the update's batch is
drawn before acting and goes through acting's forward pass, and the update runs while the
emulators step. Plain: act, step, store, sample, learn, each forward fresh. Both at DQN's replay
ratio on Pong as paired_speed.py pairs soft-q with SB3's DQN (4 envs, one update of batch 32 per
vector step); blocks of ``--steps`` vector steps alternate, so the host's drift hits both alike.

    .venv/bin/python benchmarks/soft_q_pipeline.py --blocks 12 --steps 100
"""
from __future__ import annotations

import argparse
import time

import equirl  # noqa: F401  (before torch: equirl sets OpenMP's wait settings)

# isort: split
import numpy as np
import torch
from paired_speed import SOFT_Q_SETTINGS  # benchmarks/ is on the path when this script runs
from profile_update import filled_replay

from equirl.zoo import heap, presets
from equirl.zoo.envs import make_vector_env, spec_from_id
from equirl.zoo.rollout import training_rewards
from equirl.zoo.train import build_agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--blocks", type=int, default=12, help="blocks of each order, alternated")
    parser.add_argument("--steps", type=int, default=100, help="vector steps (and updates) a block")
    args = parser.parse_args()
    heap.keep_freed_blocks()  # as train() does
    spec = spec_from_id(args.env)
    cfg = presets.make_config("soft-q", presets.family_of(spec.kind), **SOFT_Q_SETTINGS)
    env = make_vector_env(spec, cfg.num_envs)
    agent = build_agent("soft-q", cfg, spec, env.obs_info, env.num_actions, torch.device("cpu"), 0)
    collector, replay = filled_replay(agent, env, cfg)
    rng = np.random.default_rng(0)

    def next_batch():
        return replay.sample(cfg.batch_size, cfg.n_steps, rng, agent.to_tensor, agent.device)

    def pipelined() -> None:
        collector.step(agent, replay, next_batch, agent.learn)

    def plain() -> None:
        actions, kl = agent.act_for_training(collector.obs)
        step = env.step(actions)
        replay.add(collector.obs, actions, training_rewards(step, spec.reward_clipping), step.terminated,
                   step.truncated & ~step.terminated, kl, step.final_obs)
        collector.obs = step.obs
        agent.learn(next_batch())

    orders = {"pipelined": pipelined, "plain": plain}
    times: dict[str, list[float]] = {name: [] for name in orders}
    for block in range(args.blocks):
        for name, iteration in (orders.items() if block % 2 == 0 else reversed(orders.items())):
            for _ in range(5):  # settle after the switch
                iteration()
            start = time.perf_counter()
            for _ in range(args.steps):
                iteration()
            times[name].append(1000 * (time.perf_counter() - start) / args.steps)
    print(f"soft-q on {args.env}, {env.num_envs} envs, one update of batch {cfg.batch_size} a vector step, "
          f"torch threads {torch.get_num_threads()}; ms per vector step:")
    for name, values in times.items():
        print(f"  {name:9s} median {np.median(values):6.2f}  blocks " + " ".join(f"{v:.2f}" for v in values))
    pairs = np.array(times["plain"]) / np.array(times["pipelined"])
    print(f"  plain / pipelined per block: median {np.median(pairs):.3f}, "
          f"range {pairs.min():.3f}-{pairs.max():.3f}")
    env.close()


if __name__ == "__main__":
    main()
