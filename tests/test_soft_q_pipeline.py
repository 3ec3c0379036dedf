"""soft-q's pipelined step (ReplayCollector.step with next_batch/learn): the batch of the update
that follows a step is drawn before acting, goes through the network in acting's forward pass
(QNetwork.forward_recorded; the update replays the backward), and the update runs while the envs
emulate. Checked against the plain order (act, step, store, sample, learn, each forward fresh):
the same actions and the same weights, bit for bit in float32 and bf16 on CPU, and records never used for
another batch or with other weights."""
from __future__ import annotations

import pytest
import torch

from equirl.agents import AGENTS, ObsInfo
from equirl.agents.base import ReplaySample
from equirl.agents.networks import ActorCriticNetwork, QNetwork, default_trunk_spec, weight_versions
from equirl.zoo.presets import make_config
from equirl.zoo.rollout import ReplayCollector, training_rewards
from equirl.zoo.train import train

A, ROWS, BATCH = 6, 3, 8


def _agent(float64: bool = False, **values):
    config = make_config("soft-q", "atari", float64=float64, num_envs=ROWS, batch_size=BATCH, **values)
    spec = {"trunk": default_trunk_spec((4, 84, 84), "uint8")}
    return AGENTS["soft-q"](config, ObsInfo((4, 84, 84), "uint8"), A, spec, "cpu", 0)


def _pixels(gen, rows):
    return torch.randint(0, 256, (rows, 4, 84, 84), dtype=torch.uint8, generator=gen)


def _batch(gen) -> ReplaySample:
    """One-step windows of random pixels, one terminated and one truncated."""
    terminated = torch.zeros(1, BATCH, dtype=torch.bool)
    truncated = torch.zeros(1, BATCH, dtype=torch.bool)
    terminated[0, 1], truncated[0, 2] = True, True
    return ReplaySample(_pixels(gen, BATCH), torch.randint(0, A, (BATCH,), generator=gen),
                        torch.randn(1, BATCH, generator=gen).sign(), torch.rand(1, BATCH, generator=gen),
                        terminated, truncated, _pixels(gen, BATCH))


@pytest.mark.parametrize("precision", ["float32", "float64", "bf16"])
def test_an_update_learning_from_acting_s_pass_equals_the_plain_one(precision, trunk_calls):
    """Acting with the next batch's observations, then learning that batch, gives the actions,
    KLs, metrics and weights of acting alone then learning with a fresh forward: bit for bit in
    float32 and bf16 (oneDNN computes each row alike whatever the batch, from 2 rows on; the
    bf16 replay's backward is autocast's), to rounding in float64."""
    float64 = precision == "float64"
    values = {"bf16": True} if precision == "bf16" else {}
    merged, plain = _agent(float64, **values), _agent(float64, **values)
    plain.load_weights(merged.weights())
    calls = trunk_calls
    for update in range(4):
        gen = torch.Generator().manual_seed(update)
        obs, batch = _pixels(gen, ROWS), _batch(gen)
        calls.calls = 0
        actions, kl = merged.act_for_training(obs, batch)
        assert calls.calls == 1  # the target network's forward: the online one is recorded
        want_actions, want_kl = plain.act_for_training(obs)
        assert (actions == want_actions).all() and (kl == want_kl).all()
        calls.calls = 0
        got = merged.learn(batch)
        assert calls.calls == 0  # the targets came from acting, the online forward is replayed
        calls.calls = 0
        want = plain.learn(batch)
        assert calls.calls == 2
        for (name, p), q in zip(merged.network.named_parameters(), plain.network.parameters()):
            assert q.grad.abs().max() > 0, name  # every layer learns, conv1 included
            if float64:
                assert (p - q).abs().max().item() <= 1e-12, name
            else:
                assert torch.equal(p, q), name
        assert got == want if not float64 else got == pytest.approx(want, rel=1e-10, abs=1e-15)


def test_acting_s_pass_is_used_once_for_its_own_batch_and_weights(trunk_calls):
    agent = _agent()
    gen = torch.Generator().manual_seed(1)
    calls = trunk_calls
    # Another batch than the one acted with: its targets and forward run.
    agent.act_for_training(_pixels(gen, ROWS), _batch(gen))
    calls.calls = 0
    agent.learn(_batch(gen))
    assert calls.calls == 2
    # What acting computed is spent by one update: learning the same batch again runs both.
    batch = _batch(gen)
    agent.act_for_training(_pixels(gen, ROWS), batch)
    calls.calls = 0
    agent.learn(batch)
    agent.learn(batch)
    assert calls.calls == 0 + 2
    # Online weights changed in place after acting (load_state_dict bumps the version counters):
    # the online forward runs again; the target network's are unchanged, so its targets stand.
    agent.act_for_training(_pixels(gen, ROWS), batch)
    agent.load_weights(agent.weights())
    calls.calls = 0
    agent.learn(batch)
    assert calls.calls == 1
    # Acting without a batch drops an earlier record.
    agent.act_for_training(_pixels(gen, ROWS), batch)
    agent.act_for_training(_pixels(gen, ROWS))
    calls.calls = 0
    agent.learn(batch)
    assert calls.calls == 2


