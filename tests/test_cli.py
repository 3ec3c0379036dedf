"""The train command: a real run, and clear errors with exit code 2 and nothing written."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "equirl", *args], cwd=cwd, check=False, capture_output=True, text=True,
                          timeout=300)


def test_train_writes_a_complete_run(tmp_path):
    proc = run_cli("train", "a3c", "CartPole-v1", "--steps", "4096", "--no-progress", "--set", "tau=0.02",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "runs" / "a3c-CartPole-v1-s0"
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "model.safetensors", "checkpoint.safetensors", "checkpoint.json", "metrics.jsonl",
            "tb"} <= names
    config = json.loads((run / "config.json").read_text())
    assert config["hyperparameters"]["tau"] == 0.02
    assert config["training"]["command"].startswith("equirl train a3c CartPole-v1")
    assert config["env"]["env_id"] == "CartPole-v1"
    # A second run with the same arguments goes into a new directory instead of mixing runs.
    again = run_cli("train", "a3c", "CartPole-v1", "--steps", "256", "--no-progress", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "runs" / "a3c-CartPole-v1-s0_2" / "config.json").exists()


@pytest.mark.parametrize("args, message", [
    (["train", "a4c", "CartPole-v1"], "unknown agent 'a4c'; did you mean 'a3c'?"),
    (["train", "a3c", "CartPol-v1"], "did you mean 'CartPole-v1'"),
    (["train", "a3c", "Pendulum-v1"], "need a Discrete action space"),
    (["train", "a3c", "CartPole-v1", "--set", "lr=fast"], "--set lr='fast': expected a float"),
    (["train", "a3c", "CartPole-v1", "--set", "learning_rate=0.1"], "a3c has no such hyperparameter"),
    (["train", "a3c", "CartPole-v1", "--set", "tau=-1"], "tau=-1.0"),
    (["train", "a3c", "CartPole-v1", "--set", "lr"], "--set expects key=value"),
    (["train", "a3c", "CartPole-v1", "--steps", "0"], "--steps must be positive"),
    (["train", "a3c", "CartPole-v1", "--device", "tpu"], "--device must be"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, args, message):
    proc = run_cli(*args, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_resume_continues_a_run(tmp_path):
    first = run_cli("train", "soft-q", "CartPole-v1", "--steps", "1200", "--out", "run", "--no-progress",
                    "--set", "learning_starts=400", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    conflict = run_cli("train", "soft-q", "CartPole-v1", "--steps", "2400", "--out", "run", "--resume",
                       "--set", "tau=0.5", "--no-progress", cwd=tmp_path)
    assert conflict.returncode == 2 and "--set cannot change them" in conflict.stderr
    second = run_cli("train", "soft-q", "CartPole-v1", "--steps", "2400", "--out", "run", "--resume",
                     "--no-progress", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    state = json.loads((tmp_path / "run" / "checkpoint.json").read_text())
    assert state["steps"] == 2400
    # CartPole's replay buffer is in the checkpoint: the updates go on as if never stopped.
    assert state["updates"] == (2400 - 400) // 4
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["hyperparameters"]["learning_starts"] == 400


@pytest.mark.parametrize("args, message", [
    (["--resume"], "--resume needs --out"),
    (["--resume", "--out", "nothing-here"], "holds no checkpoint"),
])
def test_resume_errors(tmp_path, args, message):
    proc = run_cli("train", "a3c", "CartPole-v1", "--no-progress", *args, cwd=tmp_path)
    assert proc.returncode == 2 and message in proc.stderr
    assert list(tmp_path.iterdir()) == []
