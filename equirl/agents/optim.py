"""Optimizers as torch computes them, step for step, without two costs of torch's CPU versions.

RMSprop: without the slow square root of zeros.

On this repo's CPU the vectorised float32 square root is several times slower on inputs that
are exactly zero (or subnormal) than on ordinary numbers: 2.5-4.6 ms instead of 0.8 ms for the
Nature CNN's 512x3136 FC layer when a third of its entries are zero, which is what RMSprop's
running average holds for weights whose gradient has been zero so far (inputs behind dead ReLUs).
Taking the root of ``max(v, tiny)`` instead (tiny: the dtype's smallest normal number) changes
``sqrt(v)`` only where it is below ``sqrt(tiny)`` (1e-19 in float32), and that vanishes when
``eps`` is added: for ``eps >= 1e-10`` (float32) the step is bit-identical to
``torch.optim.RMSprop`` (tests/test_agents.py checks it).

Adam: torch's fused kernel without its copy of every channels-last gradient (see :class:`Adam`).
"""
from __future__ import annotations

import torch

from .layouts import laid_out_like, memory_view


class _StateInParameterLayout:
    """Loading gives each state tensor shaped like its parameter that parameter's memory layout.

    Why: checkpoint files hold contiguous tensors (safetensors has no strides), the Nature CNN's
    conv and FC weights are channels-last, and torch's fused Adam on CPU walks a parameter and its
    moments as flat memory, so a moment loaded in the file's layout would be applied to the wrong
    weights (after a resume the conv weights took wrong steps: tests/test_agents.py). RMSprop's
    elementwise ops are right either way, but slower on mismatched layouts.

    Checkpoints written before the FC weight was held as an [out, C, H, W] kernel
    (networks.FcOverMap) hold its state as [out, C*H*W], in the same element order: reshaped."""

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for param in group["params"]:
                state = self.state.get(param, {})
                for name, value in state.items():
                    if not isinstance(value, torch.Tensor) or value.dim() == 0:
                        continue
                    if param.dim() > 2 and tuple(value.shape) == (param.shape[0], param[0].numel()):
                        value = value.reshape(param.shape)
                    if value.shape == param.shape:
                        value = laid_out_like(param, value)
                    state[name] = value


