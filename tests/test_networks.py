"""The Nature CNN's FC layer, run on CPU in float32 as a convolution (networks._FcAsConv):
its outputs and gradients against a float64 network of the same weights (plain linear)."""
from __future__ import annotations

import pytest
import torch

from equirl.agents.networks import NatureCNN
from equirl.agents.optim import RMSprop


def _pair(shape):
    torch.manual_seed(0)
    fast = NatureCNN(*shape)
    reference = NatureCNN(*shape).double()
    reference.load_state_dict({k: v.double() for k, v in fast.state_dict().items()})
    return fast, reference


@pytest.mark.parametrize("shape", [(4, 84, 84), (3, 64, 48), (1, 100, 90)])
def test_fc_as_a_convolution_gives_linears_outputs_and_gradients(shape):
    """Other image sizes give other conv3 maps (7x7, 4x2, 9x7): the kernel covers each; the
    weight gradient comes back in the [out, C*H*W] order of nn.Flatten."""
    fast, reference = _pair(shape)
    gen = torch.Generator().manual_seed(1)
    obs = torch.randint(0, 256, (6, *shape), dtype=torch.uint8, generator=gen)
    weights = torch.randn(6, 512, generator=gen)
    outputs = []
    for net in (fast, reference):
        features = net(obs)
        (features * weights.to(features.dtype)).sum().backward()
        outputs.append(features)
    assert fast._fc_kernel_cache is not None  # the float32 forward ran the convolution
    assert reference._fc_kernel_cache is None  # float64 runs plain linear: an independent reference
    assert torch.allclose(outputs[0].double(), outputs[1], rtol=1e-4, atol=1e-5)
    for (name, p), q in zip(fast.named_parameters(), reference.parameters()):
        assert p.grad.shape == q.grad.shape, name
        assert (p.grad.double() - q.grad).abs().max() <= 1e-4 * q.grad.abs().max(), name


def test_a_graph_made_before_the_weights_changed_refuses_its_backward():
    """The kernel is rewritten in place when the weights change; a pending backward would have
    used the old weights, so it fails loudly, as it does for a plain linear layer."""
    net, _ = _pair((4, 84, 84))
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
    reference = NatureCNN(4, 84, 84).double()
    reference.load_state_dict({k: v.double() for k, v in net.state_dict().items()})
    with torch.no_grad():
        assert torch.allclose(net(obs).double(), reference(obs), rtol=1e-4, atol=1e-5)
