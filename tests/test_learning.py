"""Each agent learns CartPole-v1: greedy mean return >= 475 over 20 episodes (fixed seed).

Budgets are agent steps with the classic-control presets (equirl/zoo/presets.py); measured on
the 2-core CI machine, each run takes 20-90 s.
"""
from __future__ import annotations

import pytest

from equirl.evaluation.evaluate import evaluate
from equirl.zoo.train import train

BUDGETS = {"a3c": 300_000, "matched-q": 300_000, "entropy-pg": 300_000, "soft-q": 150_000}


@pytest.mark.slow
@pytest.mark.parametrize("agent_id", list(BUDGETS))
def test_learns_cartpole(agent_id):
    result = train(agent_id, "CartPole-v1", BUDGETS[agent_id], seed=0)
    score = evaluate(result.agent, "CartPole-v1", episodes=20, seed=1000, greedy=True)
    assert len(score.scores) == 20
    assert score.mean >= 475, f"{agent_id}: greedy mean {score.mean:.1f} after {result.steps} steps"
