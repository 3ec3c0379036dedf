"""The ``equirl`` command."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

from .agents import AGENTS


def _parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        out[name.strip()] = value
    return out


def _fresh_run_dir(base: str) -> str:
    """``base``, or ``base_2``, ``base_3``, ... : the first that does not exist (as RL Zoo does)."""
    candidate, n = base, 1
    while Path(candidate).exists():
        n += 1
        candidate = f"{base}_{n}"
    return candidate


def _launch_prefix() -> str:
    """How this process was started, for the recorded command: torchrun sets these variables."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return ""
    nodes = int(os.environ["WORLD_SIZE"]) // int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    nodes_flag = f"--nnodes {nodes} " if nodes > 1 else ""
    return f"torchrun {nodes_flag}--nproc-per-node {os.environ.get('LOCAL_WORLD_SIZE', '?')} -m "


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equirl", description="Entropy-regularized RL agents (Schulman, Chen & Abbeel 2017).")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train an agent on a Gymnasium / Atari env")
    train.add_argument("agent", help=f"one of: {', '.join(AGENTS)}")
    train.add_argument("env_id", help="Gymnasium id, e.g. ALE/Pong-v5, PongNoFrameskip-v4, CartPole-v1")
    train.add_argument("--steps", type=int, default=100_000, help="agent steps (transitions over all envs)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--out", default=None, help="run directory (default: a new runs/AGENT-ENV-sSEED[_N])")
    train.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    train.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                       help="override a hyperparameter (repeatable)")
    train.add_argument("--checkpoint-every", type=int, default=100_000, help="agent steps between checkpoints")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument("--check-sync-every", type=int, default=100, metavar="UPDATES",
                       help="under torchrun: compare parameter fingerprints of all ranks every UPDATES updates "
                            "(0: never)")
    train.add_argument("--env-groups", type=int, default=None, metavar="N",
                       help="on-policy agents on Atari: step the envs in N groups, acting for one while the "
                            "others emulate (default: 2 on a GPU, 1 on CPU)")
    check = sub.add_parser("equivalence", help="measure the paper's equivalence with equirl's own losses and agents")
    check.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    check.add_argument("--updates", type=int, default=200, help="updates of the side-by-side trajectory check")
    exp = sub.add_parser("experiment", help="run one of the paper's §6 experiments and plot it")
    exp.add_argument("name", help="estimators (§6.1), soft-dqn (§6.2) or a3c-vs-matched-q (§6.3)")
    exp.add_argument("--games", nargs="+", default=["Pong"], help="game names (Pong) or full env ids")
    exp.add_argument("--frames", type=int, default=10_000_000, help="frames per run (agent steps x frameskip)")
    exp.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    exp.add_argument("--only", nargs="+", default=None, help="run only these variants")
    exp.add_argument("--device", default="auto")
    exp.add_argument("--out", default="experiments")
    exp.add_argument("--no-progress", action="store_true")
    zoo = sub.add_parser("zoo", help="the bundled pretrained agents")
    zoo_sub = zoo.add_subparsers(dest="zoo_command", required=True)
    zoo_sub.add_parser("list", help="every bundled agent with its stored score")
    train_all = zoo_sub.add_parser("train-all", help="reproduce every bundled agent from its recipe")
    train_all.add_argument("--only", nargs="+", default=None, help="names of the agents to retrain")
    train_all.add_argument("--out", default=None, help="write here instead of into the package")
    train_all.add_argument("--work", default=None,
                           help="keep each run in WORK/NAME and resume it there (long Atari runs)")
    from .evaluation.commands import register

    register(sub)  # evaluate, record
    push = sub.add_parser("push", help="publish a run: to a Hugging Face repo (one commit) or a local folder")
    push.add_argument("run_dir", help="a run directory or any loadable repo folder")
    push.add_argument("target", help="Hub repo id 'org/name', or a folder ('./zoo/x', '/abs/path', an existing dir)")
    push.add_argument("--private", action="store_true", help="create the Hub repo private")
    push.add_argument("--message", default=None, help="commit message")
    return parser


def _push(args, parser) -> int:
    from .evaluation.evaluate import EvaluationError
    from .evaluation.video import VideoError
    from .hub.publish import PushError, push

    try:
        where = push(args.run_dir, args.target, private=args.private, commit_message=args.message)
    except PushError as err:
        parser.exit(2, f"equirl push: error: {err}\n")
    except (EvaluationError, VideoError, OSError) as err:
        # Making the missing results.json / replay.mp4 failed: nothing was pushed.
        print(f"equirl push: error: {err}; nothing was pushed", file=sys.stderr)
        return 1
    print(f"pushed {args.run_dir} -> {where}")
    return 0


def _zoo(args) -> int:
    from .zoo import bundled

    if args.zoo_command == "list":
        rows = bundled.listing()
        print("| name | Hub name | agent | env | score (mean ± std, episodes) |\n|---|---|---|---|---|")
        for r in rows:
            score = f"{r['mean']:.2f} ± {r['std']:.2f} ({r['episodes']})" if r["mean"] is not None else "not evaluated"
            print(f"| {r['name']} | {r['hub_name']} | {r['agent']} | {r['env_id']} | {score} |")
        return 0
    out = Path(args.out) if args.out else bundled.PRETRAINED_DIR
    try:
        bundled.train_all(out, only=args.only, work=Path(args.work) if args.work else None)
    except bundled.ZooError as err:
        print(f"equirl zoo train-all: error: {err}", file=sys.stderr)
        return 2 if "no recipe named" in str(err) else 1
    return 0


