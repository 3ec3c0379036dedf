"""On-policy updates reuse acting's forward pass (ActorCriticNetwork.forward_replayed): the
backward runs from the trunk activations recorded while acting, instead of a second forward
over the segment. Checked against the plain path (a fresh forward with autograd) in float64,
and bit for bit in bf16 (autocast's forward and backward): the same actions, the same gradients,
the same weights after the step; and records made with other weights are never used."""
from __future__ import annotations

import pytest
import torch

from equirl.agents import AGENTS, ObsInfo, Rollout
from equirl.agents.networks import ActorCriticNetwork, default_trunk_spec
from equirl.zoo.presets import make_config
from equirl.zoo.train import train

T, B, A = 5, 3, 6


def _agent(agent_id: str, values: dict, float64: bool = True, **more):
    config = make_config(agent_id, "atari", float64=float64, num_envs=B, **values, **more)
    spec = {"trunk": default_trunk_spec((4, 84, 84), "uint8")}
    return AGENTS[agent_id](config, ObsInfo((4, 84, 84), "uint8"), A, spec, "cpu", 0)


def _pixels(gen, *shape):
    return torch.randint(0, 256, shape + (4, 84, 84), dtype=torch.uint8, generator=gen)


def _segment(agent, gen, record: bool):
    """A segment acted by ``agent``: random pixels, the agent's own sampled actions, one episode
    truncated at (2, 1) and one terminated at (3, 0)."""
    obs = _pixels(gen, T, B)
    actions, acting = [], []
    for t in range(T):
        if record:
            chosen, rec = agent.act_recorded(obs[t], t, T)
            acting.append(rec)
        else:
            chosen = agent.act(obs[t])
        actions.append(torch.as_tensor(chosen))
    rewards = torch.randn(T, B, generator=gen).sign()
    terminated = torch.zeros(T, B, dtype=torch.bool)
    truncated = torch.zeros(T, B, dtype=torch.bool)
    terminated[3, 0] = True
    truncated[2, 1] = True
    return Rollout(obs, torch.stack(actions), rewards, terminated, truncated, _pixels(gen, B), _pixels(gen, 1),
                   torch.tensor([[2, 1]]), tuple(acting) if record else None)


AGENT_CASES = [
    ("a3c", {}),
    ("matched-q", {}),
    ("entropy-pg", {"shared_trunk": False}),  # two trunks, both replayed
]


@pytest.mark.parametrize("precision", ["float64", "bf16"])
@pytest.mark.parametrize("agent_id,values", AGENT_CASES)
def test_replayed_update_equals_a_fresh_forward(agent_id, values, precision, trunk_calls):
    """float64: to rounding. bf16: bit for bit, acting's recorded bfloat16 pass (the cached
    bfloat16 weights, 3 rows a call) against the update's autocast forward of all 15 rows."""
    bf16 = precision == "bf16"
    more = {"float64": False, "bf16": True} if bf16 else {}
    replaying, plain = _agent(agent_id, values, **more), _agent(agent_id, values, **more)
    plain.load_weights(replaying.weights())
    calls = trunk_calls
    for update in range(3):
        gen_a, gen_b = torch.Generator().manual_seed(update), torch.Generator().manual_seed(update)
        batch = _segment(replaying, gen_a, record=True)
        reference = _segment(plain, gen_b, record=False)
        # Recording does not change what is sampled: the same generator draws, the same logits.
        assert torch.equal(batch.actions, reference.actions)
        calls.calls = 0
        got = replaying.learn(batch)
        trunks = 1 if values.get("shared_trunk", True) else 2
        assert calls.calls == trunks  # only the bootstrap forward: the segment's was replayed
        calls.calls = 0
        want = plain.learn(reference)
        assert calls.calls == 2 * trunks
        if bf16:
            assert got == want
        for name in want:
            assert got[name] == pytest.approx(want[name], rel=1e-12, abs=1e-15), name
        for (name, p), q in zip(replaying.network.named_parameters(), plain.network.parameters()):
            scale = q.grad.abs().max().item()
            assert scale > 0, name  # every layer gets a gradient, conv1 included
            if bf16:
                assert torch.equal(p.grad, q.grad) and torch.equal(p, q), name
                continue
            assert (p.grad - q.grad).abs().max().item() <= 1e-12 * scale, name
            # One RMSprop step (at most ~10 lr = 7e-3 per weight early on): equal to float64 rounding.
            assert (p - q).abs().max().item() <= 1e-12, name


