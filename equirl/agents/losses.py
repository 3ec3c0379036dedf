"""The paper's maths as pure functions.

Schulman, Chen & Abbeel, "Equivalence Between Policy Gradients and Soft Q-Learning"
(arXiv:1704.06440, v4). Section and equation numbers below refer to that paper; where the
paper's display equations were rebuilt from its prose (see ../shared/docs/paper-spec.md) the
docstring says so.

Conventions used everywhere in this file:

* ``tau`` is the temperature, ``gamma`` the discount.
* The reference policy pi-bar is described by one number, ``log_ref``: the log-probability it
  gives every action. ``log_ref = -log|A|`` is the uniform reference of the paper's KL penalty;
  ``log_ref = 0`` is the counting measure, which turns the KL penalty into the usual entropy
  bonus (``KL = -H``). The two differ by the constant ``tau * log|A|`` per step (§3, §6.2).
* Tensors are time-major: ``[T, B]`` for a segment of T steps from B environments.
* Every quantity that the paper holds constant (targets, advantages, sampling weights) is
  detached here, explicitly, so a caller cannot forget the stop-gradient.

Only torch is imported: this module knows nothing about environments, networks or agents.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def log_reference(num_actions: int, reference: str) -> float:
    """``log pi-bar(a)`` for a reference given by name: ``"uniform"`` (KL penalty, §3) or
    ``"none"`` (counting measure: the KL penalty becomes an entropy bonus, §6.2)."""
    if reference == "uniform":
        return -math.log(num_actions)
    if reference == "none":
        return 0.0
    raise ValueError(f"reference must be 'uniform' or 'none', got {reference!r}")


def soft_value(q: Tensor, tau: float, log_ref: float) -> Tensor:
    """``V_Q(s) = tau * log E_{a~pi-bar} exp(Q(s,a)/tau)`` over the last axis (§3.4, Eq. 11).

    With ``log_ref = -log|A|`` this is the KL-penalty backup ``tau*lse(Q/tau) - tau*log|A|``;
    with ``log_ref = 0`` it is the entropy-bonus backup ``tau*lse(Q/tau)`` (§6.2)."""
    return tau * torch.logsumexp(q / tau, dim=-1) + tau * log_ref


def hard_value(q: Tensor) -> Tensor:
    """``max_a Q(s,a)``: the tau -> 0 limit of :func:`soft_value`, standard DQN's backup."""
    return q.max(dim=-1).values


def boltzmann_log_policy(q: Tensor, tau: float) -> Tensor:
    """``log pi^B_Q(a|s) = log pi-bar(a) + (Q(s,a) - V_Q(s))/tau`` (§3.4, Eq. 12).

    For a reference that is the same for every action this is ``log_softmax(Q/tau)``."""
    return F.log_softmax(q / tau, dim=-1)


def kl_to_reference(log_pi: Tensor, log_ref: float) -> Tensor:
    """``KL[pi || pi-bar](s) = sum_a pi(a|s) (log pi(a|s) - log pi-bar(a))`` (§3).

    With ``log_ref = 0`` it is minus the entropy."""
    return (log_pi.exp() * (log_pi - log_ref)).sum(dim=-1)


def nstep_soft_targets(
    rewards: Tensor,
    kl: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    next_values: Tensor,
    gamma: float,
    tau: float,
) -> Tensor:
    """n-step soft Q targets over a segment, all held constant (§3.5, rebuilt; paper-spec §1.3).

    ``y_t = r_t + sum_{d>=1} gamma^d (r_{t+d} - tau*KL_{t+d}) + gamma^k V(s_{t+k})``

    where the window runs to the end of the segment or to the end of the episode, whichever
    comes first. Note the first KL term is absent: the paper's Q omits it (Eqs. 24-26).

    Args (all ``[T, B]``):
        rewards: r_t.
        kl: ``KL[pi || pi-bar](s_t)`` of the policy the actions were drawn from (``-H`` for an
            entropy bonus; zeros give plain n-step returns, i.e. the "naive" estimator).
        terminated: the episode ended at step t; nothing is bootstrapped after it.
        truncated: the episode was cut at step t (time limit); the value of the state it was
            cut in is bootstrapped, and nothing after it in the segment is used.
        next_values: ``V(s'_t)``, the value of the state step t led to (the final observation
            when the episode was truncated there). Only read where step t is the last of the
            segment or truncated; other entries are ignored.
    Returns:
        ``y [T, B]``, detached.
    """
    shapes = {rewards.shape, kl.shape, terminated.shape, truncated.shape, next_values.shape}
    if len(shapes) != 1 or rewards.dim() != 2:
        raise ValueError(f"nstep_soft_targets wants equal [T, B] tensors, got shapes {shapes}")
    rewards, kl, next_values = rewards.detach(), kl.detach(), next_values.detach()
    not_terminated = 1.0 - terminated.to(rewards.dtype)
    cut = truncated.bool()
    steps = rewards.shape[0]
    targets = torch.empty_like(rewards)
    # ``tail`` is the soft value of s'_t: what follows step t within the window.
    tail = next_values[steps - 1]
    for t in range(steps - 1, -1, -1):
        if t < steps - 1:
            continued = rewards[t + 1] - tau * kl[t + 1] + gamma * not_terminated[t + 1] * tail
            tail = torch.where(cut[t], next_values[t], continued)
        targets[t] = rewards[t] + gamma * not_terminated[t] * tail
    return targets


