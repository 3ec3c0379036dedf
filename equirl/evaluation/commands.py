"""The ``equirl evaluate`` and ``equirl record`` commands.

``register(subparsers)`` adds them to the ``equirl`` parser and ``run(args)`` runs one: exit 0
when it worked, 1 when ``--verify`` does not reproduce or a video cannot be encoded, 2 with a
one-line ``equirl <command>: error: ...`` on bad input (never a traceback).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .evaluate import RESULTS_FILE, EvalResult, EvaluationError, evaluation_spec, results_dict, run_protocol, verify
from .protocol import HUMAN_REFERENCE, Protocol, ProtocolError
from .video import DEFAULT_MAX_STEPS, VideoError

DEFAULTS = Protocol()


class UsageError(ValueError):
    """Bad input to a command: reported in one line with exit status 2."""


def register(subparsers: Any) -> None:
    """Add ``evaluate`` and ``record`` to the ``equirl`` command's subparsers."""
    ev = subparsers.add_parser(
        "evaluate", help="evaluate agents with the standard protocol; compare several; --verify a results.json",
        description="Full games, raw game score, episode i from seed SEED + i, all episodes in parallel. "
                    "Several SOURCEs print one comparison table.")
    ev.add_argument("sources", nargs="+", metavar="SOURCE", help="a run folder, a bundled agent or a Hub repo id")
    ev.add_argument("--env", dest="env_id", default=None,
                    help="evaluate on this env id instead of the one recorded with the agent")
    ev.add_argument("--episodes", type=int, default=None, help=f"episodes per agent (default {DEFAULTS.episodes})")
    ev.add_argument("--seed", type=int, default=None, help=f"episode i uses seed SEED + i (default {DEFAULTS.seed})")
    mode = ev.add_mutually_exclusive_group()
    mode.add_argument("--greedy", dest="greedy", action="store_const", const=True, default=None,
                      help="act with the policy's mode (default)")
    mode.add_argument("--stochastic", dest="greedy", action="store_const", const=False,
                      help="sample actions from the policy (seeded: still reproducible)")
    ev.add_argument("--sticky", type=float, default=None, metavar="P",
                    help="sticky-action probability (Atari); default: the env id's (v5: 0.25, NoFrameskip-v4: 0)")
    ev.add_argument("--json", dest="json_path", default=None, metavar="PATH|-",
                    help="write results.json (a list of them for several SOURCEs) to PATH, or to stdout with -")
    ev.add_argument("--verify", action="store_true",
                    help="re-run the protocol stored in SOURCE's results.json and compare every episode")
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")

    rec = subparsers.add_parser("record", help="record one full game as an H.264 mp4 (replay.mp4)")
    rec.add_argument("source", metavar="SOURCE", help="a run folder, a bundled agent or a Hub repo id")
    rec.add_argument("--out", default="replay.mp4", help="the mp4 to write (default replay.mp4)")
    rec.add_argument("--steps", type=int, default=DEFAULT_MAX_STEPS,
                     help=f"at most this many agent steps (default {DEFAULT_MAX_STEPS}: the 108,000-frame cap)")
    rec.add_argument("--env", dest="env_id", default=None, help="play this env id instead of the agent's own")
    rec.add_argument("--seed", type=int, default=0, help="the game's seed (default 0)")
    rec.add_argument("--stochastic", action="store_true", help="sample actions instead of the policy's mode")
    rec.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")


def run(args: argparse.Namespace) -> int:
    """Run ``equirl evaluate`` or ``equirl record``; returns the exit status."""
    from ..hub.client import LoadError

    try:
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "record":
            return _record(args)
        raise UsageError(f"unknown command {args.command!r}")
    except (UsageError, ProtocolError, LoadError, EvaluationError) as err:
        return _fail(args.command, err, 2)
    except VideoError as err:
        return _fail(args.command, err, 1)
    except ValueError as err:  # EnvError, TrainError (bad --device), FormatError: bad input too
        return _fail(args.command, err, 2)


def _fail(command: str, err: Exception, status: int) -> int:
    message = " ".join(str(err).split())  # one line, whatever the exception's text holds
    print(f"equirl {command}: error: {message}", file=sys.stderr)
    return status


def _load(source: str, device: str) -> Any:
    from ..hub.client import load
    from ..zoo.train import resolve_device

    return load(source, device=resolve_device(device))


# ---- evaluate ----------------------------------------------------------------------------

