"""The ``bf16`` option: the CNN trunk under bfloat16 autocast, checked against float64."""
from __future__ import annotations

import copy

import pytest
import torch

from equirl.agents.networks import NatureCNN
from equirl.hub import format as fmt
from equirl.hub.client import load
from equirl.zoo.presets import make_config
from equirl.zoo.train import train


def _pair():
    torch.manual_seed(0)
    fast = NatureCNN(4, 84, 84, bf16=True)
    reference = NatureCNN(4, 84, 84).double()
    reference.load_state_dict({k: v.double() for k, v in fast.state_dict().items()})
    plain = NatureCNN(4, 84, 84)
    plain.load_state_dict(fast.state_dict())
    obs = torch.randint(0, 256, (8, 4, 84, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    return fast, plain, reference, obs


def test_bf16_features_are_float32_and_close_to_float64():
    fast, plain, reference, obs = _pair()
    with torch.no_grad():
        want = reference(obs)
        got = fast(obs)
        exact = plain(obs)
    assert got.dtype == torch.float32
    scale = want.abs().max().item()
    bf16_error = (got.double() - want).abs().max().item() / scale
    fp32_error = (exact.double() - want).abs().max().item() / scale
    # bfloat16 keeps 8 mantissa bits (~0.4% per rounding): a few percent after four layers.
    assert bf16_error < 3e-2
    # ... and the autocast really ran: float32 is orders of magnitude closer.
    assert fp32_error < 1e-5 and bf16_error > 100 * fp32_error


def test_bf16_gradients_point_where_float64_ones_do():
    fast, _, reference, obs = _pair()
    weights = torch.randn(512, generator=torch.Generator().manual_seed(2))
    (fast(obs) * weights).sum().backward()
    (reference(obs) * weights.double()).sum().backward()
    for (name, p), q in zip(fast.named_parameters(), reference.parameters()):
        assert p.grad.dtype == torch.float32, name  # master weights and gradients stay float32
        cosine = torch.nn.functional.cosine_similarity(p.grad.double().flatten(), q.grad.flatten(), dim=0)
        assert cosine > 0.99, (name, float(cosine))
        relative = (p.grad.double().norm() / q.grad.norm()).item()
        assert 0.95 < relative < 1.05, (name, relative)


@pytest.mark.parametrize("agent_id,values", [
    ("a3c", {"num_envs": 4}),
    ("soft-q", {"learning_starts": 128, "buffer_size": 1024, "batch_size": 16}),
])
def test_bf16_training_is_recorded_reproducible_and_loads_as_trained(agent_id, values, tmp_path):
    values = {**values, "bf16": True}
    first = train(agent_id, "ALE/Pong-v5", 640, seed=1, out=tmp_path / "run", config_values=values)
    second = train(agent_id, "ALE/Pong-v5", 640, seed=1, config_values=values)
    for name, tensor in first.agent.weights().items():
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, second.agent.weights()[name]), name
    assert fmt.read_json(tmp_path / "run" / "config.json")["hyperparameters"]["bf16"] is True
    loaded = load(tmp_path / "run")
    assert loaded.network.trunk.bf16
    obs = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(loaded.action_logits(obs), first.agent.action_logits(obs))


@pytest.mark.parametrize("agent_id", ["a3c", "soft-q"])
def test_bf16_and_float64_together_are_refused(agent_id):
    with pytest.raises(ValueError, match="bf16"):
        make_config(agent_id, "atari", bf16=True, float64=True)


def _grad_free_matches_autocast(network: torch.nn.Module, obs: torch.Tensor) -> bool:
    """A gradient-free forward (cached bf16 weights) against the autocast one (with gradient)."""
    with torch.no_grad():
        cached = network(obs)
    fresh = network(obs)
    cached, fresh = (cached, fresh) if isinstance(fresh, tuple) else ((cached,), (fresh,))
    return all(torch.equal(a, b.detach()) for a, b in zip(cached, fresh))


def _float32_matches_float64(network: torch.nn.Module, obs: torch.Tensor) -> bool:
    """A float32 forward (on CPU the FC layer as a convolution over the weight it holds) against
    a float64 copy of the network as it is now (plain linear)."""
    with torch.no_grad():
        got = network(obs)
        want = copy.deepcopy(network).double()(obs)
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    return all(torch.allclose(a.double(), b, rtol=1e-4, atol=1e-5) for a, b in zip(got, want))


@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "float32"])
@pytest.mark.parametrize("agent_id,values", [
    ("a3c", {}),  # RMSprop (equirl/agents/optim.py)
    ("entropy-pg", {"shared_trunk": False}),  # fused Adam, two CNN trunks
    ("soft-q", {"target_update_interval": 2}),  # fused Adam, and a target network synced by copy
])
def test_cached_weights_follow_every_weight_update(agent_id, values, bf16):
    """bf16 keeps bfloat16 copies of the weights, made again after every change of the weights
    they copy; float32 runs the FC layer as a convolution over its weight, which every kind of
    update must move in place (the kernel is the parameter itself)."""
    from equirl.agents import AGENTS, ObsInfo, ReplaySample, Rollout
    from equirl.agents.networks import default_trunk_spec

    matches = _grad_free_matches_autocast if bf16 else _float32_matches_float64
    config = make_config(agent_id, "atari", bf16=bf16, **values)
    spec = {"trunk": default_trunk_spec((4, 84, 84), "uint8")}
    agent = AGENTS[agent_id](config, ObsInfo((4, 84, 84), "uint8"), 6, spec, "cpu", 0)
    gen = torch.Generator().manual_seed(4)
    pixels = lambda *shape: torch.randint(0, 256, shape + (4, 84, 84), dtype=torch.uint8, generator=gen)
    probe = pixels(5)
    networks = [agent.network] + ([agent.target] if agent_id == "soft-q" else [])
    fc_weights = lambda: [net.trunk.fc[0].weight.detach().clone() for net in networks]
    for step in range(4):
        assert all(matches(net, probe) for net in networks), step
        before = fc_weights()
        if agent_id == "soft-q":
            n = config.n_steps
            batch = ReplaySample(pixels(8), torch.randint(0, 6, (8,), generator=gen), torch.ones(n, 8),
                                 torch.zeros(n, 8), torch.zeros(n, 8, dtype=torch.bool),
                                 torch.zeros(n, 8, dtype=torch.bool), pixels(8))
        else:
            t, b = config.n_steps, 2
            batch = Rollout(pixels(t, b), torch.randint(0, 6, (t, b), generator=gen), torch.ones(t, b),
                            torch.zeros(t, b, dtype=torch.bool), torch.zeros(t, b, dtype=torch.bool),
                            pixels(b), pixels(0), torch.zeros(0, 2, dtype=torch.long))
        agent.learn(batch)
        # Every step moves the online weights, and every second one the target's: a cache that
        # missed any of these updates fails the comparison that follows.
        moved = [not torch.equal(a, b) for a, b in zip(before, fc_weights())]
        assert moved == [True] + ([step % 2 == 1] if agent_id == "soft-q" else []), (step, moved)
    assert all(matches(net, probe) for net in networks)