def _experiment(args, parser) -> int:
    from .zoo.envs import EnvError
    from .zoo.experiments import run_experiment
    from .zoo.train import TrainError

    try:
        report = run_experiment(args.name, args.games, args.frames, args.seeds, args.out, device=args.device,
                                only=args.only, progress=not args.no_progress)
    except (TrainError, EnvError, ValueError) as err:
        parser.exit(2, f"equirl experiment: error: {err}\n")
    print(report.read_text())
    print(f"report and learning curves in {report.parent}")
    return 0


def _equivalence(args) -> int:
    import json

    from .evaluation.equivalence import BOUNDS, run_all

    results = run_all(trajectory_updates=args.updates)
    failed = [name for name, bound in BOUNDS.items() if not results[name] <= bound]
    if args.json:
        print(json.dumps({"results": results, "bounds": BOUNDS, "passed": not failed}, indent=2))
    else:
        print(f"{'check':<48} {'measured':>12} {'bound':>9}")
        for name, value in results.items():
            bound = BOUNDS.get(name)
            verdict = "" if bound is None else ("ok" if value <= bound else "FAIL")
            print(f"{name:<48} {value:>12.3g} {'' if bound is None else f'{bound:.0e}':>9} {verdict}")
        print("all bounds hold" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


def _leave_distributed(code: int) -> int:
    """Under torchrun, end the process here once training has finished and its files are closed:
    Python's exit handlers and buffered output run, C++ static destructors do not. On a fast 2-core
    host about one finished torchrun process in ten aborted while the interpreter tore down
    (SIGABRT, "terminate called without an active exception", no Python frame left, after
    destroy_process_group), so torchrun reported a completed run as failed. Outside torchrun this
    returns ``code``."""
    if os.environ.get("WORLD_SIZE", "1").strip() in ("", "0", "1"):
        return code
    import atexit

    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("train", "experiment") or getattr(args, "zoo_command", None) == "train-all":
        from .zoo.numerics import flush_subnormals

        try:  # before any tensor work, so that torch's worker threads start flushing too (numerics.py)
            flush_subnormals()
        except ValueError as err:
            parser.exit(2, f"equirl {args.command}: error: {err}\n")
    if args.command == "train":
        from .zoo.envs import EnvError
        from .zoo.train import TrainError, TrainingInterrupted, train

        if args.resume and not args.out:
            parser.exit(2, "equirl train: error: --resume needs --out DIR, the run to continue\n")
        out = args.out or _fresh_run_dir(f"runs/{args.agent}-{args.env_id.replace('/', '-')}-s{args.seed}")
        try:
            result = train(args.agent, args.env_id, args.steps, seed=args.seed, out=out, device=args.device,
                           overrides=_parse_sets(args.sets), progress=not args.no_progress,
                           checkpoint_every=args.checkpoint_every,
                           command=_launch_prefix() + "equirl " + " ".join(shlex.quote(a) for a in argv),
                           resume=args.resume, sync_check_every=args.check_sync_every, env_groups=args.env_groups)
        except (TrainError, EnvError, ValueError) as err:
            parser.exit(2, f"equirl train: error: {err}\n")
        except TrainingInterrupted as stop:
            if os.environ.get("RANK", "0") == "0":
                print(f"equirl train: stopped by {stop.signal_name} at step {stop.steps}; checkpoint saved. "
                      f"Continue with: {_launch_prefix()}equirl train {args.agent} {args.env_id} --steps {args.steps} "
                      f"--out {out} --resume", file=sys.stderr)
            return _leave_distributed(130 if stop.signal_name == "SIGINT" else 143)
        except FloatingPointError as err:
            print(f"equirl train: error: {err} ({out})", file=sys.stderr)
            return 1
        except OSError as err:
            print(f"equirl train: error: writing to {out} failed: {err}; the last complete checkpoint there "
                  f"is intact", file=sys.stderr)
            return 1
        if os.environ.get("RANK", "0") != "0":
            return _leave_distributed(0)  # under torchrun, rank 0 reports for all
        scores = [e.score for e in result.episodes[-20:]]
        mean = f"{sum(scores) / len(scores):.2f} over the last {len(scores)} episodes" if scores else "no episode finished"
        print(f"trained {args.agent} on {args.env_id}: {result.steps} steps in {result.seconds:.1f}s "
              f"({result.steps_per_second:.0f} steps/s); return {mean}; run dir: {out}")
        return _leave_distributed(0)
    elif args.command == "equivalence":
        return _equivalence(args)
    elif args.command == "experiment":
        return _experiment(args, parser)
    elif args.command == "push":
        return _push(args, parser)
    elif args.command == "zoo":
        return _zoo(args)
    elif args.command in ("evaluate", "record"):
        from .evaluation.commands import run

        return run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
