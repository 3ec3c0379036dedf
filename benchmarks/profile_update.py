"""Where a training update's time goes: env stepping, acting, learning (and a torch profile).

Runs the training loop's own pieces (OnPolicyCollector, agent.learn) on Pong with the agent's
Atari preset, times 50 updates after 10 warm-up ones, then profiles 5 more with torch's profiler.
``--agent soft-q`` runs ReplayCollector's pipelined step (ReplayBuffer.sample, and learn while
the envs step) at DQN's replay ratio (4 envs, one update of batch 32 per vector step), as
paired_speed.py pairs it with SB3's DQN.

    .venv/bin/python benchmarks/profile_update.py --agent a3c [--bf16] [--table]
    .venv/bin/python benchmarks/profile_update.py --agent soft-q --updates 400 [--no-env] [--onednn]

``--no-env`` (soft-q) times the loop without the emulators: after the warm-up, ``send`` does
nothing and ``recv`` returns the last real step again, so what remains is torch and the replay.

``--onednn`` then runs 20 more updates with oneDNN's verbose mode on and prints the time of each
oneDNN primitive it ran (convolutions by direction and implementation, reorders), per update:
oneDNN's own clock, without the torch profiler's overhead.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile
import time

import equirl  # noqa: F401  (before torch: equirl sets OpenMP's wait settings)

# isort: split
import numpy as np
import torch
from paired_speed import SOFT_Q_SETTINGS  # benchmarks/ is on the path when this script runs

from equirl.zoo import heap, presets
from equirl.zoo.envs import make_vector_env, spec_from_id
from equirl.zoo.replay import ReplayBuffer
from equirl.zoo.rollout import OnPolicyCollector, ReplayCollector
from equirl.zoo.train import build_agent


def filled_replay(agent, env, cfg, vector_steps: int | None = None, seed: int = 0) -> tuple[ReplayCollector, ReplayBuffer]:
    """soft-q's collector and a replay buffer of ``cfg.buffer_size`` filled by the agent's own
    plain steps: ``vector_steps`` of them, by default just past ``learning_starts``."""
    collector = ReplayCollector(env, seed)
    replay = ReplayBuffer(cfg.buffer_size, env.num_envs, env.obs_info.shape, env.obs_info.dtype, frame_stack=True)
    for _ in range(cfg.learning_starts // env.num_envs + 10 if vector_steps is None else vector_steps):
        collector.step(agent, replay)
    return collector, replay


def without_emulation(env) -> None:
    """From now on ``env.send`` does nothing and ``env.recv`` returns one real step again."""
    env.send(0, np.zeros(env.num_envs, dtype=np.int64))
    last = env.recv(0)
    env.send = lambda group, actions, release_cores=True: None
    env.recv = lambda group: last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default="a3c", choices=["a3c", "matched-q", "entropy-pg", "soft-q"])
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--table", action="store_true", help="also print torch's operator table")
    parser.add_argument("--bf16", action="store_true", help="the CNN under bfloat16 autocast")
    parser.add_argument("--onednn", action="store_true",
                        help="also time each oneDNN primitive (its verbose mode) over 20 more updates")
    parser.add_argument("--no-env", action="store_true",
                        help="soft-q: after the warm-up, no emulation (send does nothing, recv repeats the last step)")
    args = parser.parse_args()
    heap.keep_freed_blocks()  # as train() does
    spec = spec_from_id(args.env)
    soft_q = args.agent == "soft-q"
    if args.no_env and not soft_q:
        parser.error("--no-env is for soft-q")
    cfg = presets.make_config(args.agent, presets.family_of(spec.kind), bf16=args.bf16,
                              **(SOFT_Q_SETTINGS if soft_q else {}))
    env = make_vector_env(spec, cfg.num_envs)
    agent = build_agent(args.agent, cfg, spec, env.obs_info, env.num_actions, torch.device("cpu"), 0)
    times = {"env": 0.0, "act": 0.0, "sample": 0.0, "learn": 0.0, "total": 0.0}
    # The collectors act through act_recorded (on-policy: acting's forward pass kept for the
    # update) and act_for_training (soft-q: actions and the behaviour policy's KL).
    act_name = "act_for_training" if soft_q else "act_recorded"
    recv, act = env.recv, getattr(agent, act_name)

    def timed_recv(group):
        start = time.perf_counter()
        out = recv(group)
        times["env"] += time.perf_counter() - start
        return out

    def timed_act(obs, *args):
        start = time.perf_counter()
        out = act(obs, *args)
        times["act"] += time.perf_counter() - start
        return out

    env.recv = timed_recv  # the collectors step the envs with send and recv
    setattr(agent, act_name, timed_act)
    if soft_q:
        collector, replay = filled_replay(agent, env, cfg)
        rng = np.random.default_rng(0)

        def next_batch():
            start = time.perf_counter()
            sample = replay.sample(cfg.batch_size, cfg.n_steps, rng, agent.to_tensor, agent.device)
            times["sample"] += time.perf_counter() - start
            return sample

        def learn(sample) -> None:
            start = time.perf_counter()
            agent.learn(sample)
            times["learn"] += time.perf_counter() - start

        def iteration() -> None:
            # One vector step of num_envs agent steps and one update (train_freq == num_envs), as
            # train() runs them: the update while the envs step (ReplayCollector.step), so "env"
            # is only the wait for the emulators after it, and "act" includes the batch's forward.
            collector.step(agent, replay, next_batch, learn)

        transitions = env.num_envs
    else:
        collector = OnPolicyCollector(env, cfg.n_steps, 0)

        def iteration() -> None:
            rollout, _ = collector.collect(agent)
            start = time.perf_counter()
            agent.learn(rollout)
            times["learn"] += time.perf_counter() - start

        transitions = cfg.num_envs * cfg.n_steps
    for i in range(10 + args.updates):
        if i == 10:
            if args.no_env:
                without_emulation(env)
            times = dict.fromkeys(times, 0.0)
        start = time.perf_counter()
        iteration()
        times["total"] += time.perf_counter() - start
    per_update = {k: 1000 * v / args.updates for k, v in times.items() if soft_q or k != "sample"}
    print(f"{args.agent} on {args.env}, {transitions} transitions per update, torch threads {torch.get_num_threads()}:")
    print("  " + ", ".join(f"{k} {v:.1f} ms" for k, v in per_update.items()) +
          f"; {transitions * args.updates / times['total']:.0f} steps/s")
    if args.table:
        with torch.autograd.profiler.profile() as prof:
            for _ in range(5 if not soft_q else 20):
                iteration()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    if args.onednn:
        print_onednn_primitives(iteration, 20)
    env.close()


def print_onednn_primitives(iteration, updates: int) -> None:
    """Run ``updates`` iterations with oneDNN's verbose mode on (it prints a line per primitive
    executed, with its time, from C: captured here at the file-descriptor level), then print the
    time per update of each kind of primitive, largest first."""
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+") as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                for _ in range(updates):
                    iteration()
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = [line.strip().split(",") for line in log if line.startswith("onednn_verbose,v1,primitive,exec")]
    if not lines:
        print("\noneDNN ran no primitive (a torch without oneDNN, or oneDNN disabled)")
        return
    # onednn_verbose,v1,primitive,exec,cpu,KIND,IMPLEMENTATION,PROPAGATION,MEMORY,ATTRIBUTES,AUX,PROBLEM,MS
    totals: dict[tuple, list] = collections.defaultdict(lambda: [0, 0.0])
    for fields in lines:
        total = totals[(fields[5], fields[7], fields[6], fields[-2])]
        total[0] += 1
        total[1] += float(fields[-1])
    grand = sum(ms for _, ms in totals.values())
    print(f"\noneDNN primitives over {updates} updates: {grand / updates:.2f} ms per update inside oneDNN")
    print("| calls/update | ms/update | primitive | direction | implementation | problem |")
    print("|---|---|---|---|---|---|")
    for (kind, direction, implementation, problem), (calls, ms) in sorted(totals.items(), key=lambda kv: -kv[1][1]):
        print(f"| {calls / updates:.1f} | {ms / updates:.3f} | {kind} | {direction} | {implementation} | {problem} |")


if __name__ == "__main__":
    main()
