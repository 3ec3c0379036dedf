"""The on-policy collector on Atari: what it stores and hands out is what the env emitted."""
from __future__ import annotations

import numpy as np
import torch

from equirl.zoo import presets
from equirl.zoo.envs import make_vector_env, spec_from_id
from equirl.zoo.rollout import OnPolicyCollector
from equirl.zoo.train import build_agent


def test_pong_rollout_holds_the_frames_the_env_emitted_and_the_agent_saw():
    spec = spec_from_id("PongNoFrameskip-v4")
    cfg = presets.make_config("a3c", presets.family_of(spec.kind), num_envs=3, n_steps=6)
    env = make_vector_env(spec, 3)
    agent = build_agent("a3c", cfg, spec, env.obs_info, env.num_actions, torch.device("cpu"), 0)
    collector = OnPolicyCollector(env, 6, seed=0)
    emitted, acted_on = [collector.obs.copy()], []  # copies: the env may reuse its buffers
    step, act = env.step, agent.act_recorded  # what the collector acts through

    def recording_step(actions):
        out = step(actions)
        emitted.append(out.obs.copy())
        return out

    def recording_act(obs, t, steps):
        acted_on.append(np.array(obs))
        return act(obs, t, steps)

    env.step, agent.act_recorded = recording_step, recording_act
    batch, _ = collector.collect(agent)
    assert batch.obs.shape == (6, 3, 4, 84, 84) and batch.obs.dtype == torch.uint8
    for t in range(6):
        np.testing.assert_array_equal(batch.obs[t].numpy(), emitted[t])
        np.testing.assert_array_equal(acted_on[t], emitted[t])
    np.testing.assert_array_equal(batch.next_obs.numpy(), emitted[6])
    assert emitted[3].any(), "the frames compared are blank"
