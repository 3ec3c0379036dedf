"""Data-parallel training under torchrun (2 CPU processes, gloo).

What is asserted, and against what:
* both ranks hold bit-identical parameters after every update (each rank hashes its own
  parameters and the run raises if the hashes differ; the test counts one record per update);
* in float64 the 2-process run is the single-process run with the same total env count: same
  episodes (score and length, step by step) and parameters equal to rounding (the all-reduce
  sums per-rank partial means, so the last bits may differ);
* a single process resumes a distributed checkpoint, and a distributed run resumes it back.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from safetensors.torch import load_file

from equirl.hub import format as fmt


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args, nproc=2, timeout=600):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "equirl", "train", *args, "--no-progress"]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=_env())


def single(*args, timeout=600):
    cmd = [sys.executable, "-m", "equirl", "train", *args, "--no-progress"]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=_env())


def records(run, kind):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def episodes_by_step(run):
    """Finished episodes per step; within a step, in no particular order (ranks log rank by rank)."""
    out: dict[int, list] = {}
    for r in records(run, "episode"):
        out.setdefault(r["step"], []).append((r["return"], r["length"]))
    return {step: sorted(eps) for step, eps in out.items()}


def max_param_diff(a, b):
    wa, wb = load_file(str(a / fmt.WEIGHTS_FILE)), load_file(str(b / fmt.WEIGHTS_FILE))
    assert wa.keys() == wb.keys()
    return max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)


def assert_synced_every_update(run, updates):
    sync = records(run, "sync")
    assert [r["updates"] for r in sync] == list(range(1, updates + 1))
    assert all(r["processes"] == 2 for r in sync)
    assert len({r["fingerprint"] for r in sync}) == updates, "parameters did not change between updates"


def check_matches_single_process(tmp_path, agent, env_id, steps, updates, sets):
    multi, one = tmp_path / "two", tmp_path / "one"
    args = [agent, env_id, "--steps", str(steps), "--set", "float64=true", *(arg for s in sets for arg in ("--set", s))]
    done = torchrun(*args, "--out", str(multi), "--check-sync-every", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_synced_every_update(multi, updates)
    done = single(*args, "--out", str(one))
    assert done.returncode == 0, done.stderr[-3000:]
    eps = episodes_by_step(one)
    assert episodes_by_step(multi) == eps
    assert max_param_diff(one, multi) <= 1e-12
    config = fmt.read_json(multi / fmt.CONFIG_FILE)
    assert config["training"]["processes"] == 2
    assert config["training"]["command"].startswith("torchrun --nproc-per-node 2 -m equirl train")
    return eps


def test_two_processes_are_one_process_with_all_envs_on_cartpole(tmp_path):
    # 16 envs (8 per rank) x 8 steps: 160 updates.
    eps = check_matches_single_process(tmp_path, "a3c", "CartPole-v1", 20_480, 160, [])
    assert sum(len(v) for v in eps.values()) > 100  # many episodes, so the comparison means something


def test_two_processes_are_one_process_with_all_envs_on_pong(tmp_path):
    # 4 envs (2 per rank) x 5 steps: 200 updates of the Nature CNN.
    check_matches_single_process(tmp_path, "matched-q", "PongNoFrameskip-v4", 4_000, 200, ["num_envs=4"])


def test_float32_ranks_stay_identical_and_single_process_resumes(tmp_path):
    run = tmp_path / "run"
    done = torchrun("entropy-pg", "CartPole-v1", "--steps", "10240", "--out", str(run), "--check-sync-every", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_synced_every_update(run, 80)
    before = load_file(str(run / fmt.WEIGHTS_FILE))
    # One process continues the distributed run: same total envs, same step count.
    done = single("entropy-pg", "CartPole-v1", "--steps", "20480", "--out", str(run), "--resume")
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((run / fmt.CHECKPOINT_STATE).read_text())
    assert (state["steps"], state["updates"]) == (20_480, 160)
    # ... and two processes continue that one.
    done = torchrun("entropy-pg", "CartPole-v1", "--steps", "30720", "--out", str(run), "--resume",
                    "--check-sync-every", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((run / fmt.CHECKPOINT_STATE).read_text())
    assert (state["steps"], state["updates"]) == (30_720, 240)
    sync = records(run, "sync")
    assert [r["updates"] for r in sync] == list(range(1, 81)) + list(range(161, 241))
    after = load_file(str(run / fmt.WEIGHTS_FILE))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    steps = [r["step"] for r in records(run, "update")]
    assert steps == sorted(set(steps))


def test_soft_q_ranks_keep_their_own_replay_and_identical_parameters(tmp_path):
    run = tmp_path / "run"
    # 4 envs, 2 per rank; learning starts at 1,000 steps, one update per 4 steps: 250 updates.
    done = torchrun("soft-q", "CartPole-v1", "--steps", "2000", "--out", str(run), "--check-sync-every", "1")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_synced_every_update(run, 250)


def test_envs_that_do_not_split_are_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    done = torchrun("a3c", "CartPole-v1", "--steps", "1000", "--out", str(run), "--set", "num_envs=15")
    assert done.returncode != 0
    assert "num_envs=15 does not split evenly over 2 processes" in done.stderr
    assert not run.exists()