def test_records_made_with_other_weights_are_not_used(trunk_calls):
    agent = _agent("a3c", {})
    gen = torch.Generator().manual_seed(7)
    stale = _segment(agent, gen, record=True)
    agent.learn(_segment(agent, gen, record=True))  # an optimizer step: the weights move
    assert agent.network.forward_replayed(stale.acting, B) is None
    calls = trunk_calls
    calls.calls = 0
    agent.learn(stale)
    assert calls.calls == 2  # the segment's forward ran again, with the current weights
    # load_state_dict writes in place: records from before it are stale too.
    fresh = _segment(agent, gen, record=True)
    assert agent.network.forward_replayed(fresh.acting, B) is not None
    agent.load_weights(agent.weights())
    assert agent.network.forward_replayed(fresh.acting, B) is None
    # A record of the wrong number of rows, a missing one, or steps out of order are not used.
    again = _segment(agent, gen, record=True)
    assert agent.network.forward_replayed(again.acting, B + 1) is None
    assert agent.network.forward_replayed(again.acting[:-1] + (None,), B) is None
    assert agent.network.forward_replayed(again.acting[::-1], B) is None
    # Acting a second segment reuses the storage: the first segment's records are void.
    later = _segment(agent, gen, record=True)
    assert agent.network.forward_replayed(again.acting, B) is None
    assert agent.network.forward_replayed(later.acting, B) is not None
    # A segment cut short (the next one started at step 0 before it ended) records nothing usable.
    agent.act_recorded(_pixels(gen, B), 0, T)
    assert agent.network.forward_replayed(later.acting, B) is None
    assert agent.act_recorded(_pixels(gen, B), 2, T)[1] is None


def test_float32_replay_matches_the_fresh_forward():
    net = ActorCriticNetwork(default_trunk_spec((4, 84, 84), "uint8"), A)
    gen = torch.Generator().manual_seed(3)
    steps = [_pixels(gen, 4) for _ in range(3)]
    records = [net.forward_recorded(obs, t, len(steps))[2] for t, obs in enumerate(steps)]
    weights = torch.randn(12, A, generator=gen)
    logits, values = net.forward_replayed(records, 4)
    ((logits * weights).sum() + values.square().sum()).backward()
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    logits_ref, values_ref = net(torch.cat(steps))
    ((logits_ref * weights).sum() + values_ref.square().sum()).backward()
    assert torch.allclose(logits, logits_ref, rtol=1e-5, atol=1e-6)
    for (name, p), g in zip(net.named_parameters(), got):
        assert torch.allclose(g, p.grad, rtol=1e-4, atol=1e-6 * p.grad.abs().max().item()), name


def test_mlp_trunks_do_not_record():
    net = ActorCriticNetwork(default_trunk_spec((4,), "float32"), A)
    assert not net.recordable
    logits, values, record = net.forward_recorded(torch.randn(2, 4, generator=torch.Generator()), 0, 1)
    assert record is None and logits.shape == (2, A) and values.shape == (2,)


