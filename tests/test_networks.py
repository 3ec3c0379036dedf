"""The Nature CNN's FC layer (networks.FcOverMap): its weight held as a channels-last kernel,
run on CPU in float32 as a convolution (networks._FcAsConv), in float64 as linear on (h, w, c)
rows. Both against a float64 Flatten + Linear forward written here from the state dict alone."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from equirl.agents import networks
from equirl.agents.networks import NatureCNN
from equirl.agents.optim import RMSprop


def _reference_forward(state: dict, obs: torch.Tensor) -> torch.Tensor:
    """Mnih et al.'s trunk from its state dict, in float64: three convolutions, nn.Flatten's
    NCHW order, a Linear layer with the [out, C*H*W] weight the state dict holds."""
    x = obs.double() / 255.0
    for index, stride in ((0, 4), (2, 2), (4, 1)):
        x = F.relu(F.conv2d(x, state[f"convs.{index}.weight"], state[f"convs.{index}.bias"], stride))
    return F.relu(F.linear(x.flatten(1), state["fc.0.weight"], state["fc.0.bias"]))


def _leaf_state(net: NatureCNN) -> dict:
    return {k: v.detach().double().requires_grad_() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("dtype,weight_grad", [(torch.float32, "onednn-matmul"), (torch.float32, "convolution"),
                                               (torch.float64, "-")])
@pytest.mark.parametrize("shape", [(4, 84, 84), (3, 64, 48), (1, 100, 90)])
def test_fc_layer_gives_flatten_linears_outputs_and_gradients(shape, dtype, weight_grad, monkeypatch):
    """Other image sizes give other conv3 maps (7x7, 4x2, 9x7); the weight gradient is checked
    in nn.Flatten's column order, through the state dict's [out, C*H*W] view of the weight. In
    float32 the weight gradient runs as oneDNN's matrix product where torch has it, else as a
    1x1 convolution: both are checked. A gradient-free forward gives the same features, bit for
    bit, without the autograd Function."""
    matmuls = []
    if weight_grad == "convolution":
        monkeypatch.setattr(networks, "_ONEDNN_LINEAR", None)
    elif networks._ONEDNN_LINEAR is not None:  # x86 builds of torch with oneDNN (this repo's pin)
        monkeypatch.setattr(networks, "_ONEDNN_LINEAR", lambda *a, f=networks._ONEDNN_LINEAR: matmuls.append(1) or f(*a))
    calls = []
    monkeypatch.setattr(networks._FcAsConv, "forward", lambda *a, f=networks._FcAsConv.forward: calls.append(1) or f(*a))
    torch.manual_seed(0)
    net = NatureCNN(*shape).to(dtype)
    assert net.state_dict()["fc.0.weight"].shape == (512, net.fc[0].in_features)
    gen = torch.Generator().manual_seed(1)
    obs = torch.randint(0, 256, (6, *shape), dtype=torch.uint8, generator=gen)
    weights = torch.randn(6, 512, generator=gen, dtype=torch.float64)
    features = net(obs)
    (features * weights.to(dtype)).sum().backward()
    assert len(calls) == (1 if dtype == torch.float32 else 0)  # float32 ran the convolution
    with torch.no_grad():  # gradient-free passes skip the autograd Function: the same values
        assert torch.equal(net(obs), features.detach())
    assert len(calls) == (1 if dtype == torch.float32 else 0)
    assert len(matmuls) == (1 if weight_grad == "onednn-matmul" and networks._ONEDNN_LINEAR is not None else 0)
    state = _leaf_state(net)
    want = _reference_forward(state, obs)
    (want * weights).sum().backward()
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    assert torch.allclose(features.double(), want, rtol=tol, atol=tol / 10)
    grads = {name: p.grad for name, p in net.named_parameters()}
    for name, leaf in state.items():
        got = grads[name].double().reshape(leaf.shape)  # the kernel's logical order is nn.Flatten's
        assert (got - leaf.grad).abs().max() <= tol * leaf.grad.abs().max(), name


def test_the_fc_weight_is_a_channels_last_kernel_and_files_see_a_linear_weight():
    """Held as [out, C, H, W] channels-last (the convolution's kernel, no copy per update); state
    dicts give and take nn.Linear's [out, C*H*W]; a weight of another shape is refused."""
    torch.manual_seed(0)
    net, other = NatureCNN(4, 84, 84), NatureCNN(4, 84, 84)
    weight = net.fc[0].weight
    assert weight.shape == (512, 64, 7, 7) and weight.is_contiguous(memory_format=torch.channels_last)
    state = net.state_dict()
    assert state["fc.0.weight"].shape == (512, 3136)
    assert torch.equal(state["fc.0.weight"], weight.detach().flatten(1))
    other.load_state_dict(state)
    assert torch.equal(other.fc[0].weight, weight) and other.fc[0].weight.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="size mismatch for fc.0.weight"):
        other.load_state_dict({**state, "fc.0.weight": torch.zeros(512, 3135)})


def test_a_graph_made_before_the_weights_changed_refuses_its_backward():
    """The kernel is the weight itself: a backward pending when it changes would use the new
    weights, so it fails loudly, as it does for a plain linear layer."""
    torch.manual_seed(0)
    net = NatureCNN(4, 84, 84)
    obs = torch.randint(0, 256, (2, 4, 84, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    loss = net(obs).sum()
    with torch.no_grad():
        net.fc[0].weight.mul_(1.01)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    # And after a step taken the usual way, the next forward uses the new weights.
    net.zero_grad()
    net(obs).sum().backward()
    RMSprop(net.parameters(), lr=1e-3, alpha=0.99, eps=1e-5).step()
    with torch.no_grad():
        assert torch.allclose(net(obs).double(), _reference_forward(_leaf_state(net), obs), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(4, 84, 84), (3, 64, 48), (1, 100, 90)])
def test_pixels_become_channels_last_floats_scaled_to_one_for_any_batch(shape):
    """The reorder of uint8 stacks to channels-last (torch.stack from 16 stacks on, .contiguous
    below) keeps every pixel where it belongs."""
    net = NatureCNN(*shape)
    gen = torch.Generator().manual_seed(2)
    for rows in (1, 4, 15, 16, 32, 80):
        obs = torch.randint(0, 256, (rows, *shape), dtype=torch.uint8, generator=gen)
        x = net._pixels(obs)
        assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x, obs.float() / 255.0), rows
