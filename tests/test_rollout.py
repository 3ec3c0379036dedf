"""The on-policy collector on Atari: what it stores and hands out is what the env emitted."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from equirl.zoo import presets
from equirl.zoo.envs import make_vector_env, spec_from_id
from equirl.zoo.rollout import OnPolicyCollector
from equirl.zoo.train import build_agent


@pytest.mark.parametrize("groups", [1, 2])
def test_pong_rollout_holds_the_frames_the_env_emitted_and_the_agent_saw(groups):
    spec = spec_from_id("PongNoFrameskip-v4")
    cfg = presets.make_config("a3c", presets.family_of(spec.kind), num_envs=4, n_steps=6)
    env = make_vector_env(spec, 4, groups)
    agent = build_agent("a3c", cfg, spec, env.obs_info, env.num_actions, torch.device("cpu"), 0)
    collector = OnPolicyCollector(env, 6, seed=0)
    emitted, acted_on = [[collector.obs[env.group_rows(g)].copy()] for g in range(groups)], []
    recv, act = env.recv, agent.act_recorded  # what the collector steps and acts through

    def recording_recv(group):
        out = recv(group)
        emitted[group].append(out.obs.copy())  # copies: the env may reuse its buffers
        return out

    def recording_act(obs, *args):
        acted_on.append(np.array(obs))
        return act(obs, *args)

    env.recv, agent.act_recorded = recording_recv, recording_act
    batch, _ = collector.collect(agent)
    frames = [np.concatenate([emitted[g][t] for g in range(groups)]) for t in range(7)]
    assert batch.obs.shape == (6, 4, 4, 84, 84) and batch.obs.dtype == torch.uint8
    assert len(acted_on) == 6 * groups
    for t in range(6):
        np.testing.assert_array_equal(batch.obs[t].numpy(), frames[t])
        np.testing.assert_array_equal(np.concatenate(acted_on[t * groups:(t + 1) * groups]), frames[t])
    np.testing.assert_array_equal(batch.next_obs.numpy(), frames[6])
    assert frames[3].any(), "the frames compared are blank"
