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

    @property
    def name(self) -> str:
        return fmt.repo_name(self.agent, self.env_id)


# CartPole budgets: the classic-control presets reach 500 within them (tests/test_learning.py).
RECIPES = [
    Recipe("a3c", "CartPole-v1", 300_000),
    Recipe("matched-q", "CartPole-v1", 300_000),
    Recipe("entropy-pg", "CartPole-v1", 300_000),
    Recipe("soft-q", "CartPole-v1", 150_000),
]


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


def train_all(out: Path = PRETRAINED_DIR, only: list[str] | None = None, log=print) -> list[Path]:
    """Train, evaluate (30 episodes) and record every recipe, writing complete repo folders."""
    import torch

    from ..evaluation.publishing import ensure_results, ensure_video
    from ..hub.publish import push
    from .train import train

    # One intra-op thread, as in tests/test_learning.py: with a fixed seed the result then does not
    # depend on the core count (reductions split across threads round differently).
    torch.set_num_threads(1)
    made = []
    for recipe in RECIPES:
        if only and recipe.name not in only and short_name(recipe.agent, recipe.env_id) not in only:
            continue
        log(f"training {recipe.name} for {recipe.steps} steps")
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            command = f"equirl zoo train-all --only {recipe.name}"
            result = train(recipe.agent, recipe.env_id, recipe.steps, seed=recipe.seed, out=run, device="cpu",
                           config_values=recipe.overrides, command=command)
            ensure_results(result.agent, run, episodes=30)
            ensure_video(result.agent, run, max_steps=2_000)
            target = Path(out) / recipe.name
            if target.exists():
                shutil.rmtree(target)
            push(run, str(target), repo_id_for_card=f"equirl/{recipe.name}")
            made.append(target)
        log(f"  -> {target}")
    return made
