"""Paired training-speed benchmark: equirl against Stable-Baselines3 (A2C, DQN) on the same machine.

Runs the two alternately, ROUNDS times each, with the same Atari settings (16 envs, 5-step
rollouts, Nature CNN, RMSprop), and prints steps/s per run and the ratio of medians. Alternating
runs in one invocation keep a shared, noisy machine fair to both sides.

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python benchmarks/paired_speed.py --agents a3c matched-q entropy-pg soft-q --rounds 3

``a3c+bf16`` (any agent, ``+bf16``) runs the agent with ``bf16=True``: its CNN under bfloat16
autocast. ``a3c+groups2`` (on-policy agents) steps the envs in 2 groups, acting for one while the
other emulates (``train(env_groups=2)``, the default on a GPU); ``a3c+groups1`` is lockstep.

Each equirl run imports equirl before torch, as the ``equirl`` command does, so it gets the
OpenMP wait settings ``import equirl`` makes (OpenMP reads them once, when torch loads it:
libgomp's idle threads spin, and equirl ends them before each emulator step; see
equirl/zoo/cpu_threads.py). SB3 runs as shipped, with OpenMP's default of spinning idle threads;
``--sb3-passive`` adds SB3 runs with ``OMP_WAIT_POLICY=PASSIVE`` in their environment too
(``sb3-a2c+passive``), so the table shows what that one setting is worth to SB3.

``--plain`` adds the brief's third anchor, a hand-written PyTorch A2C loop over the same vector
env (plain_a2c.py): as written (``plain-a2c``) and with equirl's two loop-independent settings,
channels-last and passive waits (``plain-a2c+tuned``).

``--base CHECKOUT`` adds each equirl agent run from another checkout's package (``a3c@base``),
for a before/after figure of a change measured in the same invocation:
``git worktree add /tmp/base main`` then ``--base /tmp/base``.

soft-q is paired with SB3's DQN at DQN's replay ratio (sb3_dqn_reference.py: 4 envs, one update
of batch 32 every 4 agent steps). The A2C side runs ../shared/bench/sb3_a2c_reference.py (SB3's
own Atari wrappers, as its users run it); pass --sb3-script to point elsewhere.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SB3 = HERE.parent.parent / "shared" / "bench" / "sb3_a2c_reference.py"


DQN_SCRIPT = HERE / "sb3_dqn_reference.py"
PLAIN_SCRIPT = HERE / "plain_a2c.py"
# The on-policy agents with SB3 A2C's network and optimizer (one shared CNN, RMSprop 7e-4): a3c's
# and matched-q's defaults already; entropy-pg's defaults (two CNNs, Adam) would time another model.
A2C_SETTINGS = {"shared_trunk": True, "optimizer": "rmsprop", "lr": 7e-4}
# soft-q with the settings of sb3_dqn_reference.py (learning_starts 32: the timed run updates
# throughout, as SB3's does after its warm-up). SB3 counts target_update_interval=2000 in agent
# steps (it syncs every 2000 // n_envs = 500 vector steps, stable_baselines3/dqn/dqn.py's
# _on_step); soft-q counts updates, one per vector step here: 500.
SOFT_Q_SETTINGS = {"num_envs": 4, "batch_size": 32, "train_freq": 4, "target_update_interval": 500,
                   "buffer_size": 100_000, "learning_starts": 32}


def equirl_sps(name: str, env_id: str, steps: int, threads: int = 0, device: str = "cpu",
               values: dict | None = None, warmup: int = 800, tree: Path | None = None) -> float:
    """A fresh process per run, like the SB3 side; a short warm-up run first in the same process.
    ``name`` is an agent id, with ``+bf16`` for the bfloat16-autocast trunk (``a3c+bf16``);
    ``values`` are further hyperparameters (soft-q gets DQN's replay settings); ``tree`` runs the
    equirl package of another checkout (a before/after comparison in one invocation)."""
    threads_line = f"torch.set_num_threads({threads})\n" if threads else ""
    agent, _, variant = name.partition("+")
    values = {**(SOFT_Q_SETTINGS if agent == "soft-q" else A2C_SETTINGS), **(values or {})}
    groups = ""  # passed only when asked for: a --base checkout may predate env_groups
    if variant == "bf16":
        values["bf16"] = True
    elif variant in ("groups1", "groups2"):
        groups = f", env_groups={variant[-1]}"
    elif variant:
        raise SystemExit(f"unknown variant {variant!r} in {name!r} (known: bf16, groups1, groups2)")
    code = (
        "import equirl, json, torch\n" + threads_line +  # equirl first: see the module docstring
        "from equirl.zoo.train import train\n"
        f"train({agent!r}, {env_id!r}, {warmup}, seed=0, device={device!r}, config_values={values!r}{groups})\n"
        f"r = train({agent!r}, {env_id!r}, {steps}, seed=0, device={device!r}, config_values={values!r}{groups})\n"
        "print(json.dumps({'sps': r.steps_per_second}))\n"
    )
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree.resolve())
        code = f"import equirl\nassert equirl.__file__.startswith({str(tree.resolve())!r}), equirl.__file__\n" + code
    # (``python -c`` puts the working directory first on sys.path, so it runs in the tree too)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env,
                         cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])["sps"]


def script_sps(args: list[str], passive: bool = False) -> float:
    """Steps/s printed (last line, JSON) by a peer script run with ``args``: OpenMP's default
    wait policy (the script as shipped), or ``passive``: OMP_WAIT_POLICY=PASSIVE. GOMP_SPINCOUNT
    is dropped too: in libgomp it overrides the wait policy (equirl sets it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["sps"]


def sb3_sps(script: Path, env_id: str, steps: int, threads: int, n_envs: int, passive: bool = False) -> float:
    args = [str(script), "--env", env_id, "--n-envs", str(n_envs), "--steps", str(steps)]
    if threads:
        args += ["--threads", str(threads)]
    return script_sps(args, passive)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", nargs="+", default=["a3c", "matched-q", "entropy-pg", "soft-q"])
    parser.add_argument("--env", default="PongNoFrameskip-v4")
    parser.add_argument("--steps", type=int, default=8000, help="timed steps of the on-policy runs")
    parser.add_argument("--dqn-steps", type=int, default=4000, help="timed steps of soft-q and SB3 DQN")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads on both sides (0: default)")
    parser.add_argument("--sb3-script", type=Path, default=DEFAULT_SB3)
    parser.add_argument("--sb3-passive", action="store_true",
                        help="also run SB3 with OMP_WAIT_POLICY=PASSIVE (sb3-a2c+passive, sb3-dqn+passive)")
    parser.add_argument("--plain", action="store_true",
                        help="also run the plain PyTorch A2C loop (plain-a2c, plain-a2c+tuned)")
    parser.add_argument("--base", type=Path, metavar="CHECKOUT",
                        help="also run each equirl agent from this checkout's package, as AGENT@base "
                             "(e.g. a `git worktree add /tmp/base main` before a change)")
    args = parser.parse_args()
    if args.base is not None and not (args.base / "equirl" / "__init__.py").is_file():
        parser.exit(2, f"paired_speed: error: --base {args.base}: no equirl package there\n")
    if not args.sb3_script.exists():
        parser.exit(2, f"paired_speed: error: SB3 reference script not found: {args.sb3_script}\n")
    # (groups variants have no @base twin: a base checkout may predate env_groups)
    agents = [a for agent in args.agents
              for a in ([agent, agent + "@base"] if args.base and "+groups" not in agent else [agent])]
    off_policy = [a for a in agents if a.partition("+")[0].partition("@")[0] == "soft-q"]
    on_policy = [a for a in agents if a not in off_policy]
    a2c = ["sb3-a2c"] + (["sb3-a2c+passive"] if args.sb3_passive else [])
    plain = ["plain-a2c", "plain-a2c+tuned"] if args.plain else []
    dqn = ["sb3-dqn"] + (["sb3-dqn+passive"] if args.sb3_passive else [])
    names = (a2c + plain + on_policy if on_policy else []) + (dqn + off_policy if off_policy else [])
    runs: dict[str, list[float]] = {name: [] for name in names}
    # Ratios move with the host (an Intel Xeon and an AMD EPYC gave different ones): say which.
    print(f"host: {cpu_model()}, {os.cpu_count()} cores; python {platform.python_version()}", flush=True)
    for round_ in range(args.rounds):
        for name, values in runs.items():
            if name in a2c:
                sps = sb3_sps(args.sb3_script, args.env, args.steps, args.threads, 16, name.endswith("+passive"))
            elif name in plain:
                flags = ["--channels-last", "--passive"] if name.endswith("+tuned") else []
                sps = script_sps([str(PLAIN_SCRIPT), "--steps", str(args.steps), *flags])
            elif name in dqn:
                sps = sb3_sps(DQN_SCRIPT, args.env, args.dqn_steps, args.threads, 4, name.endswith("+passive"))
            else:
                agent, _, base = name.partition("@")
                sps = equirl_sps(agent, args.env, args.dqn_steps if name in off_policy else args.steps, args.threads,
                                 tree=args.base if base else None)
            values.append(sps)
            print(f"round {round_ + 1}: {name:<12} {sps:8.1f} steps/s", flush=True)
    # Two ratios: of the medians, and the median of each round's ratio to the SB3 run made minutes
    # before it in the same round, which the host's drift over the invocation moves less.
    passive_column = " ratio to SB3 with PASSIVE |" if args.sb3_passive else ""
    print(f"\n| system | median steps/s ({args.rounds} runs) | runs | ratio to its SB3 peer | "
          f"per-round ratios (median) |{passive_column}")
    print("|---|---|---|---|---|" + ("---|" if args.sb3_passive else ""))
    for name, values in runs.items():
        peer = "sb3-dqn" if name in off_policy or name in dqn else "sb3-a2c"
        median = statistics.median(values)
        per_round = [v / p for v, p in zip(values, runs[peer])]
        row = f"| {name} | {median:.1f} | {', '.join(f'{v:.0f}' for v in values)} | " \
              f"{median / statistics.median(runs[peer]):.2f}x | " \
              f"{', '.join(f'{r:.2f}' for r in per_round)} ({statistics.median(per_round):.2f}x) |"
        if args.sb3_passive:
            row += f" {median / statistics.median(runs[peer + '+passive']):.2f}x |"
        print(row)
    return 0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
