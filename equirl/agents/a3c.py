"""``a3c``: A3C in the synchronous, batched form the paper calls A2C (§6.1, §6.3).

Synchronous rather than asynchronous: all ``num_envs`` environments step together and one
gradient step is taken on their joint 5-step rollout. That is what the paper ran ("a well-tuned
(synchronous, deterministic) version of A3C"); it gives the same expected update as A3C's
asynchronous workers without stale gradients, batches the network on one device, and makes
runs reproducible from a seed, which the equivalence checks need.

Loss (paper-spec §2.2, step 4): ``L = -log pi(a_t) Delta_t + tau KL_t + c 1/2 (V - V-hat)^2``.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import losses
from .actor_critic import ActorCriticAgent, ActorCriticConfig
from .base import Rollout


@dataclass
class A3CConfig(ActorCriticConfig):
    """A2C hyperparameters (defaults: 16 envs, 5 steps, RMSprop 7e-4 decayed linearly, tau 0.01,
    c 0.5, clip 0.5, gamma 0.99)."""

    estimator: str = "proper"
    """'proper': KL terms of later steps inside the returns and value target (Eq. 80); 'naive':
    plain n-step returns, entropy only as the one-step bonus (Eq. 48, baselines' A2C)."""
    entropy_gradient: str = "analytic"
    """'analytic': the current-step term is tau * grad KL(s_t); 'sampled': the sampled
    -tau * log(pi/pi-bar)(a_t) inside the return, which makes the update per-sample identical to
    matched-q's (paper-spec §2.3.3)."""

    def validate(self) -> None:
        super().validate()
        if self.estimator not in ("proper", "naive"):
            raise ValueError(f"estimator must be 'proper' or 'naive', got {self.estimator!r}")
        if self.entropy_gradient not in ("analytic", "sampled"):
            raise ValueError(f"entropy_gradient must be 'analytic' or 'sampled', got {self.entropy_gradient!r}")
        if self.entropy_gradient == "sampled" and self.estimator == "naive":
            raise ValueError("entropy_gradient='sampled' places the KL inside the return, so it needs estimator='proper'")


def entropy_regularized_pg_loss(agent: ActorCriticAgent, batch: Rollout) -> dict[str, float]:
    """The update of both a3c and entropy-pg: entropy-regularized n-step policy gradient."""
    cfg = agent.config
    terms = agent.rollout_terms(batch)
    proper = cfg.estimator == "proper"
    targets = agent.soft_targets(batch, terms, proper=proper)
    if cfg.entropy_gradient == "sampled":
        advantages = losses.sampled_soft_advantages(targets, terms.values, terms.log_pi_taken, cfg.tau, agent.log_ref)
        loss_kl = terms.values.new_zeros(())
    else:
        # naive: no KL offset either, so the advantage is the plain n-step return minus V
        advantages = losses.entropy_pg_advantages(targets, terms.values, terms.kl, cfg.tau if proper else 0.0)
        loss_kl = losses.kl_penalty_loss(terms.kl, cfg.tau)
    loss_policy = losses.policy_gradient_loss(terms.log_pi_taken, advantages)
    loss_value = losses.value_loss(terms.values, terms.values.detach() + advantages)
    loss = loss_policy + loss_kl + cfg.value_coef * loss_value
    return agent.optimize(loss, terms, {"loss": loss, "loss_policy": loss_policy, "loss_kl": loss_kl,
                                        "loss_value": loss_value, "advantage_mean": advantages.mean()})


class A3C(ActorCriticAgent):
    agent_id = "a3c"
    Config = A3CConfig

    def learn(self, batch: Rollout) -> dict[str, float]:
        return entropy_regularized_pg_loss(self, batch)
