"""equirl: the agents of "Equivalence Between Policy Gradients and Soft Q-Learning"
(Schulman, Chen & Abbeel 2017), a Gymnasium/Atari training zoo, and a pickle-free model hub."""
from __future__ import annotations

import os
import sys

# Idle OpenMP threads spin after every torch operation by default, on the very cores ale-py's
# emulator threads need: waiting passively makes Atari training about 15% faster on 2 cores
# (BENCHMARKS.md). It only takes effect when equirl is imported before torch (the `equirl`
# command always is); a value the user set wins.
# Whether OpenMP will see a wait policy, ours or the user's: not when torch loaded it before.
OMP_WAIT_POLICY_APPLIES = "torch" not in sys.modules or "OMP_WAIT_POLICY" in os.environ
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

from .agents import A3C, AGENTS, Agent, EntropyPG, MatchedQ, SoftQ
from .evaluation.evaluate import evaluate
from .hub.client import LoadError, load

__all__ = ["A3C", "AGENTS", "Agent", "EntropyPG", "LoadError", "MatchedQ", "SoftQ", "__version__", "evaluate", "load"]
