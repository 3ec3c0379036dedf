"""Training survives crashes: SIGKILL at random moments, SIGTERM, a full disk, an unwritable dir."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

import equirl
from equirl.hub import format as fmt
from equirl.zoo.train import train

TRAIN = [sys.executable, "-m", "equirl", "train", "a3c", "CartPole-v1", "--steps", "150000",
         "--checkpoint-every", "4096", "--no-progress", "--out"]


def checkpoint_steps(run) -> int:
    return json.loads((run / "checkpoint.json").read_text())["steps"]


def test_sigkill_at_random_moments_never_breaks_the_run(tmp_path):
    run = tmp_path / "run"
    rng = random.Random(1234)
    seen = []
    for kill in range(10):
        args = TRAIN + [str(run)] + (["--resume"] if (run / "checkpoint.safetensors").exists() else [])
        before = checkpoint_steps(run) if (run / "checkpoint.json").exists() else -1
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Start-up (imports) takes a varying time on a loaded machine: wait until this process has
        # written something, then kill it at a random moment of its training.
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline and not (
                (run / "checkpoint.json").exists() and checkpoint_steps(run) > before):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # After every kill: the run dir loads, and the checkpoint never goes backwards.
        if (run / "config.json").exists():
            agent = equirl.load(run)
            assert agent.act([[0.0, 0.0, 0.0, 0.0]]).shape == (1,)
            seen.append(checkpoint_steps(run))
    assert len(seen) == 10
    assert seen == sorted(seen)
    assert seen[-1] > seen[0], "no progress across kills"
    # Finish: the resumed run completes, and every update was logged exactly once.
    done = subprocess.run(TRAIN + [str(run), "--resume"], check=False, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert checkpoint_steps(run) >= 150_000
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"update"' in line]
    assert steps == sorted(set(steps)), "a step was counted twice in the metrics"


def test_sigterm_writes_a_checkpoint_and_says_how_to_resume(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(TRAIN + [str(run)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / "checkpoint.json").exists() or checkpoint_steps(run) < 4096:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert "stopped by SIGTERM" in err and "--resume" in err
    state = json.loads((run / "checkpoint.json").read_text())
    assert state["steps"] % 128 == 0  # a whole number of updates: the checkpoint sits between two
    assert equirl.load(run) is not None
    # The model card of the stopped run says how far it got, and the wall time keeps counting
    # across the resume (it rides in the checkpoint).
    training = json.loads((run / "config.json").read_text())["training"]
    assert training["steps_done"] == state["steps"] and 0 < training["wall_seconds"] < 120
    assert state["wall_seconds"] == training["wall_seconds"]
    subprocess.run([*TRAIN[:7], str(state["steps"] + 20480), *TRAIN[8:], str(run), "--resume"], check=True,
                   capture_output=True, timeout=120)
    resumed = json.loads((run / "config.json").read_text())["training"]
    assert resumed["steps_done"] == state["steps"] + 20480
    assert training["wall_seconds"] < resumed["wall_seconds"] < training["wall_seconds"] + 60


def test_a_crashed_run_describes_the_checkpoint_it_holds(tmp_path, monkeypatch):
    """A run that dies between checkpoints (an exception here; kill -9 and power loss the same)
    leaves a config.json whose steps and wall time are those of the weights on disk: the card of
    a run pushed or bundled as it stands must not describe an earlier part of it."""
    from equirl.agents.a3c import A3C

    learn, calls = A3C.learn, []

    def crash_after_100(self, batch):
        calls.append(1)
        if len(calls) > 100:
            raise RuntimeError("simulated crash")
        return learn(self, batch)

    monkeypatch.setattr(A3C, "learn", crash_after_100)
    run = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        train("a3c", "CartPole-v1", 100_000, seed=0, out=run, checkpoint_every=4096)
    state = json.loads((run / "checkpoint.json").read_text())
    training = json.loads((run / "config.json").read_text())["training"]
    assert state["steps"] == 12_288  # 100 updates of 128 steps; checkpoints every 4,096
    assert training["steps_done"] == state["steps"] and training["wall_seconds"] == state["wall_seconds"] > 0
    assert training["hardware"]


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    real_write = fmt.write_tensors
    calls = {"n": 0}

    def failing_write(path, tensors, metadata=None):
        calls["n"] += 1
        if calls["n"] > 6:  # three checkpoints succeed (2 files each), then the disk is full
            raise OSError(28, "No space left on device")
        real_write(path, tensors, metadata)

    monkeypatch.setattr(fmt, "write_tensors", failing_write)
    with pytest.raises(OSError, match="No space left"):
        train("a3c", "CartPole-v1", 20_000, seed=0, out=run, checkpoint_every=1024)
    assert checkpoint_steps(run) == 2048  # checkpoints at 0, 1024 and 2048 steps
    assert not [p for p in os.listdir(run) if p.endswith(".tmp")], "a temporary file was left behind"
    agent = equirl.load(run)
    fmt.load_checkpoint(run, agent)


def test_unwritable_output_is_a_clear_error_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    proc = subprocess.run([sys.executable, "-m", "equirl", "train", "a3c", "CartPole-v1", "--out",
                           str(blocker / "run"), "--no-progress"], check=False, capture_output=True, text=True,
                           timeout=120)
    assert proc.returncode == 2
    assert "cannot write the run directory" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("agent,steps,every", [("a3c", 40_960, 2_048), ("soft-q", 6_000, 500)])
def test_a_killed_and_resumed_run_is_the_uninterrupted_run(tmp_path, agent, steps, every):
    """On Gymnasium envs the checkpoint holds the env states, observations, running episodes and
    (soft-q) the replay buffer and its sampling stream: resuming after SIGKILL gives bit-identical
    parameters and the same episodes as never stopping."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "equirl", "train", agent, "CartPole-v1", "--steps", str(steps),
            "--checkpoint-every", str(every), "--no-progress", "--out"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(args + [str(whole)], check=True, capture_output=True, env=env, timeout=600)
    proc = subprocess.Popen(args + [str(cut)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while not ((cut / "checkpoint.json").exists() and checkpoint_steps(cut) >= steps // 2):
        assert time.time() < deadline and proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at = checkpoint_steps(cut)
    assert killed_at < steps
    assert json.loads((cut / "checkpoint.json").read_text())["updates"] > 0
    subprocess.run(args + [str(cut), "--resume"], check=True, capture_output=True, env=env, timeout=600)
    a = load_file(str(whole / fmt.WEIGHTS_FILE))
    b = load_file(str(cut / fmt.WEIGHTS_FILE))
    assert all(torch.equal(a[k], b[k]) for k in a), f"resumed from step {killed_at}, parameters differ"

    def episodes(run):
        return [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"episode"' in line]

    assert episodes(cut) == episodes(whole) and len(episodes(whole)) > 20


def test_a_replay_buffer_too_big_to_save_is_refilled_on_resume(tmp_path, monkeypatch):
    import equirl.zoo.train as train_module

    monkeypatch.setattr(train_module, "REPLAY_SAVE_LIMIT", 0)  # as an Atari-sized buffer
    run = tmp_path / "run"
    train("soft-q", "CartPole-v1", 1200, seed=0, out=run, config_values={"learning_starts": 400})
    assert "env_state" not in json.loads((run / "checkpoint.json").read_text())
    train("soft-q", "CartPole-v1", 2400, seed=0, out=run, resume=True)
    state = json.loads((run / "checkpoint.json").read_text())
    # 200 updates before the stop; after it the buffer refills for learning_starts steps first.
    assert (state["steps"], state["updates"]) == (2400, 200 + (2400 - (1200 + 400)) // 4)


def test_a_checkpoint_without_wall_time_says_from_which_step_time_was_counted(tmp_path):
    """Checkpoints written before wall time rode in them: the card must not pass a partial wall
    time off as the whole run's."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from equirl.hub.card import render_card

    run = tmp_path / "run"
    train("a3c", "CartPole-v1", 4096, seed=0, out=run)
    path = run / "checkpoint.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    state = json.loads(meta["state"])
    del state["wall_seconds"]
    save_file(load_file(str(path)), str(path), metadata={**meta, "state": json.dumps(state)})
    config = json.loads((run / "config.json").read_text())
    del config["training"]["wall_seconds"]
    (run / "config.json").write_text(json.dumps(config))
    train("a3c", "CartPole-v1", 8192, seed=0, out=run, resume=True)
    training = json.loads((run / "config.json").read_text())["training"]
    assert training["steps_done"] == 8192 and training["wall_seconds_from_step"] == 4096
    assert "steps 4,096 on; the earlier ones were not timed" in render_card(json.loads((run / "config.json").read_text()), None, "x/y")
