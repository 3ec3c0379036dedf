"""What the three on-policy agents (a3c, entropy-pg, matched-q) share: the policy/value
network, the optimizer, and the forward pass over a rollout that yields everything their losses
need. Each agent's file then says only which loss it minimises.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import losses
from .base import Agent, ObsInfo, Rollout
from .networks import ActingRecord, ActorCriticNetwork
from .optim import RMSprop


@dataclass
class ActorCriticConfig:
    """Hyperparameters shared by the on-policy agents (defaults: OpenAI baselines' A2C on Atari)."""

    num_envs: int = 16
    """Parallel environments stepped together; a rollout is ``num_envs * n_steps`` transitions."""
    n_steps: int = 5
    """Rollout length: each step t of a segment gets an (n_steps - t)-step target."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.01
    """Temperature: the entropy / KL coefficient (the paper's tau; baselines' ent_coef)."""
    reference: str = "uniform"
    """Reference policy of the KL penalty: 'uniform' (KL, the paper) or 'none' (entropy bonus)."""
    value_coef: float = 0.5
    """Weight c of the value loss 1/2 (V - V-hat)^2 (note the 1/2; baselines' 0.5 has none)."""
    optimizer: str = "rmsprop"
    """'rmsprop' or 'adam'."""
    lr: float = 7e-4
    """Learning rate at the start of training."""
    lr_decay: bool = True
    """Decay the learning rate linearly to zero over the run."""
    rms_alpha: float = 0.99
    """RMSprop smoothing constant."""
    eps: float = 1e-5
    """Optimizer epsilon."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm to this (0 disables)."""
    shared_trunk: bool = True
    """Policy and value share conv layers and the first FC layer (A3C's network)."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the MLP trunk used for vector observations."""
    float64: bool = False
    """Compute in float64 (used by the equivalence checks)."""
    bf16: bool = False
    """Run the CNN trunk under bfloat16 autocast: faster on CPUs with AMX/AVX512-BF16 and on
    recent GPUs; weights, optimizer and losses stay float32. Not bit-identical to float32, and
    on Pong its gradient drifts from float32's as play improves (BENCHMARKS.md): the one bf16 run
    with A3C's settings scored 5.53 where float32 scored 18-20."""

    def validate(self) -> None:
        checks = {
            "num_envs": self.num_envs >= 1, "n_steps": self.n_steps >= 1,
            "gamma": 0.0 <= self.gamma <= 1.0, "tau": self.tau > 0.0,
            "reference": self.reference in ("uniform", "none"), "value_coef": self.value_coef >= 0.0,
            "optimizer": self.optimizer in ("rmsprop", "adam"), "lr": self.lr > 0.0,
            "eps": self.eps > 0.0, "max_grad_norm": self.max_grad_norm >= 0.0,
            "rms_alpha": 0.0 < self.rms_alpha < 1.0, "hidden": len(self.hidden) >= 1 and min(self.hidden) >= 1,
            "bf16": not (self.bf16 and self.float64),  # one precision or the other
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid {type(self).__name__} value(s): " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))


class RolloutTerms(NamedTuple):
    """Network outputs on a rollout, time-major ``[T, B]`` (``log_pi`` is ``[T, B, A]``)."""

    log_pi: Tensor
    log_pi_taken: Tensor
    values: Tensor
    kl: Tensor  # KL[pi || pi-bar](s_t), with gradient
    next_values: Tensor  # V(s'_t), detached


class ActorCriticAgent(Agent):
    """Softmax policy + state value on one network; acts by sampling the policy."""

    on_policy = True

    def __init__(self, config: ActorCriticConfig, obs_info: ObsInfo, num_actions: int, network_spec: dict,
                 device="cpu", seed: int = 0):
        config.validate()
        super().__init__(config, obs_info, num_actions, network_spec, device, seed)
        self.network = self.build_network(config, network_spec, num_actions).to(device=self.device, dtype=self.dtype)
        self.log_ref = losses.log_reference(num_actions, config.reference)
        params = self.network.parameters()
        if config.optimizer == "rmsprop":
            self.optimizer = RMSprop(params, lr=config.lr, alpha=config.rms_alpha, eps=config.eps)
        else:
            self.optimizer = self.make_adam(config.lr, config.eps)

    @staticmethod
    def build_network(config: ActorCriticConfig, network_spec: dict, num_actions: int) -> ActorCriticNetwork:
        return ActorCriticNetwork(network_spec["trunk"], num_actions, shared=config.shared_trunk, bf16=config.bf16)

    def action_logits(self, obs: Tensor) -> Tensor:
        return self.network(obs)[0]

    @torch.no_grad()
    def act_recorded(self, obs, step: int, steps: int, offset: int = 0,
                     total: int | None = None) -> tuple[np.ndarray, ActingRecord | None]:
        """Sampled actions (the same draw as ``act``), with this pass's trunk activations kept:
        the update runs its backward from them instead of a second forward over the segment."""
        if type(self).action_logits is not ActorCriticAgent.action_logits:
            return super().act_recorded(obs, step, steps, offset, total)  # a subclass acts otherwise: record nothing
        logits, _, record = self.network.forward_recorded(self.to_tensor(obs), step, steps, offset, total)
        return self.sample(logits).cpu().numpy(), record

    def rollout_terms(self, batch: Rollout) -> RolloutTerms:
        """One forward pass over every state of the segment, and one without gradient over the
        state after it and the final states of truncated episodes (only their values are used, as
        constants: in the first pass they would cost a sixth of the backward for nothing).
        The first pass is acting's own, replayed, when the collector kept it and the weights
        are unchanged since (see ActorCriticNetwork.forward_replayed); the same numbers."""
        steps, envs = batch.actions.shape
        replayed = self.network.forward_replayed(batch.acting, envs) if batch.acting else None
        logits, values = replayed if replayed is not None else self.network(self.to_tensor(batch.obs.flatten(0, 1)))
        with torch.no_grad():
            _, bootstrap = self.network(torch.cat([batch.next_obs, batch.final_obs]))
        log_pi = F.log_softmax(logits, dim=-1).view(steps, envs, -1)
        values_t = values.view(steps, envs)
        next_values = torch.cat([values_t[1:].detach(), bootstrap[:envs].unsqueeze(0)])
        if len(batch.final_index):
            next_values[batch.final_index[:, 0], batch.final_index[:, 1]] = bootstrap[envs:]
        log_pi_taken = log_pi.gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        kl = losses.kl_to_reference(log_pi, self.log_ref)
        return RolloutTerms(log_pi, log_pi_taken, values_t, kl, next_values)

    def soft_targets(self, batch: Rollout, terms: RolloutTerms, proper: bool = True) -> Tensor:
        """n-step targets within the segment; ``proper=False`` leaves the KL terms out."""
        tau = self.config.tau if proper else 0.0
        return losses.nstep_soft_targets(batch.rewards.to(self.dtype), terms.kl.detach(), batch.terminated,
                                         batch.truncated, terms.next_values, self.config.gamma, tau)

    def optimize(self, loss: Tensor, terms: RolloutTerms, metrics: dict[str, Tensor]) -> dict[str, float]:
        lr = self._set_lr(self.config.lr, self.config.lr_decay)
        grad_norm = self.clip_and_step(loss, self.config.max_grad_norm)
        with torch.no_grad():
            entropy = -(terms.log_pi.exp() * terms.log_pi).sum(-1).mean()
        out = {name: float(value.detach()) for name, value in metrics.items()}
        out.update(entropy=float(entropy), value_mean=float(terms.values.detach().mean()),
                   grad_norm=grad_norm, lr=lr)
        return out
