"""equirl: the agents of "Equivalence Between Policy Gradients and Soft Q-Learning"
(Schulman, Chen & Abbeel 2017), a Gymnasium/Atari training zoo, and a pickle-free model hub."""
from __future__ import annotations

import os
import sys

# How torch's idle OpenMP threads wait between operations (equirl/zoo/cpu_threads.py): libgomp's
# (pip builds of torch) spin, and equirl ends them before each emulator step, so that they neither
# hold the emulator's cores nor need waking for every operation; other OpenMP runtimes wait
# passively (spinning on the emulator's cores cost ~15% on 2 cores; BENCHMARKS.md). OpenMP reads
# these once, when torch loads it: equirl must be imported first (the `equirl` command always is).
# A setting the user made wins.
# Whether OpenMP will see a wait policy, ours or the user's: not when torch loaded it before.
OMP_WAIT_POLICY_APPLIES = "torch" not in sys.modules or "OMP_WAIT_POLICY" in os.environ
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # what runtimes without GOMP_SPINCOUNT get
    os.environ["GOMP_SPINCOUNT"] = "300000"  # libgomp: its own default spin (~ms), which overrides PASSIVE

__version__ = "0.1.0"

from .agents import A3C, AGENTS, Agent, EntropyPG, MatchedQ, SoftQ
from .evaluation.evaluate import evaluate
from .hub.client import LoadError, load

__all__ = ["A3C", "AGENTS", "Agent", "EntropyPG", "LoadError", "MatchedQ", "SoftQ", "__version__", "evaluate", "load"]
