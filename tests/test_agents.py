"""The shared act/learn interface, Atari smoke runs, determinism and pickle-freedom."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

from equirl.agents import AGENTS
from equirl.hub import format as fmt
from equirl.zoo.train import train

AGENT_IDS = list(AGENTS)
# Settings that make soft-q learn within a short smoke run.
SMOKE = {"soft-q": {"learning_starts": 256, "buffer_size": 4096, "n_steps": 3}}


@pytest.mark.parametrize("agent_id", AGENT_IDS)
def test_act_and_learn_interface(agent_id):
    result = train(agent_id, "CartPole-v1", 2048, seed=0, config_values=SMOKE.get(agent_id, {}))
    agent = result.agent
    obs = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    actions = agent.act(obs)
    assert actions.shape == (7,) and actions.dtype == np.int64
    assert set(actions.tolist()) <= {0, 1}
    greedy = agent.act(obs, greedy=True)
    np.testing.assert_array_equal(greedy, agent.act(obs, greedy=True))
    # Greedy is the mode of the behaviour policy.
    logits = agent.action_logits(agent.to_tensor(obs))
    np.testing.assert_array_equal(greedy, logits.argmax(-1).numpy())
    assert len(result.episodes) > 0


@pytest.mark.parametrize("agent_id", AGENT_IDS)
def test_trains_on_pong_and_writes_a_run(agent_id, tmp_path):
    values = {"soft-q": {"learning_starts": 512, "buffer_size": 2048, "n_steps": 3},
              }.get(agent_id, {"num_envs": 8})
    run = tmp_path / "run"
    result = train(agent_id, "ALE/Pong-v5", 2048, seed=0, out=run, config_values=values, log_every=1)
    assert result.steps >= 2048
    config = fmt.read_json(run / "config.json")
    assert config["agent"] == agent_id
    assert config["env"]["ale"]["repeat_action_probability"] == 0.25
    assert config["env"]["ale"]["game"] == "pong" and len(config["env"]["rom_md5"]) == 32
    weights = fmt.read_tensors(run / "model.safetensors")
    for name, tensor in result.agent.weights().items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=0)
    updates = [line for line in (run / "metrics.jsonl").read_text().splitlines() if '"update"' in line]
    assert updates, "no update was logged"
    assert list((run / "tb").iterdir()), "no TensorBoard event file"


@pytest.mark.parametrize("agent_id", AGENT_IDS)
def test_same_seed_gives_bit_identical_parameters(agent_id):
    def params(seed):
        result = train(agent_id, "CartPole-v1", 3072, seed=seed, config_values=SMOKE.get(agent_id, {}))
        return result.agent.weights()

    first, second, other = params(3), params(3), params(4)
    for name in first:
        assert torch.equal(first[name], second[name]), name
    assert any(not torch.equal(first[n], other[n]) for n in first), "the seed had no effect"


def test_same_seed_bit_identical_on_pong():
    def params():
        return train("a3c", "ALE/Pong-v5", 640, seed=1, config_values={"num_envs": 4}).agent.weights()

    first, second = params(), params()
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_resume_from_checkpoint_restores_everything(tmp_path):
    result = train("a3c", "CartPole-v1", 1024, seed=0, out=tmp_path / "run")
    fresh = train("a3c", "CartPole-v1", 128, seed=5).agent
    info = fmt.load_checkpoint(tmp_path / "run", fresh)
    assert info["steps"] == result.steps
    for name, tensor in result.agent.weights().items():
        assert torch.equal(fresh.weights()[name], tensor)
    a, b = result.agent.optimizer.state_dict(), fresh.optimizer.state_dict()
    for index, entry in a["state"].items():
        for key, value in entry.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][index][key])), key
    assert torch.equal(result.agent.generator.get_state(), fresh.generator.get_state())


@pytest.mark.parametrize("fc_state", ["kernel", "linear"])
@pytest.mark.parametrize("agent_id", ["a3c", "entropy-pg", "soft-q"])  # RMSprop, fused Adam x2
def test_a_resumed_cnn_agent_steps_as_the_uninterrupted_one(tmp_path, agent_id, fc_state):
    """The Nature CNN's conv weights are channels-last, checkpoint files hold contiguous tensors,
    and torch's fused Adam on CPU walks a parameter and its state as flat memory: a moment loaded
    in the file's layout would be applied to the wrong weights. After a checkpoint round trip the
    next update must be the uninterrupted run's, bit for bit. ``linear``: the FC layer's optimizer
    state as checkpoints held it before the weight was held as a kernel ([512, 3136])."""
    from equirl.agents import ObsInfo, ReplaySample, Rollout
    from equirl.agents.networks import default_trunk_spec
    from equirl.zoo.presets import make_config

    config = make_config(agent_id, "atari")
    spec = {"trunk": default_trunk_spec((4, 84, 84), "uint8")}
    build = lambda seed: AGENTS[agent_id](config, ObsInfo((4, 84, 84), "uint8"), 6, spec, "cpu", seed)
    gen = torch.Generator().manual_seed(7)
    pixels = lambda *shape: torch.randint(0, 256, shape + (4, 84, 84), dtype=torch.uint8, generator=gen)

    def batch():
        if agent_id == "soft-q":
            n = config.n_steps
            return ReplaySample(pixels(8), torch.randint(0, 6, (8,), generator=gen), torch.randn(n, 8, generator=gen),
                                torch.zeros(n, 8), torch.zeros(n, 8, dtype=torch.bool),
                                torch.zeros(n, 8, dtype=torch.bool), pixels(8))
        t, b = config.n_steps, 2
        return Rollout(pixels(t, b), torch.randint(0, 6, (t, b), generator=gen), torch.randn(t, b, generator=gen),
                       torch.zeros(t, b, dtype=torch.bool), torch.zeros(t, b, dtype=torch.bool),
                       pixels(b), pixels(0), torch.zeros(0, 2, dtype=torch.long))

    batches = [batch() for _ in range(3)]
    whole = build(0)
    for b in batches[:2]:
        whole.learn(b)
    fmt.save_checkpoint(tmp_path, whole, {"steps": 0})
    if fc_state == "linear":
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        path = tmp_path / fmt.CHECKPOINT_TENSORS
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata()
        tensors = load_file(str(path))
        old = {k: v.reshape(512, 3136) for k, v in tensors.items() if k.startswith("optim.") and v.shape == (512, 64, 7, 7)}
        assert len(old) == (1 if agent_id == "a3c" else 2) * (2 if agent_id == "entropy-pg" else 1)
        save_file({**tensors, **old}, str(path), metadata=metadata)
    resumed = build(1)
    fmt.load_checkpoint(tmp_path, resumed)
    whole.learn(batches[2])
    resumed.learn(batches[2])
    expected, got = whole.weights(), resumed.weights()
    assert all(torch.equal(expected[name], got[name]) for name in expected), \
        [name for name in expected if not torch.equal(expected[name], got[name])]


def test_nothing_is_pickled(monkeypatch, tmp_path):
    """Training, checkpointing and reloading never touch pickle."""
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle was used")

    for name in ("load", "loads", "dump", "dumps"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    monkeypatch.setattr(pickle, "Pickler", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(torch, "save", forbidden)
    result = train("soft-q", "CartPole-v1", 1024, seed=0, out=tmp_path / "run", config_values=SMOKE["soft-q"])
    fmt.load_checkpoint(tmp_path / "run", result.agent)


def test_package_source_has_no_pickle_or_eval():
    import pathlib

    import equirl

    root = pathlib.Path(equirl.__file__).parent
    banned = ("import pickle", "cloudpickle", "torch.load(", "torch.save(", "eval(", "exec(", "yaml.load(", "marshal")
    for path in root.rglob("*.py"):
        text = path.read_text()
        for word in banned:
            assert word not in text, f"{path}: {word}"


def test_divergence_stops_training_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    from equirl.agents.a3c import A3C

    original = A3C.learn
    calls = {"n": 0}

    def learn_then_diverge(self, batch):
        calls["n"] += 1
        metrics = original(self, batch)
        if calls["n"] > 20:  # CartPole preset: 128 steps per update, so after 2,560 steps
            metrics["loss"] = float("nan")
        return metrics

    monkeypatch.setattr(A3C, "learn", learn_then_diverge)
    with pytest.raises(FloatingPointError, match="diverged at step 2688 .*non-finite loss"):
        train("a3c", "CartPole-v1", 10_000, seed=0, out=tmp_path / "run", checkpoint_every=1024)
    state = fmt.read_json(tmp_path / "run" / "checkpoint.json")
    assert state["steps"] == 2048  # the checkpoint before the divergence, not one after it
    weights = fmt.read_tensors(tmp_path / "run" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


@pytest.mark.parametrize("dtype,eps", [(torch.float32, 1e-5), (torch.float32, 1e-8), (torch.float64, 1e-5)])
def test_rmsprop_steps_are_torch_rmsprops_bit_for_bit(dtype, eps):
    """equirl's RMSprop takes sqrt(max(v, tiny)) to avoid slow roots of zero; the steps must not
    change. Gradients include rows that are always zero, tiny and subnormal values."""
    from equirl.agents.optim import RMSprop

    gen = torch.Generator().manual_seed(0)
    start = torch.randn(64, 48, generator=gen, dtype=dtype)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    mine = RMSprop([ours], lr=7e-4, alpha=0.99, eps=eps)
    reference = torch.optim.RMSprop([theirs], lr=7e-4, alpha=0.99, eps=eps)
    for step in range(300):
        grad = torch.randn(64, 48, generator=gen, dtype=dtype) * 10.0 ** -torch.randint(0, 30, (64, 1), generator=gen)
        grad[:16] = 0.0  # weights behind dead units: v stays exactly 0
        grad[16:20] = torch.finfo(dtype).tiny / 4  # subnormal gradients
        if step > 200:
            grad[20:40] = 0.0  # v decays towards subnormal values
        ours.grad, theirs.grad = grad.clone(), grad.clone()
        mine.step()
        reference.step()
        assert torch.equal(ours, theirs), step
    assert torch.equal(mine.state[ours]["square_avg"], reference.state[theirs]["square_avg"])
    # The same state layout: a checkpoint written by either loads into the other.
    mine.load_state_dict(reference.state_dict())
    reference.load_state_dict(mine.state_dict())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_adam_steps_are_torchs_fused_adams_bit_for_bit_without_copying_gradients(dtype):
    """equirl's Adam hands torch's fused kernel flat views of channels-last tensors: the same
    steps as torch.optim.Adam(fused=True), no copy of a gradient, and moments loaded in another
    layout (files hold contiguous tensors) are put back in their parameter's."""
    from torch.profiler import profile

    from equirl.agents.optim import Adam

    gen = torch.Generator().manual_seed(0)
    starts = [torch.randn(32, 16, 4, 4, generator=gen, dtype=dtype).contiguous(memory_format=torch.channels_last),
              torch.randn(48, 20, generator=gen, dtype=dtype), torch.randn(48, generator=gen, dtype=dtype)]
    ours = [s.clone(memory_format=torch.preserve_format).requires_grad_() for s in starts]
    theirs = [s.clone(memory_format=torch.preserve_format).requires_grad_() for s in starts]
    mine, reference = Adam(ours, lr=1e-3, eps=1.5e-4), torch.optim.Adam(theirs, lr=1e-3, eps=1.5e-4, fused=True)
    for step in range(40):
        grads = [torch.randn(s.shape, generator=gen, dtype=dtype).contiguous(memory_format=torch.preserve_format)
                 for s in starts]
        grads[0] = grads[0].contiguous(memory_format=torch.channels_last)
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(memory_format=torch.preserve_format), g.clone(memory_format=torch.preserve_format)
        if step == 10:
            with profile(record_shapes=True) as prof:
                mine.step()
            copies = [e.input_shapes[0] for e in prof.events() if e.name == "aten::copy_" and e.input_shapes[0]]
            assert not copies, f"tensors were copied: {copies}"  # (0-d copies: torch's scalar handling)
        else:
            mine.step()
        reference.step()
        assert all(torch.equal(p, q) for p, q in zip(ours, theirs)), step
        if step == 20:  # a checkpoint round trip, moments as a file holds them (contiguous)
            state = mine.state_dict()
            state["state"] = {i: {k: v.contiguous().clone() for k, v in entry.items()} for i, entry in state["state"].items()}
            mine.load_state_dict(state)
    assert torch.equal(mine.state[ours[0]]["exp_avg_sq"], reference.state[theirs[0]]["exp_avg_sq"])
    assert mine.state[ours[0]]["exp_avg"].is_contiguous(memory_format=torch.channels_last)
    reference.load_state_dict(mine.state_dict())  # the same state layout as torch's
    state = mine.state_dict()
    state["param_groups"][0]["amsgrad"] = True  # options it does not run are refused, not ignored
    mine.load_state_dict(state)
    with pytest.raises(ValueError, match="amsgrad"):
        mine.step()


