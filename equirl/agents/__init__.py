"""The four agents of the paper, one act/learn interface (see :mod:`equirl.agents.base`)."""
from __future__ import annotations

from .a3c import A3C, A3CConfig
from .base import Agent, ObsInfo, ReplaySample, Rollout
from .entropy_pg import EntropyPG, EntropyPGConfig
from .matched_q import MatchedQ, MatchedQConfig
from .soft_q import SoftQ, SoftQConfig

AGENTS: dict[str, type[Agent]] = {cls.agent_id: cls for cls in (SoftQ, EntropyPG, A3C, MatchedQ)}

__all__ = [
           "A3C",
           "AGENTS",
           "A3CConfig",
           "Agent",
           "EntropyPG",
           "EntropyPGConfig",
           "MatchedQ",
           "MatchedQConfig",
           "ObsInfo",
           "ReplaySample",
           "Rollout",
           "SoftQ",
           "SoftQConfig",
]
