"""``entropy-pg``: n-step entropy-regularized policy gradient (§3.6).

The "proper" estimator by default: the KL penalties of later steps sit inside the returns and
the value target (Eq. 80), so the update follows the gradient of the entropy-augmented return;
``estimator='naive'`` is the usual A3C practice of a one-step entropy bonus only (Eq. 48).
Unlike ``a3c`` it defaults to separate policy and value trunks and Adam, the general-purpose
form; the update rule is the same function (:func:`equirl.agents.a3c.entropy_regularized_pg_loss`).
"""
from __future__ import annotations

from dataclasses import dataclass

from .a3c import A3CConfig, entropy_regularized_pg_loss
from .actor_critic import ActorCriticAgent
from .base import Rollout


@dataclass
class EntropyPGConfig(A3CConfig):
    """Entropy-regularized PG hyperparameters: A3C's, with separate trunks and Adam."""

    shared_trunk: bool = False
    """Policy and value on separate trunks (no interference between the two losses)."""
    optimizer: str = "adam"
    """'rmsprop' or 'adam'."""
    lr: float = 3e-4
    """Learning rate at the start of training."""


class EntropyPG(ActorCriticAgent):
    agent_id = "entropy-pg"
    Config = EntropyPGConfig

    def learn(self, batch: Rollout) -> dict[str, float]:
        return entropy_regularized_pg_loss(self, batch)
