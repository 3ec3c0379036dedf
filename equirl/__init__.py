"""equirl: the agents of "Equivalence Between Policy Gradients and Soft Q-Learning"
(Schulman, Chen & Abbeel 2017), a Gymnasium/Atari training zoo, and a pickle-free model hub."""
from __future__ import annotations

__version__ = "0.1.0"

from .agents import A3C, AGENTS, Agent, EntropyPG, MatchedQ, SoftQ
from .evaluation.evaluate import evaluate
from .hub.client import LoadError, load

__all__ = ["A3C", "AGENTS", "Agent", "EntropyPG", "LoadError", "MatchedQ", "SoftQ", "__version__", "evaluate", "load"]
