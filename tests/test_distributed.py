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


# Each rank sets the same logical gradients times (rank + 1), each in a layout of its own, and
# checks the all-reduced result against the mean of the two ranks' values, index by index.
_AVERAGE_SCRIPT = '''
import os
import torch
from equirl.zoo.distributed import Ranks
ranks = Ranks.from_environment()
ranks.start(torch.device("cpu"))
cl = torch.channels_last
gen = torch.Generator().manual_seed(0)
shapes = [(8, 4, 3, 3), (8, 4, 3, 3), (6, 5), (6,)]
params = [torch.zeros(shapes[0]).contiguous(memory_format=cl), torch.zeros(shapes[1]).contiguous(memory_format=cl),
          torch.zeros(shapes[2]), torch.zeros(shapes[3])]
logical = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
scale = ranks.rank + 1
grads = [(g * scale).float() for g in logical]
# rank 0: each gradient in its parameter's layout; rank 1: the conv gradients in the other
# layout (contiguous against the channels-last weight) and the matrix's gradient transposed
if ranks.rank == 0:
    grads[0] = grads[0].contiguous(memory_format=cl)
    grads[1] = grads[1].contiguous(memory_format=cl)
else:
    grads[2] = grads[2].t().contiguous().t()
for p, g in zip(params, grads):
    p.grad = g
strides = [g.stride() for g in grads]
ranks.average_gradients(params)
for i, (p, g) in enumerate(zip(params, logical)):
    assert p.grad.stride() == strides[i], (i, p.grad.stride(), strides[i])
    # the float32 sum of the two ranks' gradients (exact in either order), halved (exact)
    mean = (sum((g * (r + 1)).float() for r in range(ranks.world)) / ranks.world).double()
    assert torch.equal(p.grad.double(), mean), (ranks.rank, i, float((p.grad.double() - mean).abs().max()))
os.write(1, f"rank {ranks.rank} ok\\n".encode())  # one write: the ranks share stdout
ranks.stop()
'''


def test_averaged_gradients_are_the_elementwise_mean_whatever_each_rank_s_layout(tmp_path):
    script = tmp_path / "average.py"
    script.write_text(_AVERAGE_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rank 0 ok" in done.stdout and "rank 1 ok" in done.stdout
