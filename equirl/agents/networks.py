"""Networks: nn.Modules only. Constructor arguments are plain numbers and strings, so a network
is fully described by the JSON ``network`` block of a run's config.json (see :func:`build_network`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


def _init_linear(layer: nn.Linear | nn.Conv2d, gain: float) -> nn.Module:
    # Orthogonal initialisation, as in OpenAI baselines' A2C: the published Atari scores were
    # obtained with it, and it keeps the initial policy close to uniform when gain is small.
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class TrunkActivations(NamedTuple):
    """What a gradient-free NatureCNN forward computed that its backward needs."""

    pixels: Tensor  # the scaled input of conv1
    conv1: Tensor  # ReLU output of conv1 (conv2's input)
    conv2: Tensor  # ReLU output of conv2 (conv3's input)
    conv3: Tensor  # ReLU output of conv3 (the FC layer's input), channels-last like the others
    features: Tensor  # ReLU output of the FC layer


def _fc_on_onednn(weight: Tensor) -> bool:
    """Whether the trunk's FC layer runs as a convolution (see :class:`_FcAsConv`): float32 on
    CPU, where torch convolves through oneDNN (unless switched off), outside autocast. GPUs,
    float64 and bf16 autocast keep ``F.linear``."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and torch.backends.mkldnn.is_available() \
        and torch.backends.mkldnn.enabled and not torch.is_autocast_enabled("cpu")


def _hwc(maps: Tensor) -> Tensor:
    """[N, C, H, W] as N rows in channels-last order (h, w, c): a view of a channels-last tensor."""
    return maps.permute(0, 2, 3, 1).flatten(1)


def _from_hwc(rows: Tensor, chw: Sequence[int]) -> Tensor:
    """The inverse of :func:`_hwc`: N rows in (h, w, c) order as an [N, C, H, W] channels-last view."""
    channels, height, width = chw
    return rows.view(rows.shape[0], height, width, channels).permute(0, 3, 1, 2)


def _fc_input_grad(grad: Tensor, inputs: Tensor, kernel: Tensor) -> Tensor:
    """Gradient of :class:`_FcAsConv` with respect to its [N, C, H, W] input (channels-last)."""
    return torch.ops.aten.convolution_backward(
        grad.view(*grad.shape, 1, 1), inputs, kernel, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
        [True, False, False])[0]


# oneDNN's matrix product (the op torch's compiler calls for linear layers on CPU), where this
# torch build has it: x86 builds with oneDNN do. Taken once, so a build without it falls back.
_ONEDNN_LINEAR = getattr(torch.ops.mkldnn, "_linear_pointwise", None) if torch.backends.mkldnn.is_available() else None


def _fc_weight_grad(grad: Tensor, inputs: Tensor) -> Tensor:
    """Gradient of :class:`_FcAsConv` with respect to its [out, C, H, W] kernel (channels-last, as
    the weight is held): ``grad.T @ rows`` with the input's rows in (h, w, c) order, in oneDNN,
    not MKL (MKL's mm ran at 0.5-0.8x oneDNN's speed on the AMD EPYC hosts: benchmarks/fc_layer.py).
    As oneDNN's matrix product of ``grad.T`` with the rows' transpose (a strided view, no copy):
    in the soft-q loop 0.35 ms at 32 rows against 0.61 as :func:`_fc_weight_grad_as_conv` (the
    fallback), with the same values, bit for bit, for the Nature CNN's 512 outputs at 1-256 rows
    (BENCHMARKS.md)."""
    if _ONEDNN_LINEAR is None:
        return _fc_weight_grad_as_conv(grad, inputs)
    flat = _hwc(inputs)  # a view: conv3's output is channels-last
    return _from_hwc(_ONEDNN_LINEAR(grad.t(), flat.t(), None, "none", [], ""), inputs.shape[1:])


