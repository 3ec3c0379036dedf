"""Flush-to-zero in training: on in every torch thread under `equirl train`, recorded in
config.json, and not leaked into a Python session that calls train().

The reference is IEEE float32 itself: 1e-20 squared is 1e-40, a subnormal that is non-zero
unless the thread computing it flushes.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from equirl.zoo.numerics import flush_state
from equirl.zoo.train import train

TWO_THREADS = {**os.environ, "OMP_NUM_THREADS": "2"}

PROBE = """
import sys, torch
from equirl.zoo.numerics import flush_state, flush_subnormals
torch.set_num_threads(2)
if sys.argv[1] == "early":
    flush_subnormals()
torch.ones(1 << 20).mul(2)  # the first parallel operation starts torch's worker threads
if sys.argv[1] == "late":
    flush_subnormals()
x = torch.full((1 << 20,), 1e-20)
print(int((x * x != 0).sum()), flush_state())
"""


@pytest.mark.parametrize("when, nonzero, state", [
    ("never", "all", "off"),
    ("late", "some", "calling thread"),  # the worker threads kept their mode
    ("early", "none", "all threads"),
])
def test_flush_state_tells_where_subnormals_survive(when, nonzero, state):
    out = subprocess.run([sys.executable, "-c", PROBE, when], check=False, capture_output=True, text=True, timeout=120,
                         env=TWO_THREADS)
    assert out.returncode == 0, out.stderr
    count, reported = out.stdout.split(maxsplit=1)
    count = int(count)
    assert {"all": count == 1 << 20, "some": 0 < count < 1 << 20, "none": count == 0}[nonzero], count
    assert reported.strip() == state


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "equirl", *args, "--no-progress"], cwd=cwd, check=False,
                          capture_output=True, text=True, timeout=300, env=TWO_THREADS)


def test_train_command_flushes_in_every_thread_and_records_it(tmp_path):
    first = run_cli("train", "a3c", "CartPole-v1", "--steps", "256", "--out", "run", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    config_path = tmp_path / "run" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["training"]["flush_denormal"] == {"0": "all threads"}
    # A run from before the field existed never flushed: resuming it records where flushing began.
    del config["training"]["flush_denormal"]
    config_path.write_text(json.dumps(config))
    second = run_cli("train", "a3c", "CartPole-v1", "--steps", "512", "--out", "run", "--resume", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert json.loads(config_path.read_text())["training"]["flush_denormal"] == {"0": "off", "256": "all threads"}


def test_train_in_python_restores_the_callers_mode(tmp_path):
    before = flush_state()
    assert before == "off"  # pytest does not flush; a test that flushed and leaked would show here
    train("a3c", "CartPole-v1", 256, out=tmp_path / "run")
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["training"]["flush_denormal"]["0"]
    assert recorded != "off"  # at least the calling thread flushed while training
    assert flush_state() == before


TRAIN_IN_PYTHON = """
import json, sys, torch
from equirl.zoo.train import train
torch.set_num_threads(2)
torch.ones(1 << 20).mul(2)  # the worker threads exist, not flushing, before train() is called
train("a3c", "CartPole-v1", 128, out=sys.argv[1])
x = torch.full((1 << 20,), 1e-20)
print(json.loads(open(sys.argv[1] + "/config.json").read())["training"]["flush_denormal"]["0"], int((x * x != 0).sum()))
"""


def test_train_in_python_flushes_in_every_thread_and_leaves_none_flushing(tmp_path):
    """train() ends torch's worker threads before it flushes (so they start again flushing) and
    after it restores the caller's mode (so none keeps flushing for the caller)."""
    out = subprocess.run([sys.executable, "-c", TRAIN_IN_PYTHON, str(tmp_path / "run")], check=False,
                         capture_output=True, text=True, timeout=300, env=TWO_THREADS)
    assert out.returncode == 0, out.stderr
    recorded, nonzero = out.stdout.strip().splitlines()[-1].rsplit(maxsplit=1)
    assert recorded == "all threads"
    assert int(nonzero) == 1 << 20


def test_flushing_can_be_turned_off_and_a_bad_setting_is_refused(tmp_path):
    env = {**TWO_THREADS, "EQUIRL_FLUSH_DENORMAL": "0"}
    off = subprocess.run([sys.executable, "-m", "equirl", "train", "a3c", "CartPole-v1", "--steps", "128", "--out",
                          "run", "--no-progress"], cwd=tmp_path, check=False, capture_output=True, text=True,
                          timeout=300, env=env)
    assert off.returncode == 0, off.stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["training"]["flush_denormal"] == {"0": "off"}
    env["EQUIRL_FLUSH_DENORMAL"] = "yes"
    bad = subprocess.run([sys.executable, "-m", "equirl", "train", "a3c", "CartPole-v1", "--steps", "128", "--out",
                          "bad", "--no-progress"], cwd=tmp_path, check=False, capture_output=True, text=True,
                          timeout=300, env=env)
    assert bad.returncode == 2 and "EQUIRL_FLUSH_DENORMAL must be 0 or 1, got 'yes'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


WARN_PROBE = """
import sys, warnings
if sys.argv[1] == "torch-first":
    import torch
import equirl, torch
from equirl.zoo import cpu_threads
from equirl.zoo.train import train
if sys.argv[2] == "no-release":  # an OpenMP runtime without omp_pause_resource_all
    cpu_threads._pause_functions = lambda: ()
torch.set_num_threads(2)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    train("a3c", "CartPole-v1", 128)
print(sum("import equirl first" in str(w.message) for w in caught))
"""


@pytest.mark.parametrize("order, release, warned", [
    ("torch-first", "no-release", "1"),
    ("torch-first", "release", "0"),  # libgomp spins by default, and equirl ends its threads in time
    ("equirl-first", "no-release", "0"),
])
def test_training_warns_when_torch_was_imported_first(order, release, warned):
    # OpenMP reads its wait settings once, when torch loads it: equirl's are then too late, which
    # matters only where equirl cannot end the spinning threads before the emulator runs.
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    out = subprocess.run([sys.executable, "-c", WARN_PROBE, order, release], check=False, capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == warned
