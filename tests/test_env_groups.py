"""Envs stepped in groups (acting for one group while the others emulate) give the segments and
updates that lockstep stepping gives: same games, same actions, same gradients."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from equirl.hub.format import WEIGHTS_FILE, read_tensors
from equirl.zoo import presets
from equirl.zoo.envs import EnvError, make_vector_env, spec_from_id
from equirl.zoo.rollout import OnPolicyCollector
from equirl.zoo.train import TrainError, build_agent, train


def _short_pong():
    """Pong cut at 100 frames (25 agent steps): episodes end, and are truncated, within a test."""
    spec = spec_from_id("PongNoFrameskip-v4")
    spec.ale["max_num_frames_per_episode"] = 100
    return spec


def test_grouped_env_plays_the_games_one_env_plays():
    spec = _short_pong()
    one, two = make_vector_env(spec, 4), make_vector_env(spec, 4, groups=2)
    assert (one.groups, two.groups, two.group_size) == (1, 2, 2)
    np.testing.assert_array_equal(one.reset(seed=7), two.reset(seed=7))
    rng = np.random.default_rng(0)
    ended = 0
    for _ in range(60):
        actions = rng.integers(one.num_actions, size=4)
        a, b = one.step(actions), two.step(actions)
        for field in ("obs", "rewards", "terminated", "truncated"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
        assert (a.final_obs is None) == (b.final_obs is None)
        if a.final_obs is not None:
            done = a.terminated | a.truncated
            np.testing.assert_array_equal(a.final_obs[done], b.final_obs[done])
            ended += int(done.sum())
    assert ended >= 8, "no episode ended: the final observations were not compared"
    one.close(), two.close()


def test_grouped_env_rejects_what_it_cannot_do():
    with pytest.raises(EnvError, match="do not split into 3 equal groups"):
        make_vector_env("PongNoFrameskip-v4", 4, groups=3)
    with pytest.raises(EnvError, match="only Atari envs step in groups"):
        make_vector_env("CartPole-v1", 4, groups=2)


def test_pipelined_segments_and_updates_equal_lockstep(replay_uses):
    """float64 a3c, 4 envs in 2 groups vs 1, eight segments with an update after each: the
    rollouts are equal in every field, each update learns from acting's recorded pass (the
    replay is taken, not the fallback), and the weights stay equal to float64 rounding."""
    spec = _short_pong()
    cfg = presets.make_config("a3c", "atari", num_envs=4, n_steps=5, float64=True)
    runs = []
    for groups in (1, 2):
        env = make_vector_env(spec, 4, groups)
        agent = build_agent("a3c", cfg, spec, env.obs_info, env.num_actions, torch.device("cpu"), 3)
        initial = {k: v.clone() for k, v in agent.network.state_dict().items()}
        collector = OnPolicyCollector(env, 5, seed=11)
        rollouts = []
        for _ in range(8):
            rollout, episodes = collector.collect(agent)
            agent.learn(rollout)
            rollouts.append((rollout, episodes))
        runs.append((agent, rollouts))
        env.close()
    assert replay_uses == [True] * 16
    (agent1, rollouts1), (agent2, rollouts2) = runs
    truncated = 0
    for (r1, e1), (r2, e2) in zip(rollouts1, rollouts2):
        for field in ("obs", "actions", "rewards", "terminated", "truncated", "next_obs", "final_obs", "final_index"):
            assert torch.equal(getattr(r1, field), getattr(r2, field)), field
        assert e1 == e2
        truncated += len(r1.final_index)
        assert len(r2.acting) == 2 * len(r1.acting) == 10
    assert truncated >= 4, "no truncated episode: final_index was not compared"
    for name, p1 in agent1.network.state_dict().items():
        p2 = agent2.network.state_dict()[name]
        assert not torch.equal(p1, initial[name]), f"{name} did not move: nothing was compared"
        torch.testing.assert_close(p2, p1, rtol=1e-12, atol=1e-12 * float(p1.abs().max()))


def test_train_records_the_groups_and_learns_the_same(tmp_path):
    values = {"num_envs": 4, "float64": True}
    train("a3c", "PongNoFrameskip-v4", 60, seed=1, out=tmp_path / "gNone", config_values=values, checkpoint_every=0)
    with pytest.warns(RuntimeWarning, match="env_groups=2 on CPU"):  # slower there: meant for GPUs
        train("a3c", "PongNoFrameskip-v4", 60, seed=1, out=tmp_path / "g2", config_values=values, env_groups=2,
              checkpoint_every=0)
    default, grouped = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("gNone", "g2"))
    assert default["training"]["env_groups"] == 1  # CPU: lockstep unless asked
    assert grouped["training"]["env_groups"] == 2
    w1, w2 = (read_tensors(tmp_path / d / WEIGHTS_FILE) for d in ("gNone", "g2"))
    assert w1.keys() == w2.keys()
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-12, atol=1e-12 * float(w1[name].abs().max()))


@pytest.mark.parametrize("agent, env_id, groups", [
    ("soft-q", "PongNoFrameskip-v4", 2),  # replay agents act every step for all envs
    ("a3c", "CartPole-v1", 2),  # Gymnasium's vector env has no send/recv here
    ("a3c", "PongNoFrameskip-v4", 3),  # 16 envs
    ("a3c", "PongNoFrameskip-v4", 0),
])
def test_train_rejects_groups_it_cannot_use_and_writes_nothing(tmp_path, agent, env_id, groups):
    with pytest.raises(TrainError, match=f"env_groups={groups}"):
        train(agent, env_id, 100, out=tmp_path / "run", env_groups=groups)
    assert not (tmp_path / "run").exists()


def test_cli_env_groups_error_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "equirl", "train", "a3c", "CartPole-v1", "--env-groups", "2",
                           "--out", "run", "--no-progress"], check=False, cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "env_groups=2" in proc.stderr
    assert list(tmp_path.iterdir()) == []
