"""The ``equirl`` command."""
from __future__ import annotations

import argparse
import shlex
import sys

from .agents import AGENTS


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        out[name.strip()] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equirl", description="Entropy-regularized RL agents (Schulman, Chen & Abbeel 2017).")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train an agent on a Gymnasium / Atari env")
    train.add_argument("agent", help=f"one of: {', '.join(AGENTS)}")
    train.add_argument("env_id", help="Gymnasium id, e.g. ALE/Pong-v5, PongNoFrameskip-v4, CartPole-v1")
    train.add_argument("--steps", type=int, default=100_000, help="agent steps (transitions over all envs)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default=None, help="run directory (default: runs/AGENT-ENV-sSEED)")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    train.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a hyperparameter (repeatable)")
    train.add_argument("--checkpoint-every", type=int, default=100_000, help="agent steps between checkpoints")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        from .zoo.envs import EnvError
        from .zoo.train import TrainError, train

        out = args.out or f"runs/{args.agent}-{args.env_id.replace('/', '-')}-s{args.seed}"
        try:
            result = train(args.agent, args.env_id, args.steps, seed=args.seed, out=out, device=args.device,
                           overrides=_parse_sets(args.sets), progress=not args.no_progress,
                           checkpoint_every=args.checkpoint_every,
                           command="equirl " + " ".join(shlex.quote(a) for a in argv))
        except (TrainError, EnvError, ValueError) as err:
            parser.exit(2, f"equirl train: error: {err}\n")
        scores = [e.score for e in result.episodes[-20:]]
        mean = f"{sum(scores) / len(scores):.2f} over the last {len(scores)} episodes" if scores else "no episode finished"
        print(f"trained {args.agent} on {args.env_id}: {result.steps} steps in {result.seconds:.1f}s "
              f"({result.steps / result.seconds:.0f} steps/s); return {mean}; run dir: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
