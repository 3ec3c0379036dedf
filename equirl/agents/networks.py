"""Networks: nn.Modules only. Constructor arguments are plain numbers and strings, so a network
is fully described by the JSON ``network`` block of a run's config.json (see :func:`build_network`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _init_linear(layer: nn.Linear | nn.Conv2d, gain: float) -> nn.Module:
    # Orthogonal initialisation, as in OpenAI baselines' A2C: the published Atari scores were
    # obtained with it, and it keeps the initial policy close to uniform when gain is small.
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class NatureCNN(nn.Module):
    """Mnih et al. 2015 trunk: 3 conv layers + FC512 on 84x84 uint8 frame stacks."""

    def __init__(self, in_channels: int, height: int, width: int, features: int = 512, bf16: bool = False):
        super().__init__()
        self.bf16 = bf16
        relu_gain = math.sqrt(2)
        self.convs = nn.Sequential(
            _init_linear(nn.Conv2d(in_channels, 32, 8, stride=4), relu_gain), nn.ReLU(),
            _init_linear(nn.Conv2d(32, 64, 4, stride=2), relu_gain), nn.ReLU(),
            _init_linear(nn.Conv2d(64, 64, 3, stride=1), relu_gain), nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, in_channels, height, width)).shape[1]
        self.fc = nn.Sequential(_init_linear(nn.Linear(flat, features), relu_gain), nn.ReLU())
        self.features = features
        # Channels-last is the layout oneDNN (CPU) and cuDNN convolve fastest: a quarter off the
        # forward+backward of a CPU update (BENCHMARKS.md). The same maths; files store plain
        # contiguous tensors (hub/format.py), so weights load into either layout.
        self.convs.to(memory_format=torch.channels_last)
        # bf16 weights for gradient-free forwards (see _bf16_layers). Plain attributes, not
        # buffers or submodules: never saved to a file or a state dict.
        self._layers = tuple(m for m in self.convs if isinstance(m, nn.Conv2d)) + (self.fc[0],)
        self._bf16_cache: tuple | None = None

    def forward(self, obs: Tensor) -> Tensor:
        # Pixels arrive as uint8 and are scaled here, so observations move to the device once,
        # at a quarter of the float32 size.
        # Reordered to channels-last while still uint8 (a quarter of the bytes), then converted
        # and scaled in place: one float pass instead of three.
        if obs.dim() == 4:
            obs = obs.contiguous(memory_format=torch.channels_last)
        # Under bf16 the pixels go straight to bfloat16 (0..255 are exact in it): the scaled
        # float32 copy that autocast would round to bfloat16 anyway is never made.
        x = obs.to(torch.bfloat16 if self.bf16 and obs.dtype == torch.uint8 else self.fc[0].weight.dtype)
        x = x.div_(255.0) if x is not obs else x / 255.0
        if not self.bf16:
            return self.fc(self.convs(x))
        if not torch.is_grad_enabled():
            return self._forward_bf16_weights(x)
        # bfloat16 autocast of the convolutions and the FC layer only (the heads, losses, weights
        # and optimizer stay float32): ~1.7x faster forward+backward on CPUs with AMX/AVX512-BF16
        # (BENCHMARKS.md). bfloat16 keeps float32's exponent range, so no loss scaling is needed.
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            features = self.fc(self.convs(x))
        return features.float()

    def _forward_bf16_weights(self, x: Tensor) -> Tensor:
        """What the autocast forward computes, bit for bit, with the weights cast once per
        weight update instead of once per call. Acting runs this (no gradient): autocast would
        re-cast all weights, the 1.6M-parameter FC above all, on every step; this is 27% off a
        16-frame forward and 42% off a 1-frame one on CPU (BENCHMARKS.md)."""
        *convs, fc = self._bf16_layers()
        for (weight, bias), conv in zip(convs, self._layers):
            x = F.relu(F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation))
        return F.relu(F.linear(x.flatten(1), *fc)).float()

    def _bf16_layers(self) -> list[tuple[Tensor, Tensor]]:
        # Valid while every parameter is the same storage at the same version: any in-place
        # update (an optimizer step, load_state_dict, a target sync) bumps the version counter.
        # The cache holds the source tensors, so their memory cannot be reused by new ones.
        params = [p for layer in self._layers for p in (layer.weight, layer.bias)]
        cache = self._bf16_cache
        if cache is None or any(src.data_ptr() != p.data_ptr() or version != p._version
                                for (src, version), p in zip(cache[0], params)):
            sources = [(p.detach(), p._version) for p in params]
            cast = [p.detach().to(torch.bfloat16) for p in params]
            self._bf16_cache = cache = (sources, list(zip(cast[::2], cast[1::2])))
        return cache[1]


class MLP(nn.Module):
    """Trunk for vector observations: tanh hidden layers."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        size = in_features
        for width in hidden:
            layers += [_init_linear(nn.Linear(size, width), math.sqrt(2)), nn.Tanh()]
            size = width
        self.body = nn.Sequential(*layers)
        self.features = size

    def forward(self, obs: Tensor) -> Tensor:
        return self.body(obs.to(self.body[0].weight.dtype).flatten(1))


