"""Replay buffer for soft Q-learning, with n-step windows.

Transitions are stored per environment stream in time order (``[slot, env]``), so an n-step
window is a run of consecutive slots of one stream and the next observation is the next slot's
observation: each observation is stored once, not twice. The last observation of a truncated
episode is kept in a small side table, since the next slot already holds the next episode.

Stacked frames (Atari's 4 x 84 x 84 observations, ``frame_stack=True``) are stored once: each
slot keeps only the newest frame, and a stack is rebuilt from the newest frames of the slots
before it, back to the start of its episode. An episode's first observation is zero-padded
([0, 0, 0, f0] in ale-py); a first stack that is not is kept whole in a side table. A
1M-transition Atari buffer thus costs its 7.06 GB of unique frames plus 19 bytes a transition.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..agents.base import ReplaySample


class ReplayBuffer:
    def __init__(self, capacity: int, num_envs: int, obs_shape: tuple[int, ...], obs_dtype: str,
                 frame_stack: bool = False):
        self.slots = max(2, math.ceil(capacity / num_envs))
        self.num_envs = num_envs
        shape = (self.slots, num_envs)
        self.obs_shape = tuple(obs_shape)
        # frames per observation when stored frame by frame; 0: whole observations
        self.stack = self.obs_shape[0] if frame_stack and len(self.obs_shape) > 1 else 0
        self.obs = np.zeros(shape + (self.obs_shape[1:] if self.stack else self.obs_shape), dtype=obs_dtype)
        self.starts = np.zeros(shape, dtype=bool)  # the slot's observation begins an episode
        self.start_stacks: dict[tuple[int, int], np.ndarray] = {}  # first stacks that are not zero-padded
        self._next_is_start = np.ones(num_envs, dtype=bool)
        self.actions = np.zeros(shape, dtype=np.int64)
        self.rewards = np.zeros(shape, dtype=np.float32)
        self.kl = np.zeros(shape, dtype=np.float32)
        self.terminated = np.zeros(shape, dtype=bool)
        self.truncated = np.zeros(shape, dtype=bool)
        self.final_obs: dict[tuple[int, int], np.ndarray] = {}
        self.written = 0  # vector steps written since the start (their observations, at least)
        self._pending = False  # the newest slot holds its observation but not yet its outcome

    def __len__(self) -> int:
        return min(self.written, self.slots) * self.num_envs

    def add(self, obs, actions, rewards, terminated, truncated, kl, final_obs) -> None:
        self.add_obs(obs)
        self.add_outcome(actions, rewards, terminated, truncated, kl, final_obs)

    def add_obs(self, obs) -> None:
        """The first half of :meth:`add`: the observation acted on at the next vector step.

        Sampling between the two halves gives what it gives after the whole :meth:`add`: a window
        never reaches the newest slot's action or outcome, only its observation (the newest
        window bootstraps from it). So the updates that follow a step can run while the envs
        step (see ReplayCollector.step)."""
        if self._pending:
            raise RuntimeError("ReplayBuffer.add_obs: the previous observation's outcome was not added")
        slot = self.written % self.slots
        for env in range(self.num_envs):
            self.final_obs.pop((slot, env), None)
            self.start_stacks.pop((slot, env), None)
        self.starts[slot] = self._next_is_start
        if self.stack:
            self.obs[slot] = obs[:, -1]
            for env in np.flatnonzero(self._next_is_start):
                if obs[env, :-1].any():
                    self.start_stacks[(slot, int(env))] = obs[env].copy()
        else:
            self.obs[slot] = obs
        self.written += 1
        self._pending = True

    def add_outcome(self, actions, rewards, terminated, truncated, kl, final_obs) -> None:
        """The second half of :meth:`add`: what acting on the observation of :meth:`add_obs` did."""
        if not self._pending:
            raise RuntimeError("ReplayBuffer.add_outcome: no observation added before it")
        slot = (self.written - 1) % self.slots
        self.actions[slot] = actions
        self.rewards[slot] = rewards
        self.kl[slot] = kl
        self.terminated[slot] = terminated
        self.truncated[slot] = truncated
        for env in np.flatnonzero(truncated):
            self.final_obs[(slot, int(env))] = final_obs[env].copy()
        self._next_is_start = np.asarray(terminated) | np.asarray(truncated)
        self._pending = False

    def _oldest_start(self) -> int:
        """The first vector step a window may start at: its stack's older frames must still be
        stored (or lie before its episode's start)."""
        oldest = max(0, self.written - self.slots)
        return oldest + (self.stack - 1 if self.stack and self.written > self.slots else 0)

    def observations(self, times: np.ndarray, envs: np.ndarray) -> np.ndarray:
        """The observations at absolute vector steps ``times`` of streams ``envs``."""
        if not self.stack:
            return self.obs[times % self.slots, envs]
        k = self.stack
        # Every frame of every stack in one gather (position j holds the frame k-1-j steps back),
        # then the frames before an episode's start blanked: a stack per frame age with masks
        # took twice as long (BENCHMARKS.md), and starts are rare.
        slots = (times[:, None] - np.arange(k - 1, -1, -1)) % self.slots  # [B, k]
        out = self.obs[slots, envs[:, None]]
        starts = self.starts[slots, envs[:, None]]
        for i in np.flatnonzero(starts.any(axis=1)):
            begins = k - 1 - int(np.argmax(starts[i, ::-1]))  # the newest frame that begins an episode
            first = self.start_stacks.get((int(slots[i, begins]), int(envs[i])))
            if first is None:  # ale-py's first stack: zero-padded
                out[i, :begins] = 0
            else:  # the episode began with a stack that was not zero-padded
                out[i, :begins + 1] = first[k - 1 - begins:]
        return out

    @property
    def nbytes(self) -> int:
        arrays = (self.obs, self.actions, self.rewards, self.kl, self.terminated, self.truncated, self.starts)
        side = sum(a.nbytes for a in (*self.final_obs.values(), *self.start_stacks.values()))
        return sum(a.nbytes for a in arrays) + side

    _ARRAYS = ("obs", "actions", "rewards", "kl", "terminated", "truncated", "starts", "_next_is_start")

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The whole buffer as tensors, for a checkpoint."""
        if self._pending:
            raise RuntimeError("ReplayBuffer.state_tensors: an observation's outcome is still to be added")
        arrays = {name: getattr(self, name) for name in self._ARRAYS}
        for side in ("final_obs", "start_stacks"):
            table = getattr(self, side)
            keys = sorted(table)
            arrays[f"{side}_keys"] = np.array(keys, dtype=np.int64).reshape(-1, 2)
            arrays[side] = (np.stack([table[k] for k in keys]) if keys
                            else np.zeros((0,) + self.obs_shape, dtype=self.obs.dtype))
        arrays["written"] = np.array([self.written], dtype=np.int64)
        return {f"replay.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        for name in self._ARRAYS:
            saved = tensors[f"replay.{name}"].numpy()
            target = getattr(self, name)
            if saved.shape != target.shape or saved.dtype != target.dtype:
                raise ValueError(f"saved replay {name} is {saved.dtype}{list(saved.shape)}, "
                                 f"expected {target.dtype}{list(target.shape)}")
            target[...] = saved
        for side in ("final_obs", "start_stacks"):
            keys, values = tensors[f"replay.{side}_keys"].numpy(), tensors[f"replay.{side}"].numpy()
            setattr(self, side, {(int(s), int(e)): values[i].copy() for i, (s, e) in enumerate(keys)})
        self.written = int(tensors["replay.written"][0])
        self._pending = False

    def can_sample(self, n_steps: int) -> bool:
        return self.written - 1 - n_steps >= self._oldest_start()

    def sample(self, batch_size: int, n_steps: int, rng: np.random.Generator, to_tensor, device) -> ReplaySample:
        """``batch_size`` windows of ``n_steps``, uniformly over start time and env stream."""
        if not self.can_sample(n_steps):
            raise RuntimeError(f"replay holds too few steps for {n_steps}-step windows")
        # A window starting at t needs the observation at t + n_steps stored and not overwritten.
        start = rng.integers(self._oldest_start(), self.written - n_steps, size=batch_size)
        env = rng.integers(0, self.num_envs, size=batch_size)
        window = start[:, None] + np.arange(n_steps)  # [B, n] absolute vector steps
        slots = window % self.slots
        terminated = self.terminated[slots, env[:, None]]
        truncated = self.truncated[slots, env[:, None]]
        done = terminated | truncated
        # Bootstrap from the state after the first episode end, or after the window.
        first_done = np.where(done.any(axis=1), done.argmax(axis=1), n_steps - 1)
        boot_time = start + first_done + 1
        bootstrap = self.observations(boot_time, env)
        ended_by_cut = truncated[np.arange(batch_size), first_done] & done.any(axis=1)
        for i in np.flatnonzero(ended_by_cut):
            bootstrap[i] = self.final_obs[(int(slots[i, first_done[i]]), int(env[i]))]
        return ReplaySample(
            obs=to_tensor(self.observations(start, env)),
            actions=torch.as_tensor(self.actions[slots[:, 0], env], device=device),
            rewards=torch.as_tensor(self.rewards[slots, env[:, None]].T.copy(), device=device),
            kl=torch.as_tensor(self.kl[slots, env[:, None]].T.copy(), device=device),
            terminated=torch.as_tensor(terminated.T.copy(), device=device),
            truncated=torch.as_tensor(truncated.T.copy(), device=device),
            bootstrap_obs=to_tensor(bootstrap),
        )
