"""Every environment is built here.

Atari ids (``ALE/Pong-v5``, ``PongNoFrameskip-v4``, ...) run on ale-py's C++ vector env with the
standard preprocessing (84x84 grayscale, 4-frame stack, frameskip 4 with max-pooling, up to 30
no-op starts); any other Gymnasium id with Discrete actions runs in Gymnasium's synchronous
vector env. :class:`EnvSpec` records every setting, so ``make_vector_env(EnvSpec.from_dict(d))``
rebuilds the same environment later, whatever the defaults of this module become.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np

from ..agents.base import ObsInfo, dataclass_from_dict
from . import cpu_threads

try:  # ale-py registers the ALE/... and ...NoFrameskip-v4 ids
    import ale_py

    gym.register_envs(ale_py)
except ImportError:  # pragma: no cover - ale-py is a dependency, but keep classic envs usable
    ale_py = None

ATARI_ENTRY_POINT = "ale_py.env:AtariEnv"


class EnvError(ValueError):
    """An environment id or setting that equirl cannot run, with the reason."""


@dataclass
class EnvSpec:
    """Everything needed to rebuild an environment exactly."""

    env_id: str
    kind: str  # "atari" or "gymnasium"
    reward_clipping: bool = False
    """Train on sign(reward); logged episode returns are always the raw game score."""
    ale: dict[str, Any] = field(default_factory=dict)
    """ale_py.vector_env.AtariVectorEnv keyword arguments, all of them (Atari only)."""
    rom_md5: str | None = None
    gym_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments to gymnasium.make (non-Atari only)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> EnvSpec:
        return dataclass_from_dict(cls, data, EnvError, "env spec")


def _registry_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.6)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise EnvError(f"unknown environment id {env_id!r}{hint}")
    return gym.spec(env_id)


def spec_from_id(env_id: str) -> EnvSpec:
    """The spec an id means: v5 has sticky actions 0.25, NoFrameskip-v4 none (Machado et al. 2018)."""
    registered = _registry_spec(env_id)
    if registered.entry_point != ATARI_ENTRY_POINT:
        return EnvSpec(env_id=env_id, kind="gymnasium")
    kwargs = registered.kwargs
    if kwargs.get("obs_type", "rgb") != "rgb":
        raise EnvError(f"{env_id!r} has obs_type={kwargs['obs_type']!r}; equirl trains on pixels: use the id without '-ram'")
    frameskip = kwargs.get("frameskip", 4)
    if not isinstance(frameskip, int):
        raise EnvError(f"{env_id!r} skips a random number of frames {frameskip}; use 'ALE/...-v5' or '...NoFrameskip-v4'")
    game = kwargs["game"]
    ale = {
        "game": game,
        "repeat_action_probability": float(kwargs.get("repeat_action_probability", 0.25)),
        "full_action_space": bool(kwargs.get("full_action_space", False)),
        # NoFrameskip ids mean "the agent wrappers skip 4 frames", as in DQN and A2C.
        "frameskip": 4,
        "max_num_frames_per_episode": int(kwargs.get("max_num_frames_per_episode", 108_000)),
        "noop_max": 30,
        "episodic_life": False,
        "use_fire_reset": True,
        "img_height": 84, "img_width": 84, "grayscale": True, "stack_num": 4, "maxpool": True,
    }
    return EnvSpec(env_id=env_id, kind="atari", reward_clipping=True, ale=ale, rom_md5=rom_md5(game))


def rom_md5(game: str) -> str:
    path = ale_py.roms.get_rom_path(game)
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


class Step(NamedTuple):
    obs: np.ndarray
    rewards: np.ndarray  # float32, the raw game reward
    terminated: np.ndarray  # bool
    truncated: np.ndarray  # bool
    final_obs: np.ndarray | None  # [num_envs, ...]: rows of envs that ended this step are valid


class VectorEnv:
    """Same-step autoreset vector env: when an episode ends, ``obs`` already holds the first
    observation of the next one and ``final_obs`` the last observation of the one that ended.

    ``groups > 1`` (Atari only) splits the envs into that many equal groups of consecutive envs,
    each its own ale-py vector env with its own emulator threads, stepped with :meth:`send` /
    :meth:`recv`: while one group emulates, the caller can act for another (see
    OnPolicyCollector). Env ``i`` gets the same seed either way, so the games are the same."""

    def __init__(self, spec: EnvSpec, num_envs: int, groups: int = 1):
        self.spec = spec
        self.num_envs = num_envs
        if groups < 1 or num_envs % groups:
            raise EnvError(f"{num_envs} envs do not split into {groups} equal groups")
        if groups > 1 and spec.kind != "atari":
            raise EnvError(f"{spec.env_id!r}: only Atari envs step in groups (ale-py's send/recv)")
        self.groups = groups
        self.group_size = num_envs // groups
        self._pending: np.ndarray | None = None
        if spec.kind == "atari":
            from ale_py.vector_env import AtariVectorEnv

            settings = {k: v for k, v in spec.ale.items() if k != "game"}
            # One group: ale-py's default, a thread per core. Several: the cores shared out, as
            # the groups emulate at the same time.
            threads = {} if groups == 1 else {"num_threads": max(1, (os.cpu_count() or 1) // groups)}
            self._groups = [AtariVectorEnv(spec.ale["game"], self.group_size, autoreset_mode="SameStep",
                                           reward_clipping=False, **threads, **settings) for _ in range(groups)]
            self._env = self._groups[0]
        elif spec.kind == "gymnasium":
            self._env = gym.make_vec(spec.env_id, num_envs, vectorization_mode="sync",
                                     vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
                                     **spec.gym_kwargs)
            self._groups = [self._env]
        else:
            raise EnvError(f"unknown env kind {spec.kind!r}")
        action_space = self._env.single_action_space
        if not isinstance(action_space, gym.spaces.Discrete):
            self.close()
            raise EnvError(f"{spec.env_id!r} has {action_space} actions; equirl's agents need a Discrete action space")
        obs_space = self._env.single_observation_space
        if not isinstance(obs_space, gym.spaces.Box):
            self.close()
            raise EnvError(f"{spec.env_id!r} has {obs_space} observations; equirl needs a Box observation space")
        self.num_actions = int(action_space.n)
        self.obs_info = ObsInfo(tuple(obs_space.shape), np.dtype(obs_space.dtype).name)

    def group_rows(self, group: int) -> slice:
        """The envs of ``group``, as rows of a ``num_envs`` batch."""
        return slice(group * self.group_size, (group + 1) * self.group_size)

    def reset(self, seed: int) -> np.ndarray:
        if self.groups == 1:
            return self._env.reset(seed=seed)[0]
        # Consecutive seeds across the groups: env i is seeded seed + i, as in one group.
        return np.concatenate([env.reset(seed=seed + g * self.group_size)[0] for g, env in enumerate(self._groups)])

    def step(self, actions: np.ndarray) -> Step:
        """Step every env (all groups) and wait for all of them."""
        if self.groups == 1:
            if self.spec.kind == "atari":
                cpu_threads.release()  # the emulator's threads get the cores torch's workers spin on
            return self._to_step(*self._env.step(actions))
        for g in range(self.groups):
            self.send(g, actions[self.group_rows(g)])
        steps = [self.recv(g) for g in range(self.groups)]
        final = None
        if any(s.final_obs is not None for s in steps):
            final = np.concatenate([s.final_obs if s.final_obs is not None else np.zeros_like(s.obs) for s in steps])
        return Step(*(np.concatenate(parts) for parts in list(zip(*steps))[:4]), final)

    def send(self, group: int, actions: np.ndarray, release_cores: bool = True) -> None:
        """Start stepping ``group``'s envs with ``actions`` (one per env of the group): Atari's
        emulate on their own threads until :meth:`recv`, while the caller goes on.
        ``release_cores``: end torch's idle workers first, so that they do not spin on the cores
        the emulators need (cpu_threads.py). A caller about to run torch work meanwhile passes
        False: its workers would only have to start again (soft-q's pipelined step gained 3.7%
        over the plain order keeping them, 1.2-1.4% ending them here or before :meth:`recv`;
        BENCHMARKS.md)."""
        if self.spec.kind != "atari":
            self._pending = actions  # Gymnasium's sync vector env: stepped, synchronously, at recv
            return
        if release_cores:
            cpu_threads.release()
        self._groups[group].send(np.asarray(actions))

    def recv(self, group: int) -> Step:
        """Wait for the step :meth:`send` started on ``group``."""
        if self.spec.kind != "atari":
            actions, self._pending = self._pending, None
            return self.step(actions)
        obs, rewards, terminated, truncated, info = self._groups[group].recv()
        return self._to_step(obs, rewards, terminated, truncated, info)

    @staticmethod
    def _to_step(obs, rewards, terminated, truncated, info) -> Step:
        done = terminated | truncated
        final = None
        if done.any():
            final = info["final_obs"]
            if final.dtype == object:  # gymnasium: one array or None per env
                filled = np.zeros_like(obs)
                for i in np.flatnonzero(done):
                    filled[i] = final[i]
                final = filled
        return Step(obs, np.asarray(rewards, dtype=np.float32), terminated, truncated, final)

    # ---- saving and restoring (exact resume) ------------------------------------------
    @property
    def can_save_state(self) -> bool:
        """Gymnasium envs can be saved; ale-py's C++ vector env has no clone/restore of its
        emulators, so an Atari resume restarts the games with new seeds."""
        return self.spec.kind == "gymnasium"

    def get_state(self) -> list[dict]:
        """Every sub-env's state as JSON-able data: the plain fields (numbers, strings, arrays) of
        the env and each of its wrappers, and the state of its random generator."""
        if not self.can_save_state:
            raise EnvError(f"{self.spec.env_id}: the environment state cannot be saved")
        return [[_plain_fields(layer) for layer in _layers(env)] for env in self._env.envs]

    def set_state(self, state: list[dict]) -> None:
        if not self.can_save_state or len(state) != self.num_envs:
            raise EnvError(f"{self.spec.env_id}: saved state of {len(state)} envs does not fit {self.num_envs}")
        for env, layers in zip(self._env.envs, state):
            for layer, fields in zip(_layers(env), layers, strict=True):
                _restore_fields(layer, fields)

    def close(self) -> None:
        for env in self._groups:
            env.close()


def _layers(env) -> list:
    """The wrapper chain down to the base env."""
    out = [env]
    while hasattr(out[-1], "env"):
        out.append(out[-1].env)
    return out


def _plain_fields(obj) -> dict:
    fields = {}
    for name, value in vars(obj).items():
        if isinstance(value, np.random.Generator):
            fields[name] = {"generator": value.bit_generator.state}
        elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
            fields[name] = {"array": value.tolist(), "dtype": value.dtype.name, "shape": list(value.shape)}
        elif value is None or isinstance(value, (bool, int, float, str, np.number, np.bool_)):
            fields[name] = {"value": value.item() if isinstance(value, (np.number, np.bool_)) else value}
    return fields


def _restore_fields(obj, fields: dict) -> None:
    for name, saved in fields.items():
        if "generator" in saved:
            getattr(obj, name).bit_generator.state = saved["generator"]
        elif "array" in saved:
            setattr(obj, name, np.array(saved["array"], dtype=saved["dtype"]).reshape(saved["shape"]))
        else:
            setattr(obj, name, saved["value"])


def make_vector_env(spec: EnvSpec | str, num_envs: int, groups: int = 1) -> VectorEnv:
    """The one env builder: from an id (what it means today) or a recorded spec (exactly that);
    ``groups``: see :class:`VectorEnv`."""
    if isinstance(spec, str):
        spec = spec_from_id(spec)
    return VectorEnv(spec, num_envs, groups)
