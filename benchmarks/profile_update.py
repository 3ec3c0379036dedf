"""Where an on-policy update's time goes: env stepping, acting, learning (and a torch profile).

Runs the training loop's own pieces (OnPolicyCollector, agent.learn) on Pong with the agent's
Atari preset, times 50 updates after 10 warm-up ones, then profiles 5 more with torch's profiler.

    .venv/bin/python benchmarks/profile_update.py --agent a3c [--bf16] [--table]
"""
from __future__ import annotations

import argparse
import time

import equirl  # noqa: F401  (before torch: equirl sets OMP_WAIT_POLICY)

# isort: split
import torch

from equirl.zoo import presets
from equirl.zoo.envs import make_vector_env, spec_from_id
from equirl.zoo.rollout import OnPolicyCollector
from equirl.zoo.train import build_agent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agent", default="a3c", choices=["a3c", "matched-q", "entropy-pg"])
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--table", action="store_true", help="also print torch's operator table")
    parser.add_argument("--bf16", action="store_true", help="the CNN under bfloat16 autocast")
    args = parser.parse_args()
    spec = spec_from_id(args.env)
    cfg = presets.make_config(args.agent, presets.family_of(spec.kind), bf16=args.bf16)
    env = make_vector_env(spec, cfg.num_envs)
    agent = build_agent(args.agent, cfg, spec, env.obs_info, env.num_actions, torch.device("cpu"), 0)
    collector = OnPolicyCollector(env, cfg.n_steps, 0)
    times = {"env": 0.0, "act": 0.0, "learn": 0.0, "total": 0.0}
    # The collector acts through act_recorded (acting's forward pass kept for the update).
    act_name = "act_recorded" if hasattr(agent, "act_recorded") else "act"
    step, act = env.step, getattr(agent, act_name)

    def timed_step(actions):
        start = time.perf_counter()
        out = step(actions)
        times["env"] += time.perf_counter() - start
        return out

    def timed_act(obs, *args):
        start = time.perf_counter()
        out = act(obs, *args)
        times["act"] += time.perf_counter() - start
        return out

    env.step = timed_step
    setattr(agent, act_name, timed_act)
    for i in range(10 + args.updates):
        if i == 10:
            times = dict.fromkeys(times, 0.0)
        start = time.perf_counter()
        rollout, _ = collector.collect(agent)
        middle = time.perf_counter()
        agent.learn(rollout)
        times["learn"] += time.perf_counter() - middle
        times["total"] += time.perf_counter() - start
    per_update = {k: 1000 * v / args.updates for k, v in times.items()}
    transitions = cfg.num_envs * cfg.n_steps
    print(f"{args.agent} on {args.env}, {transitions} transitions per update, torch threads {torch.get_num_threads()}:")
    print("  " + ", ".join(f"{k} {v:.1f} ms" for k, v in per_update.items()) +
          f"; {transitions * args.updates / times['total']:.0f} steps/s")
    if args.table:
        with torch.autograd.profiler.profile() as prof:
            for _ in range(5):
                rollout, _ = collector.collect(agent)
                agent.learn(rollout)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    env.close()


if __name__ == "__main__":
    main()