def _evaluate(args: argparse.Namespace) -> int:
    if args.verify:
        return _verify(args)
    protocol = Protocol(episodes=DEFAULTS.episodes if args.episodes is None else args.episodes,
                        seed=DEFAULTS.seed if args.seed is None else args.seed,
                        greedy=DEFAULTS.greedy if args.greedy is None else args.greedy, sticky=args.sticky)
    agents = [_load(source, args.device) for source in args.sources]  # every source checked before any runs
    rows: list[tuple[str, Any, EvalResult]] = []
    for source, agent in zip(args.sources, agents):
        result = run_protocol(agent, evaluation_spec(agent, args.env_id), protocol)
        rows.append((source, agent, result))
    report = "\n".join(comparison_table(rows) + [""] + protocol_lines(protocol, rows))
    if args.json_path is not None:
        data = [results_dict(result, agent, source) for source, agent, result in rows]
        payload = data[0] if len(data) == 1 else data
        if args.json_path == "-":
            print(json.dumps(payload, indent=2, allow_nan=False))
            print(report, file=sys.stderr)
            return 0
        from ..hub.format import write_json

        write_json(Path(args.json_path), payload)
        report += f"\nresults written to {args.json_path}"
    print(report)
    return 0


def _verify(args: argparse.Namespace) -> int:
    given = [flag for flag, value in (("--episodes", args.episodes), ("--seed", args.seed), ("--sticky", args.sticky),
                                      ("--env", args.env_id), ("--greedy/--stochastic", args.greedy),
                                      ("--json", args.json_path)) if value is not None]
    if given:
        raise UsageError(f"--verify re-runs the protocol stored in results.json; it does not take {', '.join(given)}")
    failed = 0
    for source in args.sources:
        agent = _load(source, args.device)
        folder = getattr(agent, "source_dir", None)
        if folder is None or not (Path(folder) / RESULTS_FILE).is_file():
            raise UsageError(f"{source} has no {RESULTS_FILE} to verify against; write one with "
                             f"`equirl evaluate {source} --json PATH`")
        outcome = verify(Path(folder), agent)
        print(f"{source}: {outcome.describe()}")
        failed += not outcome.reproduced
    return 1 if failed else 0


def _number(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def comparison_table(rows: list[tuple[str, Any, EvalResult]]) -> list[str]:
    """One markdown row per evaluated agent."""
    lines = ["| source | agent | env | episodes | mean ± std | median | min | max | human-normalized |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for source, agent, r in rows:
        lines.append(f"| {source} | {getattr(agent, 'agent_id', '?')} | {r.spec.env_id} | {r.count} | "
                     f"{r.mean:.2f} ± {r.std:.2f} | {_number(r.median)} | {_number(r.min)} | {_number(r.max)} | "
                     f"{_number(r.human_normalized)} |")
    return lines


def protocol_lines(protocol: Protocol, rows: list[tuple[str, Any, EvalResult]]) -> list[str]:
    """The protocol in words, under the table: what a reader needs to compare the numbers."""
    results = [r for _, _, r in rows]
    last = protocol.seed + protocol.episodes - 1
    lines = [(f"Protocol: {protocol.episodes} episodes per agent, played in parallel, episode i from seed "
              f"{protocol.seed} + i (seeds {protocol.seed}..{last}); {protocol.policy_mode} actions; "
              f"mean ± population std of the raw game score.")]
    atari = [r.spec for r in results if r.spec.kind == "atari"]
    if atari:
        sticky = "; ".join(sorted({f"{s.env_id} {s.ale['repeat_action_probability']:g}" for s in atari}))
        source = "set by --sticky" if protocol.sticky is not None else "the env id's default"
        episodes = "full games over all lives" if protocol.full_game else "one life per episode"
        lines.append(f"Atari: {episodes}, raw unclipped score, up to {protocol.noop_max} no-op starts, "
                     f"{protocol.max_frames:,}-frame cap, frameskip {atari[0].ale['frameskip']}; "
                     f"sticky actions ({source}): {sticky}.")
        if any(r.human_normalized is not None for r in results):
            lines.append(f"Human-normalized = (mean − random) / (human − random), reference: {HUMAN_REFERENCE}.")
    if any(r.spec.kind != "atari" for r in results):
        lines.append("Other envs: episodes end at the env's own termination or time limit.")
    for source, _, r in rows:
        if any(r.truncated):
            lines.append(f"{source}: {sum(r.truncated)} of {r.count} episodes were cut by the frame cap or time "
                         f"limit, not ended by the game.")
    timing = ", ".join(f"{source} {r.seconds:.1f} s ({r.episodes_per_minute:.1f} episodes/min)"
                       for source, _, r in rows)
    lines.append(f"Wall time: {timing}.")
    return lines


# ---- record ------------------------------------------------------------------------------

def _record(args: argparse.Namespace) -> int:
    from .video import record

    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise UsageError(f"--out must name an .mp4 file (H.264 video), got {args.out!r}")
    if not out.parent.is_dir():
        raise UsageError(f"--out {args.out}: folder {out.parent} does not exist")
    if args.steps < 1:
        raise UsageError(f"--steps must be positive, got {args.steps}")
    agent = _load(args.source, args.device)
    summary = record(agent, args.env_id, out, max_steps=args.steps, seed=args.seed, greedy=not args.stochastic)
    print(f"recorded {summary.describe()}")
    return 0
