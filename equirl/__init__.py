"""equirl: the agents of "Equivalence Between Policy Gradients and Soft Q-Learning"
(Schulman, Chen & Abbeel 2017), a Gymnasium/Atari training zoo, and a pickle-free model hub."""
from __future__ import annotations

__version__ = "0.1.0"

from .agents import AGENTS, A3C, Agent, EntropyPG, MatchedQ, SoftQ  # noqa: E402
from .evaluation.evaluate import evaluate  # noqa: E402
from .hub.client import LoadError, load  # noqa: E402

__all__ = ["__version__", "AGENTS", "Agent", "A3C", "EntropyPG", "MatchedQ", "SoftQ", "LoadError", "evaluate", "load"]
