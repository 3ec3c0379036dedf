"""Before/after of a change, as whole training runs of both versions alternated in ONE process.

``ab_update.py`` times acting and learning with this checkout's env, replay and collector for
both versions; this runs each checkout's own ``train()`` (its replay buffer, collector and loop
too) on the paired comparison's settings (paired_speed.py: DQN's replay ratio for soft-q, A2C's
for the on-policy agents), the two versions alternated, and prints each run's steps/s and the
per-round ratio. Fresh processes on this shared host moved 10-20% from run to run; runs
alternated in one process share the host's state of the minute.

    git worktree add --detach /tmp/base <revision>
    .venv/bin/python benchmarks/ab_train.py --base /tmp/base --agent soft-q [--rounds 8] [--steps 4000]
"""
from __future__ import annotations

import importlib
import statistics

import equirl  # noqa: F401  (before torch: equirl sets OpenMP's wait settings)

# isort: split
from ab_update import ab_parser, load_base  # benchmarks/ is on the path when this script runs
from paired_speed import A2C_SETTINGS, SOFT_Q_SETTINGS

from equirl.zoo.train import train


def main() -> None:
    parser = ab_parser(__doc__.splitlines()[0], 8, "runs per version, alternated")
    parser.add_argument("--steps", type=int, default=4000, help="agent steps per run")
    args = parser.parse_args()
    base = load_base(parser, args.base)
    trains = {"base": importlib.import_module("equirl_base.zoo.train").train, "this": train}
    values = dict(SOFT_Q_SETTINGS if args.agent == "soft-q" else A2C_SETTINGS)
    sps: dict[str, list[float]] = {"base": [], "this": []}
    for run in trains.values():  # a short untimed run of each first (imports, first-call costs)
        run(args.agent, args.env, 800, seed=0, config_values=values)
    for round_ in range(args.rounds):
        for name in (("base", "this") if round_ % 2 == 0 else ("this", "base")):
            result = trains[name](args.agent, args.env, args.steps, seed=0, config_values=values)
            sps[name].append(result.steps_per_second)
        print(f"round {round_ + 1}: base {sps['base'][-1]:7.1f}  this {sps['this'][-1]:7.1f} steps/s  "
              f"this/base {sps['this'][-1] / sps['base'][-1]:.3f}", flush=True)
    ratios = [t / b for t, b in zip(sps["this"], sps["base"])]
    print(f"{args.agent} on {args.env}, {args.rounds} runs of {args.steps} steps per version (base: {args.base}, "
          f"{base.__file__}): base median {statistics.median(sps['base']):.1f}, this median "
          f"{statistics.median(sps['this']):.1f} steps/s; this/base per round: median {statistics.median(ratios):.3f} "
          f"[{min(ratios):.3f}-{max(ratios):.3f}], faster in {sum(r > 1 for r in ratios)} of {len(ratios)}")


if __name__ == "__main__":
    main()