def _fc_weight_grad_as_conv(grad: Tensor, inputs: Tensor) -> Tensor:
    """:func:`_fc_weight_grad` where torch lacks oneDNN's matrix product, as a 1x1 convolution of
    one image whose H*W*C pixels have the N rows as channels (also in oneDNN)."""
    rows, out = grad.shape
    flat = _hwc(inputs)
    kernel_rows = F.conv2d(flat.view(1, rows, 1, flat.shape[1]), grad.t().contiguous().view(out, rows, 1, 1))
    return _from_hwc(kernel_rows.view(out, -1), inputs.shape[1:])


def _fc_as_conv(maps: Tensor, kernel: Tensor, bias: Tensor | None) -> Tensor:
    """The FC layer's forward as a convolution whose kernel covers the whole map (see
    :class:`_FcAsConv`): [N, out] rows."""
    return F.conv2d(maps, kernel, bias).flatten(1)


class _FcAsConv(torch.autograd.Function):
    """The FC layer on conv3's [N, C, H, W] output as a convolution whose kernel (the weight, held
    as [out, C, H, W] channels-last: :class:`FcOverMap`) covers the whole map; its backward in
    oneDNN too (the input gradient as a convolution's, the weight gradient as oneDNN's matrix
    product). The same maths as ``linear(x.flatten(1), weight.flatten(1))``, summed in another
    order.

    Why: torch's CPU ``linear``/``mm`` call MKL's sgemm, which on the AMD EPYC hosts ran at
    about half the speed of oneDNN's convolutions (190 against 360-450 GFLOP/s on 2 cores: AVX2
    speed, not AVX512's). As convolutions, the FC layer's forward and its two gradients took
    about half the time (BENCHMARKS.md; not measured on an Intel host)."""

    @staticmethod
    def forward(ctx, inputs, weight, bias):
        # Saved, so a backward after the weight changed in place raises, as it does for linear.
        ctx.save_for_backward(inputs, weight)
        return _fc_as_conv(inputs, weight, bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        inputs, weight = ctx.saved_tensors
        grad_inputs = _fc_input_grad(grad, inputs, weight) if ctx.needs_input_grad[0] else None
        grad_weight = _fc_weight_grad(grad, inputs) if ctx.needs_input_grad[1] else None
        grad_bias = grad.sum(0) if ctx.needs_input_grad[2] else None
        return grad_inputs, grad_weight, grad_bias


class FcOverMap(nn.Module):
    """The Nature CNN's FC layer over conv3's [N, C, H, W] map: what ``nn.Flatten`` then
    ``nn.Linear`` compute, with the weight held as a channels-last [out, C, H, W] kernel.

    State dicts, and so files, hold the weight as nn.Linear's [out, C*H*W] in nn.Flatten's column
    order: checkpoints are those of Flatten + Linear, before and after this layout. Why it is held
    so: on CPU in float32 the layer runs as a convolution (:class:`_FcAsConv`) whose kernel is
    this very tensor; a kernel copied from a Linear weight after each update cost 0.4 ms of a
    ~14 ms soft-q update (BENCHMARKS.md). Elsewhere (GPUs, float64, bf16 autocast) it runs
    ``linear`` on the rows of map and weight in (h, w, c) order, views of both."""

    def __init__(self, map_shape: Sequence[int], out_features: int, gain: float):
        super().__init__()
        linear = _init_linear(nn.Linear(math.prod(map_shape), out_features), gain)  # nn.Linear's init
        self.in_features, self.out_features = linear.in_features, out_features
        self.weight = nn.Parameter(linear.weight.detach().view(out_features, *map_shape)
                                   .contiguous(memory_format=torch.channels_last))
        self.bias = linear.bias
        self.register_state_dict_post_hook(_fc_weight_as_linear)
        self.register_load_state_dict_pre_hook(_fc_weight_as_kernel)

    def forward(self, maps: Tensor) -> Tensor:
        if _fc_on_onednn(self.weight):
            if not torch.is_grad_enabled():
                # _FcAsConv's forward, without an autograd Function's bookkeeping (~0.05 ms a
                # call in a soft-q step) in the passes that keep no graph: acting, targets.
                return _fc_as_conv(maps, self.weight, self.bias)
            return _FcAsConv.apply(maps, self.weight, self.bias)
        return F.linear(_hwc(maps), _hwc(self.weight), self.bias)


def _fc_weight_as_linear(module: FcOverMap, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    key = prefix + "weight"
    state_dict[key] = state_dict[key].reshape(module.out_features, module.in_features)


def _fc_weight_as_kernel(module: FcOverMap, state_dict: dict, prefix: str, *args) -> None:
    # An [out, C*H*W] weight (nn.Flatten's column order) viewed as the [out, C, H, W] kernel;
    # load_state_dict then copies it into the channels-last parameter. Other shapes are left for
    # load_state_dict to report.
    key = prefix + "weight"
    value = state_dict.get(key)
    if isinstance(value, Tensor) and tuple(value.shape) == (module.out_features, module.in_features):
        state_dict[key] = value.reshape(module.weight.shape)


class _TrunkBackward(torch.autograd.Function):
    """Nature CNN's forward replayed from recorded activations: forward returns the recorded
    features, backward is the trunk's backward, by the kernels autograd itself would call for
    these layers (threshold_backward for ReLU, :class:`_FcAsConv`'s or mm for the FC layer,
    convolution_backward), so the gradient is the one a fresh forward would give
    (tests/test_acting_replay.py). A bf16 trunk's record is its bfloat16 activations: the
    backward then runs on them with the bfloat16 weights they were computed with and returns
    float32 gradients, as autocast's backward does (the casts' backward included), bit for bit
    (tests/test_soft_q_pipeline.py).

    Why: an on-policy update's forward pass recomputes exactly what acting computed with the
    same weights moments before. Skipping it took an a3c update's learning from ~32 to ~22 ms
    of ~58 on a 2-core CPU (BENCHMARKS.md)."""

    @staticmethod
    def forward(ctx, layers, bf16_weights, pixels, conv1, conv2, conv3, features, *params):
        # bf16_weights: the bfloat16 copies (weight, bias, ...) the recorded pass ran with, or None.
        ctx.layers, ctx.bf16_weights = layers, bf16_weights
        ctx.fc_as_conv = bf16_weights is None and _fc_on_onednn(params[6])
        ctx.save_for_backward(pixels, conv1, conv2, conv3, features, *params)
        if bf16_weights is not None:
            return features.float()  # what autocast's forward returns to the float32 head
        return features  # returned as a view of the recorded buffer (autograd does so for an input): no copy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_features):
        pixels, conv1, conv2, conv3, features, *params = ctx.saved_tensors
        c1, c2, c3, _ = ctx.layers
        weights = (params if ctx.bf16_weights is None else ctx.bf16_weights)[0::2]
        grad = grad_features if ctx.bf16_weights is None else grad_features.to(torch.bfloat16)
        grad = torch.ops.aten.threshold_backward(grad, features, 0)
        if ctx.fc_as_conv:
            grad_fc = (_fc_weight_grad(grad, conv3), grad.sum(0))
            grad = _fc_input_grad(grad, conv3, weights[3])
        else:  # what F.linear's backward computes on FcOverMap's (h, w, c) rows
            grad_fc = (_from_hwc(grad.t().mm(_hwc(conv3)), conv3.shape[1:]), grad.sum(0))
            grad = _from_hwc(grad.mm(_hwc(weights[3])), conv3.shape[1:])
        grads = [grad_fc]
        for conv, inp, out, weight in ((c3, conv2, conv3, weights[2]), (c2, conv1, conv2, weights[1]),
                                       (c1, pixels, conv1, weights[0])):
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
            grad, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, inp, weight, [weight.shape[0]], conv.stride, conv.padding, conv.dilation,
                False, [0, 0], conv.groups, [conv is not c1, True, True])
            grads.append((grad_w, grad_b))
        (gf_w, gf_b), (g3_w, g3_b), (g2_w, g2_b), (g1_w, g1_b) = grads
        grads = (g1_w, g1_b, g2_w, g2_b, g3_w, g3_b, gf_w, gf_b)
        if ctx.bf16_weights is not None:  # the backward of autocast's casts of the float32 weights
            grads = tuple(g.to(p.dtype) for g, p in zip(grads, params))
        return (None,) * 7 + grads


def _conv_out_hw(height_width: Sequence[int], conv: nn.Conv2d) -> tuple[int, int]:
    return tuple((size + 2 * pad - dil * (k - 1) - 1) // stride + 1 for size, pad, dil, k, stride in
                 zip(height_width, conv.padding, conv.dilation, conv.kernel_size, conv.stride))


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
        )
        with torch.no_grad():
            self._conv3_shape = tuple(self.convs(torch.zeros(1, in_channels, height, width)).shape[1:])
        self.fc = nn.Sequential(FcOverMap(self._conv3_shape, features, relu_gain), nn.ReLU())
        self.features = features
        self._height_width = (height, width)
        # Channels-last is the layout oneDNN (CPU) and cuDNN convolve fastest: a quarter off the
        # forward+backward of a CPU update (BENCHMARKS.md). The same maths; files store plain
        # contiguous tensors (hub/format.py), so weights load into either layout. (FcOverMap
        # holds its weight channels-last already.)
        self.convs.to(memory_format=torch.channels_last)
        # bf16 weights for gradient-free forwards (see _bf16_layers). Plain attributes, not
        # buffers or submodules: never saved to a file or a state dict.
        self._layers = tuple(m for m in self.convs if isinstance(m, nn.Conv2d)) + (self.fc[0],)
        self._bf16_cache: tuple | None = None

    def _pixels(self, obs: Tensor, out: Tensor | None = None) -> Tensor:
        # Pixels arrive as uint8 and are scaled here, so observations move to the device once,
        # at a quarter of the float32 size.
        # Reordered to channels-last while still uint8 (a quarter of the bytes), then converted
        # and scaled in place: one float pass instead of three. ``out``: write them there.
        if obs.dim() == 4 and len(obs) >= 16 and obs.shape[1] <= 4 and obs.is_contiguous():
            # Frame stacks interleaved by torch.stack: 0.13 ms for 32 stacks of 4 against 0.20
            # for .contiguous(channels_last) (not below ~16 stacks: 0.037 against 0.023 for 4).
            obs = torch.stack(obs.unbind(1), dim=-1).permute(0, 3, 1, 2)
        elif obs.dim() == 4:
            obs = obs.contiguous(memory_format=torch.channels_last)
        if out is not None:
            return out.copy_(obs).div_(255.0)
        # Under bf16 the pixels go straight to bfloat16 (0..255 are exact in it): the scaled
        # float32 copy that autocast would round to bfloat16 anyway is never made.
        x = obs.to(torch.bfloat16 if self.bf16 and obs.dtype == torch.uint8 else self.fc[0].weight.dtype)
        return x.div_(255.0) if x is not obs else x / 255.0

    def forward(self, obs: Tensor) -> Tensor:
        x = self._pixels(obs)
        if not self.bf16:
            return self._fc_relu(self.convs(x))
        if not torch.is_grad_enabled():
            return self._forward_bf16_weights(x)
        # bfloat16 autocast of the convolutions and the FC layer only (the heads, losses, weights
        # and optimizer stay float32): ~1.7x faster forward+backward on CPUs with AMX/AVX512-BF16
        # (BENCHMARKS.md). bfloat16 keeps float32's exponent range, so no loss scaling is needed.
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            features = self.fc(self.convs(x))
        return features.float()

    def _fc_relu(self, conv3: Tensor, out: Tensor | None = None) -> Tensor:
        """ReLU(FC(conv3)), into ``out`` if given."""
        features = self.fc[0](conv3)
        # F.relu under autograd: its backward (threshold_backward, zero at 0) is the replay's.
        return F.relu(features) if out is None else torch.clamp_min(features, 0, out=out)

    def holds_activations(self, buffers: TrunkActivations | None, rows: int, like: Tensor) -> bool:
        """Whether ``buffers`` are :meth:`activation_buffers` of ``rows`` rows for this trunk's
        weights on ``like``'s device (else make new ones)."""
        return buffers is not None and len(buffers.features) == rows and buffers.pixels.device == like.device \
            and buffers.pixels.dtype == self._activation_dtype()

    def _activation_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.bf16 else self.fc[0].weight.dtype

    def activation_buffers(self, rows: int, like: Tensor) -> TrunkActivations:
        """Uninitialised storage for ``rows`` rows of activations, in the layouts the forward
        produces them (channels-last convolutions), on ``like``'s device."""
        c1, c2, _, fc = self._layers
        hw1 = _conv_out_hw(self._height_width, c1)
        hw2 = _conv_out_hw(hw1, c2)

        def empty(*shape: int, channels_last: bool = False) -> Tensor:
            return torch.empty(shape, device=like.device, dtype=self._activation_dtype(),
                               memory_format=torch.channels_last if channels_last else torch.contiguous_format)

        return TrunkActivations(empty(rows, c1.in_channels, *self._height_width, channels_last=True),
                                empty(rows, c1.out_channels, *hw1, channels_last=True),
                                empty(rows, c2.out_channels, *hw2, channels_last=True),
                                empty(rows, *self._conv3_shape, channels_last=True), empty(rows, fc.out_features))

    @torch.no_grad()
    def forward_recorded(self, obs: Tensor, out: TrunkActivations) -> Tensor:
        """:meth:`forward` without gradient, writing the activations its backward needs into
        ``out`` (rows of :meth:`activation_buffers`), so that a later :meth:`replay` runs that
        backward without running the forward again. The same operations and values as
        ``forward`` (ReLU is clamp_min(x, 0) in aten), written in place: fresh tensors kept
        alive for the update, then concatenated, cost more than the forward. A bf16 trunk
        records its bfloat16 activations (the gradient-free forward's, which are autocast's)."""
        x = self._pixels(obs, out.pixels)
        if self.bf16:
            return self._forward_bf16_weights(x, out)
        c1, c2, c3, _ = self._layers
        h1 = torch.clamp_min(c1(x), 0, out=out.conv1)
        h2 = torch.clamp_min(c2(h1), 0, out=out.conv2)
        h3 = torch.clamp_min(c3(h2), 0, out=out.conv3)
        return self._fc_relu(h3, out.features)

    def replay(self, recorded: TrunkActivations) -> Tensor:
        """The recorded features as a tensor that carries gradient to this trunk's weights:
        what ``forward`` on the same observations with the same weights returns, with the
        forward's arithmetic skipped. The caller makes sure the weights have not changed since
        recording (see ActorCriticNetwork.forward_replayed)."""
        params = [p for layer in self._layers for p in (layer.weight, layer.bias)]
        bf16_weights = tuple(t for pair in self._bf16_layers() for t in pair) if self.bf16 else None
        return _TrunkBackward.apply(self._layers, bf16_weights, *recorded, *params)

    def _forward_bf16_weights(self, x: Tensor, out: TrunkActivations | None = None) -> Tensor:
        """What the autocast forward computes, bit for bit, with the weights cast once per
        weight update instead of once per call. Acting runs this (no gradient): autocast would
        re-cast all weights, the 1.6M-parameter FC above all, on every step; this is 27% off a
        16-frame forward and 42% off a 1-frame one on CPU (BENCHMARKS.md). ``out``: write the
        activations there (:meth:`forward_recorded`)."""
        *convs, fc = self._bf16_layers()
        outs = (None,) * 4 if out is None else out[1:]
        for (weight, bias), conv, dst in zip(convs, self._layers, outs):
            x = torch.clamp_min(F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation), 0, out=dst)
        weight, bias = fc  # FcOverMap's, channels-last: linear on (h, w, c) rows as it runs it
        return torch.clamp_min(F.linear(_hwc(x), _hwc(weight), bias), 0, out=outs[3]).float()

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

        # Activation storage of the last recorded forward (forward_recorded): a plain attribute,
        # never saved to a file or a state dict.
        self._activations: TrunkActivations | None = None
        self._recordings = 0

    def forward(self, obs: Tensor) -> Tensor:
        return self.q(self.trunk(obs))

    # ---- acting and the next update's forward in one pass -------------------------------------
    @property
    def recordable(self) -> bool:
        """Whether a forward can record its trunk activations (Nature CNNs)."""
        return isinstance(self.trunk, NatureCNN)

    @torch.no_grad()
    def forward_recorded(self, obs: Tensor) -> tuple[Tensor, QRecord | None]:
        """``forward`` without gradient, keeping the trunk activations that
        :meth:`forward_replayed` learns from (record None where the trunk cannot record). The
        storage is reused: a new recording invalidates the previous one."""
        if not self.recordable:
            return self(obs), None
        acts = self._activations
        if not self.trunk.holds_activations(acts, len(obs), obs):
            self._activations = acts = self.trunk.activation_buffers(len(obs), obs)
        self._recordings += 1
        q = self.q(self.trunk.forward_recorded(obs, acts))
        return q, QRecord(weight_versions(self), self._recordings)

    def forward_replayed(self, record: QRecord | None, rows: slice) -> Tensor | None:
        """``forward`` with gradient on ``rows`` of the recorded pass, without running the trunk
        again; None (run ``forward``) unless ``record`` is the latest recording and the weights
        are as they were then (an optimizer step, a ``load_state_dict`` or any other in-place
        change bumps a weight's version counter)."""
        if record is None or record.number != self._recordings or record.versions != weight_versions(self):
            return None
        return self.q(self.trunk.replay(TrunkActivations(*(t[rows] for t in self._activations))))


