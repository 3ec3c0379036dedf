"""Continue training a bundled agent from its weights, in float32 or bf16: the same start for both
precisions (BENCHMARKS.md, "soft-q continued from the bundled soft-q-Pong").

The run starts from the bundled agent's network (and, for soft-q, a target network copied from
it), with a fresh optimizer and, for soft-q, a fresh replay buffer; ``--set`` values override
the agent's Atari preset as ``equirl train --set`` does. Prints the training episodes' scores;
play the result with ``equirl evaluate OUT``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/continue_bundled.py soft-q-Pong --precision bf16 \\
        --steps 300000 --seed 1 --set n_steps=5 --out /tmp/continued-bf16
"""
from __future__ import annotations

import argparse
import statistics

import equirl
import equirl.zoo.train as train_module
from equirl.cli import _parse_sets as parse_overrides


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundled", help="a bundled agent's name, e.g. soft-q-Pong")
    parser.add_argument("--precision", choices=["float32", "bf16"], default="float32")
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    start = equirl.load(args.bundled)
    build_agent = train_module.build_agent

    def build_from_bundled(*a, **k):
        agent = build_agent(*a, **k)
        agent.load_weights(start.weights())
        if hasattr(agent, "target"):  # soft-q: its target network starts as the network
            agent.target.load_state_dict(agent.network.state_dict())
        return agent

    train_module.build_agent = build_from_bundled
    overrides = parse_overrides(args.set)
    overrides["bf16"] = str(args.precision == "bf16").lower()
    result = train_module.train(start.agent_id, start.env_spec.env_id, args.steps, seed=args.seed, out=args.out,
                                overrides=overrides, log_every=500)
    scores = [episode.score for episode in result.episodes]
    print(f"{args.bundled} continued in {args.precision}: {result.steps} steps at {result.steps_per_second:.0f} steps/s, "
          f"{len(scores)} episodes, mean {statistics.mean(scores) if scores else float('nan'):.2f}, "
          f"last 20 {statistics.mean(scores[-20:]) if scores else float('nan'):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
