"""The only code that knows about autoreset and episode boundaries.

Environments reset in the same step an episode ends (see :class:`equirl.zoo.envs.VectorEnv`),
so ``obs[t+1]`` after a done step belongs to the next episode; the last observation of a
truncated episode is kept apart so its value can be bootstrapped.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from ..agents.base import Agent, ReplaySample, Rollout
from .envs import Step, VectorEnv
from .replay import ReplayBuffer


class Episode(NamedTuple):
    score: float  # raw, unclipped sum of rewards
    length: int  # agent steps


class EpisodeTracker:
    """Raw returns and lengths of the episodes running in each environment."""

    def __init__(self, num_envs: int):
        self.returns = np.zeros(num_envs, dtype=np.float64)
        self.lengths = np.zeros(num_envs, dtype=np.int64)

    def update(self, step: Step, rows: slice = slice(None)) -> list[Episode]:
        """Add ``step`` (of the envs ``rows``); the episodes it ended, in env order."""
        self.returns[rows] += step.rewards
        self.lengths[rows] += 1
        finished = []
        offset = rows.start or 0
        for i in offset + np.flatnonzero(step.terminated | step.truncated):
            finished.append(Episode(float(self.returns[i]), int(self.lengths[i])))
            self.returns[i] = 0.0
            self.lengths[i] = 0
        return finished


def training_rewards(step: Step, clip: bool) -> np.ndarray:
    """What the agent learns from: sign(r) when the spec clips rewards (DQN/A2C practice)."""
    return np.sign(step.rewards) if clip else step.rewards


class CollectorState:
    """The observation each env is at and its running episode: saved for an exact resume."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"collector.obs": torch.from_numpy(np.ascontiguousarray(self.obs)),
                "collector.returns": torch.from_numpy(self.tracker.returns.copy()),
                "collector.lengths": torch.from_numpy(self.tracker.lengths.copy())}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.obs = tensors["collector.obs"].numpy().astype(self.obs.dtype).reshape(self.obs.shape)
        self.tracker.returns[:] = tensors["collector.returns"].numpy()
        self.tracker.lengths[:] = tensors["collector.lengths"].numpy()


class OnPolicyCollector(CollectorState):
    """Collects ``n_steps`` x ``num_envs`` segments with the current policy."""

    def __init__(self, env: VectorEnv, n_steps: int, seed: int):
        self.env = env
        self.n_steps = n_steps
        self.obs = env.reset(seed=seed)
        self.tracker = EpisodeTracker(env.num_envs)
        shape = (n_steps, env.num_envs)
        self._obs = np.zeros(shape + self.obs.shape[1:], dtype=self.obs.dtype)
        self._actions = np.zeros(shape, dtype=np.int64)
        self._rewards = np.zeros(shape, dtype=np.float32)
        self._terminated = np.zeros(shape, dtype=bool)
        self._truncated = np.zeros(shape, dtype=bool)

    def collect(self, agent: Agent) -> tuple[Rollout, list[Episode]]:
        """One segment. With the envs in groups (VectorEnv ``groups > 1``) acting for a group
        overlaps the emulation of the others: each group is sent its actions as soon as they are
        drawn. The policy is the same for the whole segment and the actions are drawn group after
        group from the same stream, so the segment is the one lockstep stepping gives."""
        env, n = self.env, self.n_steps
        episodes: list[Episode] = []
        finals: list[np.ndarray] = []
        final_index: list[tuple[int, int]] = []
        acting = []
        clip = env.spec.reward_clipping
        if env.groups > 1 and not self.obs.flags.writeable:
            self.obs = self.obs.copy()  # written group by group below

        def act(t: int, group: int) -> None:
            rows = env.group_rows(group)
            # Stored before stepping: correct even for an env that reuses its observation buffer.
            self._obs[t, rows] = self.obs[rows]
            actions, record = agent.act_recorded(self.obs[rows], t, n, rows.start, env.num_envs)
            acting.append(record)
            self._actions[t, rows] = actions
            env.send(group, actions)

        for g in range(env.groups):
            act(0, g)
        for t in range(n):
            for g in range(env.groups):
                rows = env.group_rows(g)
                step = env.recv(g)
                self._rewards[t, rows] = training_rewards(step, clip)
                self._terminated[t, rows] = step.terminated
                self._truncated[t, rows] = step.truncated
                for b in np.flatnonzero(step.truncated & ~step.terminated):
                    finals.append(step.final_obs[b])
                    final_index.append((t, rows.start + b))
                episodes += self.tracker.update(step, rows)
                if env.groups == 1:
                    self.obs = step.obs  # the env's own array, as emitted: no copy on the hot path
                else:
                    self.obs[rows] = step.obs
                if t + 1 < n:
                    act(t + 1, g)
        device = agent.device
        final_obs = np.stack(finals) if finals else np.zeros((0,) + self.obs.shape[1:], dtype=self.obs.dtype)
        rollout = Rollout(
            obs=torch.from_numpy(self._obs), actions=torch.as_tensor(self._actions, device=device),
            rewards=torch.as_tensor(self._rewards, device=device),
            terminated=torch.as_tensor(self._terminated, device=device),
            truncated=torch.as_tensor(self._truncated & ~self._terminated, device=device),
            next_obs=agent.to_tensor(self.obs.copy()), final_obs=agent.to_tensor(final_obs),
            final_index=torch.as_tensor(np.array(final_index, dtype=np.int64).reshape(-1, 2), device=device),
            acting=tuple(acting),
        )
        return rollout, episodes


class ReplayCollector(CollectorState):
    """Steps every environment once with the behaviour policy and stores the transitions."""

    def __init__(self, env: VectorEnv, seed: int):
        if env.groups != 1:
            raise ValueError(f"ReplayCollector steps its envs as one group, not {env.groups}")
        self.env = env
        self.obs = env.reset(seed=seed)
        self.tracker = EpisodeTracker(env.num_envs)

    def step(self, agent, replay: ReplayBuffer, next_batch: Callable[[], ReplaySample | None] | None = None,
             learn: Callable[[ReplaySample], None] | None = None) -> list[Episode]:
        """One vector step; with ``next_batch`` and ``learn``, also the updates due after it.

        The updates are those of the plain order (act, step, store, sample, learn) with the
        same weights, batches and random draws, run in another order: an update after a step
        reads of that step only the observation acted on (ReplayBuffer.add_obs), so it runs
        while the envs emulate (Atari's on their own threads), and the first one's batch,
        drawn before acting (``next_batch()``: None when no update is due), goes through the
        network in acting's forward pass. ``learn(batch)`` runs that update and any others due.
        The weights are bit-identical to the plain order's (tests/test_soft_q_pipeline.py)."""
        replay.add_obs(self.obs)
        batch = next_batch() if next_batch is not None else None
        actions, kl = agent.act_for_training(self.obs, batch)
        learning = batch is not None and learn is not None
        self.env.send(0, actions, release_cores=not learning)
        if learning:
            learn(batch)
        step = self.env.recv(0)
        replay.add_outcome(actions, training_rewards(step, self.env.spec.reward_clipping),
                           step.terminated, step.truncated & ~step.terminated, kl, step.final_obs)
        self.obs = step.obs
        return self.tracker.update(step)
