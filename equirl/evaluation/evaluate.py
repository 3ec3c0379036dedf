"""Evaluation: full episodes with the raw score, in parallel, seeded; results.json; --verify.

``episodes`` environments run side by side in one vector env (ale-py's C++ one for Atari) and
each plays exactly one episode, its first: the sample is not biased towards short episodes, as
it is when a few envs play until N episodes have finished, and episode ``i`` always starts from
seed ``protocol.seed + i`` (see :meth:`Protocol.episode_seeds`), so the same command gives the
same numbers. An env whose episode has ended keeps being stepped (the vector env steps all of
them) with action 0, and its rewards are no longer counted; the agent only sees the envs still
playing.
"""
from __future__ import annotations

import datetime
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from typing import Protocol as TypingProtocol

import numpy as np
import torch

from .. import __version__
from ..hub import format as fmt
from ..zoo.envs import EnvSpec, make_vector_env, rom_md5, spec_from_id
from .protocol import HUMAN_REFERENCE, Protocol, ProtocolError, human_normalized

RESULTS_FILE = fmt.RESULTS_FILE
RESULTS_FORMAT_VERSION = 1
MAX_RESULTS_BYTES = 16 << 20  # 30 episodes take about 4 KB; a repo's file is read only up to this


class EvaluationError(RuntimeError):
    """An evaluation that could not finish or be verified, with the reason."""


class Actor(TypingProtocol):
    """What evaluation needs of an agent: a batch of observations in, one action per row out."""

    def act(self, obs: np.ndarray, greedy: bool = ...) -> np.ndarray: ...


@dataclass
class EvalResult:
    """Per-episode raw scores and lengths (agent steps), and the protocol and env that made them."""

    scores: list[float]
    lengths: list[int]
    truncated: list[bool] = field(default_factory=list)
    """True where the episode hit the frame cap (or the env's time limit) instead of ending."""
    seeds: list[int] = field(default_factory=list)
    protocol: Protocol | None = None
    spec: EnvSpec | None = None
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return len(self.scores)

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        """Population standard deviation (ddof=0), as SB3 and most papers report it."""
        return float(np.std(self.scores))

    @property
    def median(self) -> float:
        return float(np.median(self.scores))

    @property
    def min(self) -> float:
        return float(np.min(self.scores))

    @property
    def max(self) -> float:
        return float(np.max(self.scores))

    @property
    def human_normalized(self) -> float | None:
        """Human-normalized mean score (:data:`~equirl.evaluation.protocol.HUMAN_REFERENCE`), or
        None where the game has no reference (or the env is not Atari)."""
        return human_normalized(self.spec, self.mean) if self.spec is not None else None

    @property
    def episodes_per_minute(self) -> float:
        return 60.0 * self.count / self.seconds if self.seconds > 0 else math.inf

    def summary(self) -> dict[str, Any]:
        normalized = self.human_normalized
        return {"mean": self.mean, "std": self.std, "median": self.median, "min": self.min, "max": self.max,
                "episodes": self.count, "human_normalized": normalized,
                "human_normalized_reference": HUMAN_REFERENCE if normalized is not None else None}


def evaluation_spec(agent: Any, env_id: EnvSpec | str | None) -> EnvSpec:
    """The env an agent is evaluated on before the protocol is applied.

    None: the spec recorded with the agent (``agent.env_spec``, set by training and by
    ``equirl.load``). An id: the agent's recorded spec if it is for that id (exactly the env
    it was trained on), else what the id means today. A spec: that spec.
    """
    recorded = getattr(agent, "env_spec", None)
    if env_id is None:
        if recorded is None:
            raise ProtocolError("this agent records no environment (no env_spec); pass an env id")
        return recorded
    if isinstance(env_id, EnvSpec):
        return env_id
    if recorded is not None and recorded.env_id == env_id:
        return recorded
    return spec_from_id(env_id)


def evaluate(agent: Actor, env_id: EnvSpec | str | None = None, episodes: int = 30, seed: int = 0,
             greedy: bool = True, *, sticky: float | None = None, full_game: bool = True,
             max_steps: int = 1_000_000) -> EvalResult:
    """Evaluate ``agent`` on ``env_id`` (an id, a recorded spec, or None for the agent's own
    env) with the standard protocol; ``sticky`` overrides the env id's sticky-action default."""
    protocol = Protocol(episodes=episodes, seed=seed, greedy=greedy, sticky=sticky, full_game=full_game)
    return run_protocol(agent, evaluation_spec(agent, env_id), protocol, max_steps=max_steps)


