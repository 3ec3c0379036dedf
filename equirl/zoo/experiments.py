"""The paper's §6 experiments on any games, budget and seeds.

``equirl experiment NAME --games Pong Breakout --frames 10000000 --seeds 0 1 2`` trains every
variant of NAME on every game and seed (each a normal run directory, resumed from its checkpoint
if interrupted, skipped if finished), then writes learning-curve PNGs (mean over seeds with a
min-max band, x axis in frames) and a markdown table of final scores.
"""
from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..hub import format as fmt
from .envs import spec_from_id
from .train import train


@dataclass(frozen=True)
class Variant:
    label: str
    agent: str
    overrides: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    title: str
    variants: tuple[Variant, ...]


def _soft_dqn_variants() -> tuple[Variant, ...]:
    # §6.2: a one-line change to DQN (the backup); target network, replay and epsilon-greedy kept.
    base = {"exploration": "epsilon_greedy", "tau": 0.1}
    out = []
    for n in (1, 5):
        out += [Variant(f"soft-entropy-tau0.1-{n}step", "soft-q", dict(base, reference="none", n_steps=n)),
                Variant(f"soft-kl-tau0.1-{n}step", "soft-q", dict(base, reference="uniform", n_steps=n)),
                Variant(f"dqn-{n}step", "soft-q", dict(base, backup="hard", n_steps=n))]
    return tuple(out)


EXPERIMENTS: dict[str, Experiment] = {
    "estimators": Experiment("§6.1 entropy-regularized PG: proper vs naive estimator", (
        Variant("proper", "entropy-pg", {"estimator": "proper"}),
        Variant("naive", "entropy-pg", {"estimator": "naive"}))),
    "soft-dqn": Experiment("§6.2 soft Q-learning (entropy bonus, KL penalty) vs standard DQN", _soft_dqn_variants()),
    "a3c-vs-matched-q": Experiment("§6.3 A3C vs A3C-matched soft Q-learning", (
        Variant("a3c", "a3c", {}),
        Variant("matched-q", "matched-q", {}),
        # No stream scaling: plain soft-Q, implicitly c = 1/tau (100); the paper reports it unstable.
        Variant("matched-q-unscaled", "matched-q", {"scale_streams": False}))),
}


def env_id_for(game: str) -> str:
    """``Pong`` -> ``PongNoFrameskip-v4`` (the paper's era: no sticky actions); full ids pass through."""
    return game if ("/" in game or "-v" in game) else f"{game}NoFrameskip-v4"


def frames_per_step(env_id: str) -> int:
    spec = spec_from_id(env_id)
    return int(spec.ale["frameskip"]) if spec.kind == "atari" else 1


def _finished_steps(run_dir: Path) -> int:
    state = run_dir / fmt.CHECKPOINT_STATE
    return int(fmt.read_json(state)["steps"]) if state.exists() else 0


def run_experiment(name: str, games: list[str], frames: int, seeds: list[int], out: Path, device: str = "auto",
                   only: list[str] | None = None, progress: bool = True, log=print) -> Path:
    """Train what is missing, then plot and tabulate everything present. Returns the report path."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of: {', '.join(EXPERIMENTS)}")
    experiment = EXPERIMENTS[name]
    variants = [v for v in experiment.variants if not only or v.label in only]
    if only and len(variants) != len(only):
        known = ", ".join(v.label for v in experiment.variants)
        raise ValueError(f"--only: unknown variant among {only}; {name} has: {known}")
    out = Path(out) / name
    for game in games:
        env_id = env_id_for(game)
        steps = max(1, frames // frames_per_step(env_id))
        for variant in variants:
            for seed in seeds:
                run_dir = out / env_id.replace("/", "-") / variant.label / f"seed{seed}"
                done = _finished_steps(run_dir)
                if done >= steps:
                    log(f"[skip] {run_dir}: finished ({done} steps)")
                    continue
                resume = done > 0
                if not resume and run_dir.exists():
                    shutil.rmtree(run_dir)  # started but never checkpointed: nothing to keep
                log(f"[{'resume' if resume else 'train'}] {variant.label} on {env_id}, seed {seed}: "
                    f"{steps} steps ({steps * frames_per_step(env_id)} frames)")
                train(variant.agent, env_id, steps, seed=seed, out=run_dir, device=device,
                      config_values=None if resume else variant.overrides, progress=progress,
                      checkpoint_every=max(steps // 20, 10_000), resume=resume,
                      command=f"equirl experiment {name} (variant {variant.label})")
    return write_report(name, out, games, variants)


def _episodes(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    steps, scores = [], []
    with open(run_dir / "metrics.jsonl", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record.get("kind") == "episode":
                steps.append(record["step"])
                scores.append(record["return"])
    return np.asarray(steps, dtype=np.float64), np.asarray(scores, dtype=np.float64)


def _curve(steps: np.ndarray, scores: np.ndarray, grid: np.ndarray, window: int = 20) -> np.ndarray:
    """Mean of the last ``window`` episodes finished by each grid point (NaN before the first)."""
    out = np.full(len(grid), np.nan)
    for i, x in enumerate(grid):
        seen = scores[steps <= x]
        if len(seen):
            out[i] = seen[-window:].mean()
    return out


def write_report(name: str, out: Path, games: list[str], variants: list[Variant]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    experiment = EXPERIMENTS[name]
    rows = []
    for game in games:
        env_id = env_id_for(game)
        scale = frames_per_step(env_id)
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for variant in variants:
            runs = sorted((out / env_id.replace("/", "-") / variant.label).glob("seed*"))
            data = [_episodes(r) for r in runs if (r / "metrics.jsonl").exists()]
            data = [(s, r) for s, r in data if len(s)]
            if not data:
                continue
            horizon = max(s[-1] for s, _ in data)
            grid = np.linspace(0, horizon, 100)
            curves = np.stack([_curve(s, r, grid) for s, r in data])
            with warnings.catch_warnings():  # grid points before any seed's first episode are NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                mean, low, high = np.nanmean(curves, 0), np.nanmin(curves, 0), np.nanmax(curves, 0)
            line, = ax.plot(grid * scale, mean, label=f"{variant.label} ({len(data)} seeds)")
            ax.fill_between(grid * scale, low, high, alpha=0.2, color=line.get_color())
            finals = [r[-20:].mean() for _, r in data]
            rows.append((env_id, variant.label, len(data), int(horizon * scale), float(np.mean(finals)),
                         float(np.std(finals))))
        ax.set_xlabel("frames")
        ax.set_ylabel("episode return (raw score, mean of last 20)")
        ax.set_title(f"{env_id}: {experiment.title}", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / f"curves_{env_id.replace('/', '-')}.png", dpi=120)
        plt.close(fig)
    report = out / "results.md"
    lines = [f"# {experiment.title}", "", "| env | variant | seeds | frames | final score (last 20 episodes) |",
             "|---|---|---|---|---|"]
    lines += [f"| {e} | {v} | {n} | {f:,} | {m:.2f} ± {s:.2f} |" for e, v, n, f, m, s in rows]
    out.mkdir(parents=True, exist_ok=True)
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report