def make_trunk(spec: dict, bf16: bool = False) -> nn.Module:
    """Build a trunk from its JSON description ``{"kind": "nature_cnn"|"mlp", ...}``; ``bf16``
    runs a CNN trunk under bfloat16 autocast (MLP trunks are too small to gain from it)."""
    kind = spec["kind"]
    shape = spec["obs_shape"]
    if kind == "nature_cnn":
        return NatureCNN(shape[0], shape[1], shape[2], spec.get("features", 512), bf16=bf16)
    if kind == "mlp":
        return MLP(math.prod(shape), tuple(spec.get("hidden", (64, 64))))
    raise ValueError(f"unknown trunk kind {kind!r}; expected 'nature_cnn' or 'mlp'")


def default_trunk_spec(obs_shape: Sequence[int], obs_dtype: str, hidden: Sequence[int] = (64, 64)) -> dict:
    """Nature CNN for image observations (uint8, 3 axes), an MLP for everything else."""
    if len(obs_shape) == 3 and obs_dtype == "uint8":
        return {"kind": "nature_cnn", "obs_shape": list(obs_shape), "features": 512}
    return {"kind": "mlp", "obs_shape": list(obs_shape), "hidden": list(hidden)}


class QNetwork(nn.Module):
    """Trunk + one Q-value per action (soft Q-learning, DQN)."""

    def __init__(self, trunk: dict, num_actions: int, bf16: bool = False):
        super().__init__()
        self.trunk = make_trunk(trunk, bf16)
        self.q = _init_linear(nn.Linear(self.trunk.features, num_actions), 1.0)

    def forward(self, obs: Tensor) -> Tensor:
        return self.q(self.trunk(obs))


class ActorCriticNetwork(nn.Module):
    """Policy logits and a state value. ``shared=True`` is A3C's network (conv layers and the
    first FC shared, two heads); ``shared=False`` gives the value its own trunk."""

    def __init__(self, trunk: dict, num_actions: int, shared: bool = True, bf16: bool = False):
        super().__init__()
        self.shared = shared
        self.trunk = make_trunk(trunk, bf16)
        self.value_trunk = None if shared else make_trunk(trunk, bf16)
        # A small gain on the policy head starts the policy near uniform (baselines' 0.01).
        self.policy = _init_linear(nn.Linear(self.trunk.features, num_actions), 0.01)
        self.value = _init_linear(nn.Linear(self.trunk.features, 1), 1.0)

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(logits [N, A], values [N])``."""
        features = self.trunk(obs)
        value_features = features if self.value_trunk is None else self.value_trunk(obs)
        return self.policy(features), self.value(value_features).squeeze(-1)