class RMSprop(_StateInParameterLayout, torch.optim.RMSprop):
    """torch's RMSprop in its plain form (no momentum, not centred, no weight decay)."""

    def __init__(self, params, lr: float, alpha: float, eps: float):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps)
        # The denominator's storage, per parameter, reused from step to step: not state (never
        # saved). A fresh one for the 512x3136 FC layer cost ~1 ms of page faults a step.
        self._denominators: dict[torch.Tensor, torch.Tensor] = {}

    def step(self, closure=None):
        self.apply_step()

    @torch.no_grad()
    def apply_step(self) -> None:
        """:meth:`step` without torch's wrapper (hooks and a profiler record: see
        :func:`run_step`)."""
        for group in self.param_groups:
            lr, alpha, eps = group["lr"], group["alpha"], group["eps"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:  # the same state torch keeps, so checkpoints load either way
                    state["step"] = torch.zeros((), dtype=torch.float64 if torch.get_default_dtype() == torch.float64
                                                else torch.float32)
                    state["square_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["step"] += 1
                square_avg = state["square_avg"]
                square_avg.mul_(alpha).addcmul_(param.grad, param.grad, value=1 - alpha)
                avg = self._denominators.get(param)
                if avg is None or avg.shape != param.shape or avg.dtype != param.dtype or avg.device != param.device:
                    avg = self._denominators[param] = torch.empty_like(square_avg)
                torch.clamp_min(square_avg, torch.finfo(square_avg.dtype).tiny, out=avg).sqrt_().add_(eps)
                param.addcdiv_(param.grad, avg, value=-lr)


class Adam(_StateInParameterLayout, torch.optim.Adam):
    """torch's fused Adam (one kernel over all tensors), given every tensor as a flat view of its
    memory, for channels-last weights.

    torch's fused CPU kernel walks a parameter, its gradient and its moments as flat memory, and
    first makes a contiguous copy of any gradient that is not contiguous, then never uses it.
    Channels-last gradients are not contiguous: the conv weights' and the Nature CNN's 6 MB FC
    weight's (held channels-last: networks.FcOverMap), which torch's optimizer would copy every
    step for nothing (0.4-0.5 ms). Handed flat views of tensors laid out alike, the kernel
    computes the same values, element for element, without the copies (tests/test_agents.py
    checks it against ``torch.optim.Adam(fused=True)``, bit for bit). The moments must be laid
    out like their parameter for that: see :class:`_StateInParameterLayout`."""

    def __init__(self, params, lr: float, eps: float):
        super().__init__(params, lr=lr, eps=eps, fused=True)
        # Flat views of each parameter and its moments, made once (~0.1 ms a step of view
        # making otherwise): {param: (param view, exp_avg, exp_avg_sq, their views)}, remade
        # when the state's tensors are replaced (load_state_dict) or the parameter's memory is.
        self._views: dict[torch.Tensor, tuple] = {}

    def __setstate__(self, state: dict) -> None:
        # copy.deepcopy and pickle go through torch's __getstate__, which keeps only defaults,
        # state and param_groups: the copy starts with an empty cache (its parameters are new).
        super().__setstate__(state)
        self._views = {}

    def _flat(self, param: torch.Tensor, state: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cached = self._views.get(param)
        if cached is None or cached[1] is not state["exp_avg"] or cached[2] is not state["exp_avg_sq"] \
                or cached[0].data_ptr() != param.data_ptr():
            # (moments have the parameter's layout: made so in step, or by load_state_dict)
            cached = self._views[param] = (memory_view(param), state["exp_avg"], state["exp_avg_sq"],
                                           memory_view(state["exp_avg"]), memory_view(state["exp_avg_sq"]))
        return cached[0], cached[3], cached[4]

    def step(self, closure=None):
        self.apply_step()

    @torch.no_grad()
    def apply_step(self) -> None:
        """:meth:`step` without torch's wrapper (hooks and a profiler record: see
        :func:`run_step`)."""
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps, stepped = [], [], [], [], [], []
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:  # the state torch keeps for fused Adam, so checkpoints load either way
                    state["step"] = torch.zeros((), dtype=torch.float32, device=param.device)
                    state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                flat_param, flat_avg, flat_avg_sq = self._flat(param, state)
                stepped.append(param)
                params.append(flat_param)
                grads.append(memory_view(laid_out_like(param, param.grad)))
                exp_avgs.append(flat_avg)
                exp_avg_sqs.append(flat_avg_sq)
                steps.append(state["step"])
            if not params:
                continue
            if group["amsgrad"] or group["maximize"]:  # e.g. from a checkpoint's param_groups
                raise ValueError("equirl's Adam runs plain Adam: amsgrad and maximize are not supported")
            beta1, beta2 = group["betas"]
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(params, grads, exp_avgs, exp_avg_sqs, [], steps, lr=group["lr"], beta1=beta1,
                               beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"], amsgrad=False,
                               maximize=False)
            # The fused kernel writes the parameters without bumping their version counters, as
            # every other in-place update does. Bump them, so that what relies on the counters
            # sees the step: autograd's stale-graph checks, acting's records of the weights they
            # used, NatureCNN's cached bf16 weights.
            torch.autograd.graph.increment_version(stepped)


def run_step(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.step()``; equirl's optimizers without torch's wrapper around it.

    torch wraps every optimizer's ``step`` (and ``zero_grad``) in a profiler record and its
    hook calls, which cost ~0.1 ms each in a soft-q training step (against 0.01 ms bare,
    BENCHMARKS.md). equirl registers no optimizer hooks; one registered by a user is not called
    for equirl's own optimizers."""
    apply_step = getattr(optimizer, "apply_step", None)
    if apply_step is None:
        optimizer.step()
    else:
        apply_step()


def clear_gradients(optimizer: torch.optim.Optimizer) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` without torch's profiler record (see :func:`run_step`)."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            param.grad = None

