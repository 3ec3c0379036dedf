"""Replay buffer for soft Q-learning, with n-step windows.

Transitions are stored per environment stream in time order (``[slot, env]``), so an n-step
window is a run of consecutive slots of one stream and the next observation is the next slot's
observation: each observation is stored once, not twice. The last observation of a truncated
episode is kept in a small side table, since the next slot already holds the next episode.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..agents.base import ReplaySample


class ReplayBuffer:
    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: str):
        self.slots = max(2, math.ceil(capacity / num_envs))
        self.num_envs = num_envs
        shape = (self.slots, num_envs)
        self.obs = np.zeros(shape + tuple(obs_shape), dtype=obs_dtype)
        self.actions = np.zeros(shape, dtype=np.int64)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.kl = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=bool)
        self.truncated = np.zeros(shape, dtype=bool)
        self.final_obs: dict[tuple[int, int], np.ndarray] = {}
        self.written = 0  # vector steps written since the start

    def __len__(self) -> int:
        return min(self.written, self.slots) * self.num_envs

    def add(self, obs, actions, rewards, terminated, truncated, kl, final_obs) -> None:
        slot = self.written % self.slots
        for env in range(self.num_envs):
            self.final_obs.pop((slot, env), None)
        self.obs[slot] = obs
        self.actions[slot] = actions
        self.rewards[slot] = rewards
        self.kl[slot] = kl
        self.terminated[slot] = terminated
        self.truncated[slot] = truncated
        for env in np.flatnonzero(truncated):
            self.final_obs[(slot, int(env))] = final_obs[env].copy()
        self.written += 1

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.obs, self.actions, self.rewards, self.kl, self.terminated, self.truncated))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The whole buffer as tensors, for a checkpoint."""
        keys = sorted(self.final_obs)
        finals = (np.stack([self.final_obs[k] for k in keys]) if keys
                  else np.zeros((0,) + self.obs.shape[2:], dtype=self.obs.dtype))
        arrays = {"obs": self.obs, "actions": self.actions, "rewards": self.rewards, "kl": self.kl,
                  "terminated": self.terminated, "truncated": self.truncated,
                  "final_keys": np.array(keys, dtype=np.int64).reshape(-1, 2), "final_obs": finals,
                  "written": np.array([self.written], dtype=np.int64)}
        return {f"replay.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in ("obs", "actions", "rewards", "kl", "terminated", "truncated"):
            saved = tensors[f"replay.{name}"].numpy()
            target = getattr(self, name)
            if saved.shape != target.shape or saved.dtype != target.dtype:
                raise ValueError(f"saved replay {name} is {saved.dtype}{list(saved.shape)}, "
                                 f"expected {target.dtype}{list(target.shape)}")
            target[...] = saved
        keys = tensors["replay.final_keys"].numpy()
        finals = tensors["replay.final_obs"].numpy()
        self.final_obs = {(int(s), int(e)): finals[i].copy() for i, (s, e) in enumerate(keys)}
        self.written = int(tensors["replay.written"][0])

    def can_sample(self, n_steps: int) -> bool:
        return self.written - 1 - n_steps >= max(0, self.written - self.slots)

    def sample(self, batch_size: int, n_steps: int, rng: np.random.Generator, to_tensor, device) -> ReplaySample:
        """``batch_size`` windows of ``n_steps``, uniformly over start time and env stream."""
        if not self.can_sample(n_steps):
            raise RuntimeError(f"replay holds too few steps for {n_steps}-step windows")
        # A window starting at t needs the observation at t + n_steps stored and not overwritten.
        start = rng.integers(max(0, self.written - self.slots), self.written - n_steps, size=batch_size)
        env = rng.integers(0, self.num_envs, size=batch_size)
        window = start[:, None] + np.arange(n_steps)  # [B, n] absolute vector steps
        slots = window % self.slots
        terminated = self.terminated[slots, env[:, None]]
        truncated = self.truncated[slots, env[:, None]]
        done = terminated | truncated
        # Bootstrap from the state after the first episode end, or after the window.
        first_done = np.where(done.any(axis=1), done.argmax(axis=1), n_steps - 1)
        boot_time = start + first_done + 1
        bootstrap = self.obs[boot_time % self.slots, env]
        ended_by_cut = truncated[np.arange(batch_size), first_done] & done.any(axis=1)
        for i in np.flatnonzero(ended_by_cut):
            bootstrap[i] = self.final_obs[(int(slots[i, first_done[i]]), int(env[i]))]
        return ReplaySample(
            obs=to_tensor(self.obs[slots[:, 0], env]),
            actions=torch.as_tensor(self.actions[slots[:, 0], env], device=device),
            rewards=torch.as_tensor(self.rewards[slots, env[:, None]].T.copy(), device=device),
            kl=torch.as_tensor(self.kl[slots, env[:, None]].T.copy(), device=device),
            terminated=torch.as_tensor(terminated.T.copy(), device=device),
            truncated=torch.as_tensor(truncated.T.copy(), device=device),
            bootstrap_obs=to_tensor(bootstrap),
        )
