"""``matched-q``: the paper's A3C-matched soft Q-learner (§6.3).

Same network, rollouts and optimizer as ``a3c``; only the loss differs. ``Q = V + tau*log pi``
(a dueling network whose advantage stream is ``tau*log pi``), trained with the n-step soft-Q
loss ``1/2 (Q(s_t,a_t) - y_t)^2``. No target network, no epsilon schedule: actions are sampled
from pi, the Boltzmann policy of Q.

The gradient into the advantage stream is scaled by ``1/tau`` and into the value stream by
``c = value_coef`` (0.5). Then, per sample, the update is ``-(grad log pi + c grad V) A-hat``:
A2C's update with entropy coefficient tau and value weight c (paper-spec §2.3, §4.3). Unscaled
soft-Q would be tau times A2C with ``c = 1/tau`` (c = 100 at tau = 0.01), which the paper reports
unstable; ``scale_streams=False`` gives that variant.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import losses
from .actor_critic import ActorCriticAgent, ActorCriticConfig
from .base import Rollout


@dataclass
class MatchedQConfig(ActorCriticConfig):
    """A2C's hyperparameters; ``value_coef`` is the value-stream gradient scale c."""

    scale_streams: bool = True
    """Scale the advantage-stream gradient by 1/tau and the value stream by value_coef (§6.3);
    False is plain soft Q-learning (implicitly c = 1/tau)."""


class MatchedQ(ActorCriticAgent):
    agent_id = "matched-q"
    Config = MatchedQConfig

    def learn(self, batch: Rollout) -> dict[str, float]:
        cfg = self.config
        terms = self.rollout_terms(batch)
        targets = self.soft_targets(batch, terms, proper=True)
        value_scale, advantage_scale = (cfg.value_coef, 1.0 / cfg.tau) if cfg.scale_streams else (1.0, 1.0)
        q = losses.dueling_soft_q(terms.values, terms.log_pi, cfg.tau, self.log_ref, value_scale, advantage_scale)
        q_taken = q.gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        loss = losses.soft_q_loss(q_taken, targets)
        return self.optimize(loss, terms, {"loss": loss, "loss_q": loss, "q_taken_mean": q_taken.mean(),
                                           "target_mean": targets.mean()})