@pytest.mark.parametrize("agent_id", ["soft-q", "a3c"])
def test_an_update_bumps_every_stepped_weight_s_version_counter(agent_id):
    """clip_and_step runs equirl's optimizers past torch's step wrapper (optim.run_step): the
    step still counts as an in-place change of every weight it moved (the fused Adam kernel
    does not count its writes itself), so acting's records and cached bf16 weights made before
    it are not used after it."""
    from equirl.agents import ObsInfo
    from equirl.agents.networks import default_trunk_spec
    from equirl.zoo.presets import make_config

    shape = (4, 84, 84)
    agent = AGENTS[agent_id](make_config(agent_id, "atari"), ObsInfo(shape, "uint8"), 6,
                             {"trunk": default_trunk_spec(shape, "uint8")}, "cpu", 0)
    assert type(agent.optimizer).__module__ == "equirl.agents.optim"  # equirl's, not torch's
    obs = torch.randint(0, 256, (2, *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    before = {name: p._version for name, p in agent.network.named_parameters()}
    out = agent.network(obs)
    agent.clip_and_step(sum(o.sum() for o in out) if isinstance(out, tuple) else out.sum(), 10.0)
    assert all(p._version > before[name] for name, p in agent.network.named_parameters())


def test_a_deep_copy_of_adam_steps_as_the_original_does():
    """copy.deepcopy (of an agent, say) keeps equirl's Adam working: torch's __getstate__ drops
    the cache of flat views, which the copy must rebuild for its own parameters."""
    from equirl.agents.optim import Adam

    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(8, 4, 3, 3, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_(),
              torch.randn(8, generator=gen).requires_grad_()]
    adam = Adam(params, lr=1e-3, eps=1.5e-4)

    def step(tensors, optimizer, grads):
        for p, g in zip(tensors, grads):
            p.grad = g.clone(memory_format=torch.preserve_format)
        optimizer.step()

    def random_grads():
        return [torch.randn(p.shape, generator=gen).contiguous(memory_format=torch.preserve_format) for p in params]

    for _ in range(3):
        step(params, adam, random_grads())
    twin_params, twin = copy.deepcopy((params, adam))  # the copy's state is keyed by the copied tensors
    for _ in range(3):
        grads = random_grads()
        step(params, adam, grads)
        step(twin_params, twin, grads)
        assert all(torch.equal(p, q) for p, q in zip(params, twin_params))
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(params, twin_params))

@pytest.mark.parametrize("scale", [1e-3, 1e3, float("nan")], ids=["within", "clipped", "nan"])
@pytest.mark.parametrize("agent_id", ["a3c", "soft-q"])
def test_gradient_clipping_is_torchs_bit_for_bit(agent_id, scale, monkeypatch):
    """clip_and_step skips torch's multiplication by 1 on CPU where the norm is within the limit:
    the step, the norm and the optimizer state stay those of clip_grad_norm_ with the same
    optimizer (RMSprop, Adam), whether the gradient is within the limit, clipped, or NaN."""
    from equirl.agents import ObsInfo
    from equirl.agents.networks import default_trunk_spec
    from equirl.zoo.presets import make_config

    config = make_config(agent_id, "classic")
    spec = {"trunk": default_trunk_spec((4,), "float32")}
    agent = AGENTS[agent_id](config, ObsInfo((4,), "float32"), 2, spec, "cpu", 0)
    reference = copy.deepcopy(agent)
    obs = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    limit = config.max_grad_norm
    scalings = []
    clip = torch.nn.utils.clip_grads_with_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grads_with_norm_", lambda *a: scalings.append(1) or clip(*a))

    def loss(a):
        out = a.network(obs)
        return (out[0] if isinstance(out, tuple) else out).sum() * scale

    for step in range(3):
        norm = agent.clip_and_step(loss(agent), limit)
        reference.optimizer.zero_grad(set_to_none=True)
        loss(reference).backward()
        expected = torch.nn.utils.clip_grad_norm_(reference.network.parameters(), limit)
        reference.optimizer.step()
        assert norm == float(expected) or (np.isnan(norm) and np.isnan(float(expected))), step
        for (name, p), q in zip(agent.network.named_parameters(), reference.network.parameters()):
            assert torch.equal(p, q) or (p.isnan().all() and q.isnan().all()), (step, name)
    if scale == 1e-3:
        assert norm < limit and scalings == []  # within the limit: no pass over the gradients
    else:
        assert scale != 1e3 or norm > limit  # the case that clips did clip
        assert len(scalings) == 3
