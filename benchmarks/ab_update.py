"""Before/after of a change to the training update, both versions in ONE process, alternated.

Loads another checkout's equirl package next to this one (as ``equirl_base``), builds the same
agent from each with the same seed and settings (paired_speed.py's: A2C's for the on-policy
agents, DQN's replay ratio for soft-q), and times them in alternating blocks of updates on one
Pong vector env: soft-q's acting (``act_for_training`` with the next batch, as the collector
calls it, which now includes the target network's pass over the batch) and its learning step
on that batch,
an on-policy agent's rollout collection (emulator included) and its update. On a shared, noisy
host, separate processes moved by 10-20% from run to run; blocks alternated within one process
resolve differences of a few percent (BENCHMARKS.md).

    git worktree add /tmp/base <revision>
    .venv/bin/python benchmarks/ab_update.py --base /tmp/base --agent soft-q [--rounds 12] [--updates 50] [--bf16]

Both checkouts must share the collector interface (the env, replay and collector are this
checkout's; each agent acts and learns with its own package's code); for soft-q, a base from
c4caadd on (``act_for_training`` takes the next batch or, before this change, its observations).
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import statistics
import sys
import time
from pathlib import Path

import equirl  # noqa: F401  (before torch: equirl sets OpenMP's wait settings)

# isort: split
import numpy as np
import torch
from paired_speed import A2C_SETTINGS, SOFT_Q_SETTINGS  # benchmarks/ is on the path when this script runs

from equirl.zoo import heap, presets
from equirl.zoo.envs import make_vector_env, spec_from_id
from equirl.zoo.replay import ReplayBuffer
from equirl.zoo.rollout import OnPolicyCollector, ReplayCollector
from equirl.zoo.train import build_agent


def load_package(name: str, folder: Path):
    """Import the package in ``folder`` under another top-level name (its imports are relative)."""
    spec = importlib.util.spec_from_file_location(name, folder / "__init__.py", submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def ab_parser(description: str, rounds: int, rounds_help: str) -> argparse.ArgumentParser:
    """The arguments of the before/after scripts (this one, ab_train.py): the base checkout, the
    agent, the env and the rounds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--base", type=Path, required=True, metavar="CHECKOUT")
    parser.add_argument("--agent", default="soft-q", choices=["a3c", "matched-q", "entropy-pg", "soft-q"])
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--rounds", type=int, default=rounds, help=rounds_help)
    return parser


def load_base(parser: argparse.ArgumentParser, checkout: Path):
    """The base checkout's equirl package, as ``equirl_base``; a usage error if there is none."""
    if not (checkout / "equirl" / "__init__.py").is_file():
        parser.exit(2, f"{parser.prog}: error: --base {checkout}: no equirl package there\n")
    return load_package("equirl_base", checkout / "equirl")


def main() -> None:
    parser = ab_parser(__doc__.splitlines()[0], 12, "blocks per version, alternated")
    parser.add_argument("--updates", type=int, default=50, help="timed updates per block (after 10 untimed)")
    parser.add_argument("--bf16", action="store_true", help="both versions with bf16=True")
    args = parser.parse_args()
    base = load_base(parser, args.base)
    importlib.import_module("equirl_base.zoo.train")
    heap.keep_freed_blocks()  # as train() does
    soft_q = args.agent == "soft-q"
    settings = {**(SOFT_Q_SETTINGS if soft_q else A2C_SETTINGS), **({"bf16": True} if args.bf16 else {})}
    spec = spec_from_id(args.env)
    cfg = presets.make_config(args.agent, presets.family_of(spec.kind), **settings)
    env = make_vector_env(spec, cfg.num_envs)
    agents = {
        "base": base.zoo.train.build_agent(
            args.agent, base.zoo.presets.make_config(args.agent, presets.family_of(spec.kind), **settings),
            base.zoo.envs.spec_from_id(args.env), env.obs_info, env.num_actions, torch.device("cpu"), 0),
        "this": build_agent(args.agent, cfg, spec, env.obs_info, env.num_actions, torch.device("cpu"), 0),
    }
    parts = ("act", "learn") if soft_q else ("collect", "learn")
    times = {name: {part: [] for part in parts} for name in agents}
    if soft_q:
        collector = ReplayCollector(env, 0)
        replay = ReplayBuffer(cfg.buffer_size, env.num_envs, env.obs_info.shape, env.obs_info.dtype, frame_stack=True)
        rng = np.random.default_rng(0)
        for _ in range(cfg.learning_starts // env.num_envs + 10):
            collector.step(agents["this"], replay)

        # The env steps with a third agent of this checkout that never learns (untimed), so both
        # versions see the same stream and their own acting records stay theirs.
        stepper = build_agent(args.agent, cfg, spec, env.obs_info, env.num_actions, torch.device("cpu"), 0)

        # act_for_training takes the next batch since its targets are computed while acting;
        # before, that batch's observations.
        takes_batch = {agent: "batch" in inspect.signature(agent.act_for_training).parameters
                       for agent in agents.values()}

        def update(agent) -> tuple[float, float]:
            # As ReplayCollector.step orders it: the batch is drawn first and goes through acting's
            # forward pass, which the update then replays (a version that records).
            batch = replay.sample(cfg.batch_size, cfg.n_steps, rng, agent.to_tensor, agent.device)
            start = time.perf_counter()
            agent.act_for_training(collector.obs, batch if takes_batch[agent] else batch.obs)
            acted = time.perf_counter()
            collector.step(stepper, replay)
            learn = time.perf_counter()
            agent.learn(batch)
            return acted - start, time.perf_counter() - learn
    else:
        collector = OnPolicyCollector(env, cfg.n_steps, 0)

        def update(agent) -> tuple[float, float]:
            start = time.perf_counter()
            rollout, _ = collector.collect(agent)
            collected = time.perf_counter()
            agent.learn(rollout)
            return collected - start, time.perf_counter() - collected

    for round_ in range(args.rounds):
        for name in (("base", "this") if round_ % 2 == 0 else ("this", "base")):
            sums = [0.0, 0.0]
            for i in range(10 + args.updates):
                spent = update(agents[name])
                if i >= 10:
                    sums = [s + t for s, t in zip(sums, spent)]
            for part, total in zip(parts, sums):
                times[name][part].append(1000 * total / args.updates)
    print(f"{args.agent} on {args.env}: {args.rounds} blocks of {args.updates} updates per version, alternated "
          f"(base: {args.base}); ms per update, median [min-max]")
    for part in parts:
        cells = []
        for name in ("base", "this"):
            values = times[name][part]
            cells.append(f"{name} {statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]")
        change = statistics.median(times["this"][part]) - statistics.median(times["base"][part])
        print(f"  {part:<8} " + "  ".join(cells) + f"  change {change:+.2f} ms")
    env.close()


if __name__ == "__main__":
    main()