class QRecord(NamedTuple):
    """Which recorded pass of a QNetwork this is, and the weights (storage, version) it used."""

    versions: tuple
    number: int


def weight_versions(module: nn.Module) -> tuple:
    """Each parameter's storage and version counter: equal while no weight changed in place."""
    return tuple((p.data_ptr(), p._version) for p in _parameters_of(module, []))


def _parameters_of(module: nn.Module, out: list) -> list:
    # module.parameters() without its generators and de-duplication: 6 us instead of 12 for the
    # Nature CNN Q-network, called four times a soft-q step (42 us each in the loop). A shared
    # parameter is listed twice, which a comparison of two such lists does not mind.
    out.extend(p for p in module._parameters.values() if p is not None)
    for child in module._modules.values():
        if child is not None:
            _parameters_of(child, out)
    return out


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
        # Activation storage of the segment being acted (forward_recorded): a plain attribute,
        # never saved to a file or a state dict.
        self._recording: _Recording | None = None
        self._segments = 0

    def forward(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(logits [N, A], values [N])``."""
        features = self.trunk(obs)
        value_features = features if self.value_trunk is None else self.value_trunk(obs)
        return self.policy(features), self.value(value_features).squeeze(-1)

    # ---- acting once, learning from the same pass -------------------------------------------
    @property
    def recordable(self) -> bool:
        """Whether acting can record its trunk activations (Nature CNNs)."""
        return isinstance(self.trunk, NatureCNN)

    @torch.no_grad()
    def forward_recorded(self, obs: Tensor, step: int, steps: int, offset: int = 0,
                         total: int | None = None) -> tuple[Tensor, Tensor, ActingRecord | None]:
        """``forward`` without gradient for step ``step`` of a ``steps``-step segment, keeping the
        trunk activations :meth:`forward_replayed` learns from (record None where the trunk
        cannot record). ``obs`` are rows ``offset ..`` of the step's ``total`` (default: all of
        them); a step's rows come in order, in one call or several (envs acted group by group).
        Step 0 at offset 0 starts a new segment: the storage of the previous one is reused
        (preallocated, ~8 ms a rollout less on CPU) and its records become invalid."""
        rows = len(obs)
        total = rows if total is None else total
        if not self.recordable or not 0 <= step < steps or not 0 <= offset <= total - rows:
            return (*self(obs), None)
        rec = self._recording
        if step == 0 and offset == 0:
            if rec is None or rec.steps != steps or rec.rows != total \
                    or not self.trunk.holds_activations(rec.trunk, steps * total, obs):
                buffers = [None if t is None else t.activation_buffers(steps * total, obs)
                           for t in (self.trunk, self.value_trunk)]
                rec = _Recording(steps, total, *buffers)
            self._segments += 1  # numbered per network, so no two segments share a number
            rec.segment = self._segments
            rec.next_step = rec.next_row = 0
            self._recording = rec
        if rec is None or rec.rows != total or rec.steps != steps or (rec.next_step, rec.next_row) != (step, offset):
            return (*self(obs), None)  # rows out of order: nothing recorded for this segment
        rec.next_row += rows
        if rec.next_row == total:
            rec.next_step, rec.next_row = step + 1, 0
        part = slice(step * total + offset, step * total + offset + rows)
        features = self.trunk.forward_recorded(obs, TrunkActivations(*(t[part] for t in rec.trunk)))
        value_features = features if self.value_trunk is None else \
            self.value_trunk.forward_recorded(obs, TrunkActivations(*(t[part] for t in rec.value_trunk)))
        record = ActingRecord(weight_versions(self), rec.segment, step, offset, rows)
        return self.policy(features), self.value(value_features).squeeze(-1), record

    def forward_replayed(self, records: Sequence[ActingRecord | None], rows: int) -> tuple[Tensor, Tensor] | None:
        """``forward`` on the segment whose acting made ``records``, with gradient, without
        running the trunk again; None (run ``forward``) unless the records are the latest
        segment's, every row of every step in order (``rows`` rows a step), made with the weights
        as they are now: an optimizer step, a ``load_state_dict`` or any other in-place change
        bumps a weight's version counter."""
        rec = self._recording
        if rec is None or rec.rows != rows or rec.next_step != rec.steps:
            return None
        versions = weight_versions(self)
        step = row = 0
        for r in records:  # they must tile the segment: steps in order, rows in order within each
            if r is None or r.segment != rec.segment or (r.step, r.offset) != (step, row) or r.versions != versions:
                return None
            row += r.rows
            if row == rows:
                step, row = step + 1, 0
        if (step, row) != (rec.steps, 0):
            return None
        features = self.trunk.replay(rec.trunk)
        value_features = features if self.value_trunk is None else self.value_trunk.replay(rec.value_trunk)
        return self.policy(features), self.value(value_features).squeeze(-1)


class ActingRecord(NamedTuple):
    """Which rows of which step of which recorded segment an acting pass was, and the weights
    (storage, version) it used."""

    versions: tuple
    segment: int
    step: int
    offset: int  # first row of the step this pass acted for
    rows: int


class _Recording:
    """One segment's activation storage, reused from segment to segment."""

    def __init__(self, steps: int, rows: int, trunk: TrunkActivations, value_trunk: TrunkActivations | None):
        self.steps, self.rows, self.trunk, self.value_trunk = steps, rows, trunk, value_trunk
        self.segment = 0  # the number of the segment being written
        self.next_step = self.next_row = 0  # where the next acting pass must write