def soft_q_loss(q_taken: Tensor, targets: Tensor) -> Tensor:
    """``mean 1/2 (Q(s_t,a_t) - y_t)^2`` with the target held constant (§3.5)."""
    return 0.5 * (q_taken - targets.detach()).pow(2).mean()


def policy_gradient_loss(log_pi_taken: Tensor, advantages: Tensor) -> Tensor:
    """``-mean log pi(a_t|s_t) * A_t``: its gradient is minus the score-function policy
    gradient with the advantage held constant (§3.6)."""
    return -(log_pi_taken * advantages.detach()).mean()


def kl_penalty_loss(kl: Tensor, tau: float) -> Tensor:
    """``tau * mean KL[pi || pi-bar](s_t)``: the analytic current-step entropy term of the
    entropy-regularized policy gradient, ``-tau * grad KL_t`` in Eq. 48-50."""
    return tau * kl.mean()


def value_loss(values: Tensor, value_targets: Tensor) -> Tensor:
    """``mean 1/2 (V(s_t) - V-hat_t)^2`` with the target held constant (§3.6).

    The 1/2 matters: the paper's ``c = 1/tau`` is only right with it (paper-spec §2.3).
    Stable-Baselines3 and OpenAI baselines use ``mean (V - R)^2`` without it."""
    return 0.5 * (values - value_targets.detach()).pow(2).mean()


def entropy_pg_advantages(
    targets: Tensor, values: Tensor, kl: Tensor, tau: float
) -> Tensor:
    """``Delta_t = y_t - tau*KL_t - V(s_t) = sum_d gamma^d delta_{t+d}`` (§3.6, Eq. 36), detached.

    With targets built with the KL terms (:func:`nstep_soft_targets` at the same tau) this is
    the "proper" advantage (Eq. 80); with targets built with ``tau = 0`` and ``kl = 0`` it is
    the "naive" one (Eq. 48)."""
    return (targets - tau * kl - values).detach()


def sampled_soft_advantages(
    targets: Tensor, values: Tensor, log_pi_taken: Tensor, tau: float, log_ref: float
) -> Tensor:
    """``A-hat_t = y_t - Q(s_t,a_t) = y_t - V(s_t) - tau*log(pi/pi-bar)(a_t|s_t)``, detached.

    The per-sample exact form (paper-spec §2.3.3): the current-step KL is the sampled
    log-ratio inside the return instead of the analytic KL gradient. An actor-critic with this
    advantage for both policy and value makes exactly the soft-Q gradient per sample."""
    return (targets - values - tau * (log_pi_taken - log_ref)).detach()


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad * ctx.scale, None


def scale_gradient(x: Tensor, scale: float) -> Tensor:
    """``x`` in value, ``scale * grad x`` in gradient."""
    return _ScaleGradient.apply(x, scale)


def dueling_soft_q(
    values: Tensor,
    log_pi: Tensor,
    tau: float,
    log_ref: float,
    value_scale: float = 1.0,
    advantage_scale: float = 1.0,
) -> Tensor:
    """``Q(s,a) = V(s) + tau*log(pi/pi-bar)(a|s)`` with optional per-stream gradient scales (§6.3).

    The paper's A3C-matched Q-learner scales the gradient into the advantage stream
    ``tau*log pi`` by ``1/tau`` and into the value stream by ``c = 0.5`` (the text's "1/gamma" is
    read as 1/tau, the only factor that cancels the tau on the policy term; paper-spec §4.3).
    Then the soft-Q gradient is, per sample, ``-(grad log pi(a_t) + c grad V)(y_t - Q)``: the
    gradient of A2C with policy weight 1, value weight c and entropy coefficient tau.

    Args: ``values [...]``, ``log_pi [..., A]``. Returns ``Q [..., A]``.
    """
    v = scale_gradient(values, value_scale) if value_scale != 1.0 else values
    adv = log_pi - log_ref
    if advantage_scale != 1.0:
        adv = scale_gradient(adv, advantage_scale)
    return v.unsqueeze(-1) + tau * adv