def test_targets_from_acting_are_used_only_with_the_target_weights_they_came_from(trunk_calls):
    """The target network changed between acting and learning (here: its weights replaced in
    place, as a checkpoint load does): the update recomputes the targets, and learns what an agent
    that never acted with the batch learns."""
    merged, plain = _agent(), _agent()
    plain.load_weights(merged.weights())
    gen = torch.Generator().manual_seed(3)
    obs, batch = _pixels(gen, ROWS), _batch(gen)
    merged.act_for_training(obs, batch)
    plain.act_for_training(obs)
    shifted = {k: v + 0.01 for k, v in merged.target.state_dict().items()}
    for agent in (merged, plain):
        agent.target.load_state_dict(shifted)
    trunk_calls.calls = 0
    got = merged.learn(batch)
    assert trunk_calls.calls == 1  # the targets again; the online forward is still replayed
    assert got == plain.learn(batch)
    for (name, p), q in zip(merged.network.named_parameters(), plain.network.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("make", [
    lambda: QNetwork(default_trunk_spec((4, 84, 84), "uint8"), A),
    lambda: QNetwork(default_trunk_spec((4,), "float32"), A),
    lambda: ActorCriticNetwork(default_trunk_spec((4, 84, 84), "uint8"), A, shared=False),
], ids=["nature-cnn-q", "mlp-q", "actor-critic-two-trunks"])
def test_weight_versions_cover_every_parameter_and_see_any_in_place_change(make):
    """weight_versions walks the module tree itself (not module.parameters()): the same
    tensors in the same order, and a change to any one weight changes the result."""
    net = make()
    params = list(net.parameters())
    assert weight_versions(net) == tuple((p.data_ptr(), p._version) for p in params)
    for p in params:
        before = weight_versions(net)
        with torch.no_grad():
            p.add_(0.0)
        assert weight_versions(net) != before


def test_a_newer_recording_voids_an_older_one():
    net = QNetwork(default_trunk_spec((4, 84, 84), "uint8"), A)
    gen = torch.Generator().manual_seed(2)
    _, first = net.forward_recorded(_pixels(gen, 5))
    assert net.forward_replayed(first, slice(1, None)) is not None
    _, second = net.forward_recorded(_pixels(gen, 5))
    assert net.forward_replayed(first, slice(1, None)) is None
    assert net.forward_replayed(second, slice(1, None)).shape == (4, A)


def test_mlp_q_networks_do_not_record():
    net, obs = QNetwork(default_trunk_spec((4,), "float32"), 2), torch.randn(2, 4, generator=torch.Generator())
    assert not net.recordable
    q, record = net.forward_recorded(obs)
    assert record is None and torch.equal(q, net(obs).detach())


def test_a_bf16_replay_s_gradient_is_autocast_s_bit_for_bit():
    """A bf16 Q-network records bfloat16 activations; the replayed backward on any rows of the
    pass gives the float32 gradient of a fresh autocast forward+backward on those rows, and the
    recorded pass the gradient-free forward's Q-values."""
    torch.manual_seed(0)
    net = QNetwork(default_trunk_spec((4, 84, 84), "uint8"), A, bf16=True)
    gen = torch.Generator().manual_seed(5)
    for acting, batch in ((4, 32), (2, 3)):
        obs, learn_obs = _pixels(gen, acting), _pixels(gen, batch)
        q, record = net.forward_recorded(torch.cat([obs, learn_obs]))
        assert net._activations.conv1.dtype == torch.bfloat16  # recorded as autocast computed them
        with torch.no_grad():
            assert torch.equal(q, net(torch.cat([obs, learn_obs])))
        weights = torch.randn(batch, A, generator=gen)
        net.zero_grad()
        (net.forward_replayed(record, slice(acting, None)) * weights).sum().backward()
        got = [p.grad.clone() for p in net.parameters()]
        net.zero_grad()
        (net(learn_obs) * weights).sum().backward()  # autocast
        for (name, p), g in zip(net.named_parameters(), got):
            assert g.dtype == torch.float32 and g.abs().max() > 0, name
            assert torch.equal(g, p.grad), name


def _plain_step(self, agent, replay, next_batch=None, learn=None):
    """The plain order of a vector step: act, step, store, then the updates due, each sampled
    after the step is stored and learnt with a fresh forward."""
    actions, kl = agent.act_for_training(self.obs)
    step = self.env.step(actions)
    replay.add(self.obs, actions, training_rewards(step, self.env.spec.reward_clipping),
               step.terminated, step.truncated & ~step.terminated, kl, step.final_obs)
    self.obs = step.obs
    batch = next_batch() if next_batch is not None else None
    if batch is not None:
        learn(batch)
    return self.tracker.update(step)


@pytest.mark.parametrize("train_freq,extra", [
    (2, {}),  # one update a vector step, merged with acting
    (1, {}),  # two: the first merged, the second plain
    (2, {"n_steps": 3, "exploration": "epsilon_greedy", "backup": "hard"}),  # 3-step windows, DQN's exploration
    (2, {"bf16": True}),  # bfloat16 activations recorded, autocast's backward replayed
])
def test_pipelined_training_learns_the_weights_of_the_plain_order(train_freq, extra, monkeypatch, q_replay_uses):
    values = {"num_envs": 2, "batch_size": 8, "learning_starts": 40, "train_freq": train_freq,
              "buffer_size": 500, "target_update_interval": 7, **extra}
    pipelined = train("soft-q", "ALE/Pong-v5", 160, seed=3, config_values=values)
    updates = (160 - 40) // train_freq
    assert q_replay_uses == [True] * 60  # the first update after each step: merged
    monkeypatch.setattr(ReplayCollector, "step", _plain_step)
    plain = train("soft-q", "ALE/Pong-v5", 160, seed=3, config_values=values)
    assert pipelined.agent.updates == plain.agent.updates == updates
    weights = plain.agent.weights()
    for name, tensor in pipelined.agent.weights().items():
        assert torch.equal(tensor, weights[name]), name
