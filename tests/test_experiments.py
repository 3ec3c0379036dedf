"""`equirl experiment`: runs every variant, resumes, skips finished runs, writes curves and a table."""
from __future__ import annotations

import json

import pytest

from equirl.zoo import experiments


def test_experiment_runs_resumes_and_reports(tmp_path):
    logged = []
    report = experiments.run_experiment("a3c-vs-matched-q", ["CartPole-v1"], 2048, [0], tmp_path,
                                        progress=False, log=logged.append)
    base = tmp_path / "a3c-vs-matched-q"
    assert (base / "curves_CartPole-v1.png").stat().st_size > 1000
    text = report.read_text()
    for label in ("a3c", "matched-q", "matched-q-unscaled"):
        assert f"| CartPole-v1 | {label} | 1 |" in text
    # Finished runs are skipped; a bigger budget resumes them from their checkpoints.
    logged.clear()
    experiments.run_experiment("a3c-vs-matched-q", ["CartPole-v1"], 2048, [0], tmp_path, progress=False,
                               log=logged.append)
    assert all(line.startswith("[skip]") for line in logged) and len(logged) == 3
    logged.clear()
    experiments.run_experiment("a3c-vs-matched-q", ["CartPole-v1"], 4096, [0], tmp_path, only=["a3c"],
                               progress=False, log=logged.append)
    assert logged[0].startswith("[resume] a3c")
    state = json.loads((base / "CartPole-v1" / "a3c" / "seed0" / "checkpoint.json").read_text())
    assert state["steps"] >= 4096


def test_every_experiment_variant_is_a_valid_config():
    from equirl.zoo.presets import make_config

    for experiment in experiments.EXPERIMENTS.values():
        for variant in experiment.variants:
            for family in ("atari", "classic"):
                make_config(variant.agent, family, **variant.overrides)


def test_unknown_experiment_or_variant():
    with pytest.raises(ValueError, match="unknown experiment"):
        experiments.run_experiment("6.9", ["CartPole-v1"], 10, [0], "unused")
    with pytest.raises(ValueError, match="unknown variant"):
        experiments.run_experiment("estimators", ["CartPole-v1"], 10, [0], "unused", only=["nope"])


def test_game_names_map_to_the_papers_env_ids():
    assert experiments.env_id_for("Pong") == "PongNoFrameskip-v4"
    assert experiments.env_id_for("ALE/Pong-v5") == "ALE/Pong-v5"
    assert experiments.frames_per_step("PongNoFrameskip-v4") == 4
    assert experiments.frames_per_step("CartPole-v1") == 1