def run_protocol(agent: Actor, base: EnvSpec | str, protocol: Protocol, max_steps: int = 1_000_000) -> EvalResult:
    """Play ``protocol.episodes`` episodes of ``protocol.env_spec(base)`` side by side."""
    spec = protocol.env_spec(base)
    n = protocol.episodes
    start = time.perf_counter()
    env = make_vector_env(spec, n)
    try:
        check_fits(agent, spec.env_id, env.num_actions, env.obs_info.shape)
        with seeded_sampling(agent, protocol.seed):
            obs = env.reset(seed=protocol.seed)
            return _play_one_episode_each(agent, env, obs, spec, protocol, max_steps, start)
    finally:
        env.close()


def _play_one_episode_each(agent: Actor, env: Any, obs: np.ndarray, spec: EnvSpec, protocol: Protocol,
                           max_steps: int, start: float) -> EvalResult:
    n = protocol.episodes
    scores = np.zeros(n, dtype=np.float64)
    lengths = np.zeros(n, dtype=np.int64)
    truncated = np.zeros(n, dtype=bool)
    running = np.ones(n, dtype=bool)
    actions = np.zeros(n, dtype=np.int64)
    for _ in range(max_steps):
        playing = np.flatnonzero(running)
        actions[:] = 0
        actions[playing] = np.asarray(agent.act(obs[playing], greedy=protocol.greedy)).reshape(-1)
        step = env.step(actions)
        scores[playing] += step.rewards[playing]  # the raw game reward: the env never clips
        lengths[playing] += 1
        ended = running & (step.terminated | step.truncated)
        truncated[ended] = step.truncated[ended] & ~step.terminated[ended]
        running &= ~ended
        obs = step.obs
        if not running.any():
            break
    else:
        raise EvaluationError(f"{int(running.sum())} of {n} episode(s) of {spec.env_id} did not end within "
                              f"{max_steps} steps; does the env have a time limit?")
    return EvalResult(scores=[float(s) for s in scores], lengths=[int(k) for k in lengths],
                      truncated=[bool(t) for t in truncated], seeds=protocol.episode_seeds(), protocol=protocol,
                      spec=spec, seconds=time.perf_counter() - start)


def check_fits(agent: Any, env_id: str, num_actions: int, obs_shape: tuple[int, ...]) -> None:
    """An agent built for other observations or actions would fail deep inside torch, or worse,
    play with the wrong action meanings: say so up front."""
    obs_info, agent_actions = getattr(agent, "obs_info", None), getattr(agent, "num_actions", None)
    if agent_actions is not None and agent_actions != num_actions:
        raise EvaluationError(f"the agent has {agent_actions} actions and {env_id} has {num_actions}")
    if obs_info is not None and tuple(obs_info.shape) != tuple(obs_shape):
        raise EvaluationError(f"the agent takes observations of shape {tuple(obs_info.shape)} and "
                              f"{env_id} gives {tuple(obs_shape)}")


@contextmanager
def seeded_sampling(agent: Any, seed: int) -> Iterator[None]:
    """Sampled (stochastic) actions come from the agent's own generator: reseed it from the
    protocol seed so they repeat too, and give the agent its generator state back afterwards."""
    generator = getattr(agent, "generator", None)
    if not isinstance(generator, torch.Generator):
        yield
        return
    saved = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(saved)


# ---- results.json ------------------------------------------------------------------------

def results_dict(result: EvalResult, agent: Any = None, source: str | None = None) -> dict[str, Any]:
    """Everything needed to read, compare and re-run an evaluation, as plain JSON values."""
    from ..zoo.run_records import code_revision, package_versions

    if result.protocol is None or result.spec is None:
        raise EvaluationError("this result carries no protocol and env spec; make it with evaluate() or run_protocol()")
    spec, protocol = result.spec, result.protocol
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "library": "equirl",
        "agent": getattr(agent, "agent_id", None),
        "source": source,
        "env_id": spec.env_id,
        "policy_mode": protocol.policy_mode,
        "summary": result.summary(),
        "episodes": {"returns": [float(s) for s in result.scores], "lengths": [int(k) for k in result.lengths],
                     "truncated": [bool(t) for t in result.truncated], "seeds": [int(s) for s in result.seeds]},
        "protocol": protocol.to_dict(),
        "env": spec.to_dict(),
        "rom_md5": spec.rom_md5,
        "versions": package_versions(),
        "equirl_version": __version__,
        "code_revision": code_revision(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(result.seconds, 3),
    }


def write_results_json(path: str | Path, result: EvalResult, agent: Any = None, source: str | None = None) -> dict:
    """Write ``results_dict(...)`` to ``path`` atomically (temp file + rename); returns it."""
    data = results_dict(result, agent, source)
    fmt.write_json(Path(path), data)
    return data