def test_training_replays_every_update_and_learns_what_the_fresh_forward_does(monkeypatch, replay_uses):
    """The training loop's collector hands acting's records to learn: a float64 run with
    replay gives the weights of the same run with replay switched off."""
    values = {"num_envs": 2, "float64": True}
    replayed = train("a3c", "ALE/Pong-v5", 120, seed=1, config_values=values)
    assert replay_uses == [True] * 12
    monkeypatch.setattr(ActorCriticNetwork, "forward_replayed", lambda *args: None)
    fresh = train("a3c", "ALE/Pong-v5", 120, seed=1, config_values=values)
    for name, tensor in fresh.agent.weights().items():
        assert torch.allclose(replayed.agent.weights()[name], tensor, rtol=1e-10, atol=1e-14), name


@pytest.mark.parametrize("obs_shape", [(3, 64, 48), (1, 100, 90)])
def test_replay_follows_other_image_shapes(obs_shape):
    """The trunk's geometry (conv output sizes, the flattened FC input) comes from the image
    size: other shapes than Atari's 4x84x84 replay to the fresh forward's gradient as well."""
    net = ActorCriticNetwork(default_trunk_spec(obs_shape, "uint8"), A).double()
    gen = torch.Generator().manual_seed(5)
    steps = [torch.randint(0, 256, (2, *obs_shape), dtype=torch.uint8, generator=gen) for _ in range(2)]
    records = [net.forward_recorded(obs, t, 2)[2] for t, obs in enumerate(steps)]
    _assert_replay_is_the_fresh_forward(net, records, steps)


def _assert_replay_is_the_fresh_forward(net, records, steps):
    """float64: ``records`` (acting on ``steps``) replay to the outputs and the gradient of a fresh
    forward over the same observations, to 1e-12."""
    logits, values = net.forward_replayed(records, len(steps[0]))
    (logits.sum() + values.square().sum()).backward()
    got = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    logits_ref, values_ref = net(torch.cat(steps))
    (logits_ref.sum() + values_ref.square().sum()).backward()
    assert torch.allclose(logits, logits_ref, rtol=1e-12, atol=1e-15)
    assert torch.allclose(values, values_ref, rtol=1e-12, atol=1e-15)
    for (name, p), g in zip(net.named_parameters(), got):
        assert (g - p.grad).abs().max().item() <= 1e-12 * p.grad.abs().max().item(), name


def test_steps_recorded_in_groups_replay_like_whole_steps():
    """A step's rows may be acted in several calls (envs stepped in groups): recorded in order,
    they replay to the fresh forward's gradient (float64, separate value trunk too); any other
    order, a missing group or rows past the step's end leave nothing to replay."""
    net = ActorCriticNetwork(default_trunk_spec((4, 84, 84), "uint8"), A, shared=False).double()
    gen = torch.Generator().manual_seed(9)
    steps = [_pixels(gen, 4) for _ in range(2)]
    records = [net.forward_recorded(obs[rows], t, 2, rows.start, 4)[2]
               for t, obs in enumerate(steps) for rows in (slice(0, 1), slice(1, 4))]
    assert [(r.step, r.offset, r.rows) for r in records] == [(0, 0, 1), (0, 1, 3), (1, 0, 1), (1, 1, 3)]
    _assert_replay_is_the_fresh_forward(net, records, steps)
    # The records must tile the segment in order.
    assert net.forward_replayed([records[1], records[0]] + records[2:], 4) is None
    assert net.forward_replayed(records[:3], 4) is None
    assert net.forward_replayed(records, 2) is None
    # Acted out of order (the second group first), or past the step's rows: nothing is recorded.
    assert net.forward_recorded(steps[0][2:], 0, 2, 2, 4)[2] is None  # a segment starts at row 0
    assert net.forward_recorded(steps[0][:1], 0, 2, 0, 4)[2] is not None  # it does here
    assert net.forward_recorded(steps[0][:2], 0, 2, 3, 4)[2] is None  # rows 3..4 of 0..3
    assert net.forward_recorded(steps[0][2:], 0, 2, 2, 4)[2] is None  # row 1 has not come
    assert net.forward_recorded(steps[0][1:], 0, 2, 1, 4)[2] is not None  # rows 1..3: in order
