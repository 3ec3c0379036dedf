"""Evaluation: full episodes with the raw score, in parallel, seeded.

Each of ``episodes`` environments plays exactly one episode (its first), so the sample is not
biased towards short episodes, and the same seed gives the same episodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..zoo.envs import EnvSpec, make_vector_env


@dataclass
class EvalResult:
    scores: list[float]
    lengths: list[int]

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores))


def evaluate(agent, spec: EnvSpec | str, episodes: int = 30, seed: int = 0, greedy: bool = True,
             max_steps: int = 1_000_000) -> EvalResult:
    env = make_vector_env(spec, episodes)
    try:
        obs = env.reset(seed=seed)
        scores = np.zeros(episodes)
        lengths = np.zeros(episodes, dtype=np.int64)
        running = np.ones(episodes, dtype=bool)
        for _ in range(max_steps):
            step = env.step(agent.act(obs, greedy=greedy))
            scores += step.rewards * running
            lengths += running
            running &= ~(step.terminated | step.truncated)
            obs = step.obs
            if not running.any():
                break
        else:
            raise RuntimeError(f"evaluation did not finish {int(running.sum())} episode(s) in {max_steps} steps")
        return EvalResult([float(s) for s in scores], [int(n) for n in lengths])
    finally:
        env.close()
