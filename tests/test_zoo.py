"""The bundled pretrained agents: load in one line with no network and reproduce their scores."""
from __future__ import annotations

import json

import pytest

import equirl
from equirl.evaluation.evaluate import verify
from equirl.zoo import bundled

ROWS = bundled.listing()


def test_every_recipe_is_bundled():
    assert sorted(r["hub_name"] for r in ROWS) == sorted(f"equirl/{recipe.name}" for recipe in bundled.RECIPES)


@pytest.mark.parametrize("row", ROWS, ids=[r["name"] for r in ROWS])
def test_bundled_agent_loads_offline_and_reproduces_its_score(row, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    agent = equirl.load(row["name"])  # e.g. "a3c-CartPole"
    same = equirl.load(row["hub_name"])  # e.g. "equirl/a3c-CartPole-v1"
    assert agent.source_dir == same.source_dir
    assert agent.agent_id == row["agent"]
    folder = agent.source_dir
    assert row["episodes"] == 30 and row["mean"] >= 475, row
    check = verify(folder / "results.json", agent)
    assert check.reproduced, check
    assert (folder / "replay.mp4").stat().st_size <= 1_000_000
    card = (folder / "README.md").read_text()
    assert "equirl zoo train-all --only" in card and "wall time" in card and "hardware" in card
    config = json.loads((folder / "config.json").read_text())
    assert config["training"]["steps_done"] >= next(r.steps for r in bundled.RECIPES if r.name == folder.name)