def read_results(source: str | Path | dict) -> dict:
    """A results dict from itself, a results.json path, or a folder holding results.json."""
    if isinstance(source, dict):
        return source
    path = Path(source)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise EvaluationError(f"no {RESULTS_FILE} at {path}: evaluate first with `equirl evaluate SOURCE --json "
                              f"{path}`")
    if path.stat().st_size > MAX_RESULTS_BYTES:
        raise EvaluationError(f"{path} is {path.stat().st_size} bytes; more than {MAX_RESULTS_BYTES} is not a "
                              f"results.json")
    try:
        data = fmt.read_json(path)
    except ValueError as err:
        raise EvaluationError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict) or not {"protocol", "env", "episodes"} <= set(data):
        raise EvaluationError(f"{path} is not an equirl results.json (needs protocol, env and episodes)")
    return data


# ---- --verify ----------------------------------------------------------------------------

# The env settings a protocol sets; everything else in a stored spec must be what the agent
# was built for, so a results.json cannot make verification run some other env.
_PROTOCOL_ALE_KEYS = {"episodic_life", "noop_max", "max_num_frames_per_episode", "repeat_action_probability"}


@dataclass
class Verification:
    reproduced: bool
    stored: list[float]
    stored_lengths: list[int]
    measured: EvalResult
    mismatches: list[int]
    """Indices of episodes whose score or length differs."""
    notes: list[str]

    def describe(self) -> str:
        n = len(self.stored)
        if self.reproduced:
            return f"reproduced: all {n} episodes give the stored scores and lengths (mean {self.measured.mean:.2f})"
        shown = ", ".join(f"#{i} (seed {self.measured.seeds[i]}): stored {self.stored[i]:g} in "
                          f"{self.stored_lengths[i]} steps, now {self.measured.scores[i]:g} in "
                          f"{self.measured.lengths[i]}" for i in self.mismatches[:5])
        more = f" and {len(self.mismatches) - 5} more" if len(self.mismatches) > 5 else ""
        text = f"NOT reproduced: {len(self.mismatches)} of {n} episodes differ: {shown}{more}"
        return "; ".join([text, *self.notes])


def _fixed_settings(spec: EnvSpec) -> dict[str, Any]:
    """The settings of a spec that no protocol changes, flat (``ale.frameskip``, ...)."""
    flat = {k: v for k, v in spec.to_dict().items() if k not in ("ale", "reward_clipping")}
    flat.update({f"ale.{k}": v for k, v in dict(spec.ale).items() if k not in _PROTOCOL_ALE_KEYS})
    return flat


def _stored_spec(data: dict, agent: Any) -> EnvSpec:
    stored = EnvSpec.from_dict(data["env"])
    recorded = getattr(agent, "env_spec", None)
    reference = recorded if recorded is not None and recorded.env_id == stored.env_id else spec_from_id(stored.env_id)
    mine, theirs = _fixed_settings(reference), _fixed_settings(stored)
    if mine != theirs:
        different = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise EvaluationError(f"the results' env differs from {stored.env_id} as this agent knows it "
                              f"(in {', '.join(different)}); refusing to verify against it")
    return stored


def verify(source: str | Path | dict, agent: Actor) -> Verification:
    """Re-run the protocol stored in ``source`` (a results dict, results.json, or its folder)
    and compare every episode's score and length exactly."""
    data = read_results(source)
    try:
        protocol = Protocol.from_dict(data["protocol"])
        spec = _stored_spec(data, agent)
        stored_scores = [float(s) for s in data["episodes"]["returns"]]
        stored_lengths = [int(k) for k in data["episodes"]["lengths"]]
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise EvaluationError(f"results.json is malformed: {type(err).__name__}: {err}") from None
    if len(stored_scores) != protocol.episodes or len(stored_lengths) != protocol.episodes:
        raise EvaluationError(f"results.json holds {len(stored_scores)} episode scores for a protocol of "
                              f"{protocol.episodes}")
    measured = run_protocol(agent, spec, protocol)
    mismatches = [i for i in range(protocol.episodes)
                  if measured.scores[i] != stored_scores[i] or measured.lengths[i] != stored_lengths[i]]
    notes = []
    if mismatches:
        if spec.kind == "atari" and data.get("rom_md5") not in (None, rom_md5(spec.ale["game"])):
            notes.append(f"the ROM differs (stored md5 {data['rom_md5']}, installed {rom_md5(spec.ale['game'])})")
        from ..zoo.run_records import package_versions

        now = package_versions()
        changed = [f"{k} {v} -> {now.get(k)}" for k, v in (data.get("versions") or {}).items() if now.get(k) != v]
        if changed:
            notes.append("versions changed: " + ", ".join(changed))
    return Verification(not mismatches, stored_scores, stored_lengths, measured, mismatches, notes)
