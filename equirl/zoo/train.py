"""The one training loop: rollout -> agent.learn -> log -> checkpoint.

Writes into the run directory: ``config.json`` (agent, hyperparameters, network, env spec,
seed, versions), ``model.safetensors``, a resumable checkpoint (``checkpoint.safetensors`` +
``checkpoint.json``), ``metrics.jsonl`` (one JSON object per finished episode and per logged
update) and a TensorBoard event file under ``tb/``.
"""
from __future__ import annotations

import contextlib
import difflib
import signal
import sys
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import OMP_WAIT_POLICY_APPLIES
from ..agents import AGENTS, Agent
from ..agents.base import ReplaySample
from ..agents.networks import default_trunk_spec
from ..hub import format as fmt
from . import cpu_threads, heap, presets
from .distributed import DistributedError, Ranks
from .envs import EnvSpec, make_vector_env, spec_from_id
from .numerics import subnormals_flushed
from .replay import ReplayBuffer
from .rollout import Episode, OnPolicyCollector, ReplayCollector
from .run_records import (
    MetricsLog,
    drop_metrics_after,
    record_flush_state,
    record_training_facts,
    recorded_wall,
    run_config,
)

# Replay buffers up to this size are saved in every checkpoint (CartPole's 50k transitions take
# about 1.6 MB); Atari's are refilled after a resume instead.
REPLAY_SAVE_LIMIT = 256 * 2**20


class TrainError(ValueError):
    """Training cannot start with these arguments; the message says why."""


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {device}: CUDA is not available in this torch build ({torch.__version__})")
    if device != "cpu" and not device.startswith("cuda"):
        raise TrainError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return torch.device(device)


def build_agent(agent_id: str, config, spec: EnvSpec, obs_info, num_actions: int, device, seed: int) -> Agent:
    network_spec = {"trunk": default_trunk_spec(obs_info.shape, obs_info.dtype, config.hidden),
                    "num_actions": num_actions}
    agent = AGENTS[agent_id](config, obs_info, num_actions, network_spec, device, seed)
    agent.env_spec = spec
    agent.seed = seed
    return agent


@dataclass
class TrainResult:
    agent: Agent
    run_dir: Path | None
    steps: int
    episodes: list[Episode]
    seconds: float  # wall time of the training loop, env start-up included
    resumed_from: int = 0  # steps already done when this call started
    stepping_seconds: float = 0.0  # from the first env step on (what steps/s is measured over)
    wall_seconds: float = 0.0  # the whole run's wall time, summed over every resumed part

    @property
    def steps_per_second(self) -> float:
        # Not counting the envs' reset (about 1 s for 16 Atari games with no-op starts), as peers
        # measure throughput.
        seconds = self.stepping_seconds or self.seconds
        return (self.steps - self.resumed_from) / seconds if seconds > 0 else 0.0


def train(agent_id: str, env_id: str, steps: int, *, seed: int = 0, out: str | Path | None = None,
          device: str = "auto", overrides: dict[str, str] | None = None, config_values: dict | None = None,
          progress: bool = False, log_every: int = 100, checkpoint_every: int = 0,
          command: str | None = None, resume: bool = False, sync_check_every: int = 100,
          env_groups: int | None = None) -> TrainResult:
    """Train ``agent_id`` on ``env_id`` for ``steps`` agent steps (transitions, all envs counted).

    Everything is checked before anything is written: a bad argument raises :class:`TrainError`
    (or :class:`equirl.zoo.envs.EnvError`) and leaves no run directory behind.

    ``resume=True`` continues the run in ``out`` from its last checkpoint, with the config, env
    spec and seed recorded there, until ``steps`` in total. Restored: weights, optimizer, RNG
    states, step and update counters, and on Gymnasium envs in a single process also the env
    states, observations, running episodes and soft-q's replay buffer: the resumed run is then the
    uninterrupted one. Atari emulators cannot be saved (the games restart with new seeds, and
    soft-q refills its buffer for ``learning_starts`` steps).

    Under ``torchrun`` (WORLD_SIZE > 1) this is one rank of a data-parallel run (see
    :mod:`equirl.zoo.distributed`): ``num_envs``, and soft-q's ``buffer_size`` and
    ``batch_size``, are split over the ranks, gradients are averaged, rank 0 alone writes
    ``out``, and every ``sync_check_every`` updates the ranks compare parameter fingerprints.

    ``env_groups`` (on-policy agents on Atari, one process): step the envs in that many groups,
    acting for one group while the others emulate (see OnPolicyCollector). The segments are the
    ones lockstep stepping gives. None picks 2 on a GPU, where acting leaves the CPU cores idle,
    and 1 on CPU, where the network needs the cores the emulators use (slower there: BENCHMARKS.md).
    """
    if agent_id not in AGENTS:
        close = difflib.get_close_matches(agent_id, list(AGENTS), n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise TrainError(f"unknown agent {agent_id!r}; {hint}choose one of: {', '.join(AGENTS)}")
    if steps <= 0:
        raise TrainError(f"--steps must be positive, got {steps}")
    run_dir = Path(out) if out is not None else None
    ranks = Ranks.from_environment()
    torch_device = ranks.device(resolve_device(device))
    if torch_device.type == "cpu" and torch.get_num_threads() > 1 and not OMP_WAIT_POLICY_APPLIES \
            and not cpu_threads.can_release():
        warnings.warn("torch was imported before equirl, so OpenMP's idle threads spin on the cores the "
                      "envs need (Atari training ~15% slower on few cores): import equirl first, or set "
                      "OMP_WAIT_POLICY=PASSIVE before starting Python", RuntimeWarning, stacklevel=2)
    heap.keep_freed_blocks()  # for the rest of the process: see equirl/zoo/heap.py
    ranks.start(torch_device)
    try:
        with subnormals_flushed() as flush:
            return _train(agent_id, env_id, steps, seed, run_dir, torch_device, ranks, overrides, config_values,
                          progress, log_every, checkpoint_every, command, resume, sync_check_every, flush,
                          env_groups)
    finally:
        ranks.stop()


def _train(agent_id, env_id, steps, seed, run_dir, torch_device, ranks, overrides, config_values,
           progress, log_every, checkpoint_every, command, resume, sync_check_every, flush,
           env_groups) -> TrainResult:
    checkpoint_bytes = None
    if resume:
        config, spec, seed, checkpoint_bytes = _resume_setup(agent_id, env_id, run_dir, overrides, config_values,
                                                             ranks, torch_device)
    else:
        spec = spec_from_id(env_id)
        try:
            config = presets.make_config(agent_id, presets.family_of(spec.kind), overrides, **(config_values or {}))
        except (TypeError, ValueError) as err:
            raise TrainError(str(err)) from None
        if ranks.is_main and run_dir is not None and (run_dir / fmt.CONFIG_FILE).exists():
            raise TrainError(f"{run_dir} already holds a run (config.json); choose another --out or --resume")
    try:
        local_envs = ranks.split(config.num_envs, "num_envs")
        if not agent_on_policy(agent_id):
            ranks.split(config.buffer_size, "buffer_size")
            ranks.split(config.batch_size, "batch_size")
    except DistributedError as err:
        raise TrainError(str(err)) from None
    if not ranks.is_main:
        run_dir = None  # rank 0 alone writes the run directory
    groups = _env_groups(env_groups, agent_id, spec, local_envs, torch_device, ranks)
    if groups > 1 and torch_device.type == "cpu":
        warnings.warn(f"env_groups={groups} on CPU: acting then competes with the emulators for the cores, "
                      "which made a3c ~3.6x slower than lockstep on 2 cores (BENCHMARKS.md); it is meant for "
                      "GPUs", RuntimeWarning, stacklevel=3)

    env = make_vector_env(spec, local_envs, groups)
    try:
        agent = build_agent(agent_id, config, spec, env.obs_info, env.num_actions, torch_device, seed)
        start = {"steps": 0, "updates": 0}
        if resume:
            start = fmt.load_checkpoint_bytes(checkpoint_bytes, agent)
        elif run_dir is not None:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                fmt.write_json(run_dir / fmt.CONFIG_FILE, run_config(
                    agent, {"total_steps": steps, "device": str(torch_device), "command": command,
                            "processes": ranks.world, "env_groups": groups, "flush_denormal": {"0": flush}}))
            except OSError as err:
                raise TrainError(f"cannot write the run directory {run_dir}: {err.strerror or err}") from None
        if resume and run_dir is not None:
            drop_metrics_after(run_dir / "metrics.jsonl", int(start["steps"]))
            record_flush_state(run_dir, int(start["steps"]), flush)
        if ranks.active:
            agent.rows = (ranks.rank * local_envs, config.num_envs)
            agent.reduce_gradients = ranks.average_gradients
            ranks.check_identical(agent.network, torch_device)  # same seed, same initial weights
        # Wall time so far, carried in the checkpoint (a run killed and resumed keeps counting);
        # checkpoints older than that field: the total recorded in config.json.
        prior_wall = float(start.get("wall_seconds", recorded_wall(run_dir) if resume else 0.0))
        # A checkpoint from before wall time was checkpointed: say from which step it is counted.
        timed_from = int(start.get("timed_from_step", 0 if "wall_seconds" in start or not resume else start["steps"]))
        try:
            result = _run(agent, env, steps, seed, run_dir, progress and ranks.is_main, log_every, checkpoint_every,
                          start_steps=int(start["steps"]), start_updates=int(start["updates"]),
                          start_episodes=int(start.get("episodes", 0)), ranks=ranks,
                          sync_check_every=sync_check_every, resume_state=start if resume else None,
                          prior_wall=prior_wall, timed_from=timed_from)
        finally:
            agent.rows, agent.reduce_gradients = None, None
    finally:
        env.close()
    return result


def _env_groups(requested: int | None, agent_id: str, spec: EnvSpec, num_envs: int, device: torch.device,
                ranks: Ranks) -> int:
    """How many groups the envs step in (see ``train``'s ``env_groups``)."""
    possible = agent_on_policy(agent_id) and spec.kind == "atari" and not ranks.active
    if requested is None:
        return 2 if possible and device.type == "cuda" and num_envs % 2 == 0 else 1
    if requested == 1:
        return 1
    if requested < 1 or not possible or num_envs % requested:
        raise TrainError(f"env_groups={requested}: envs step in groups only for the on-policy agents on Atari "
                         f"in one process, in groups that divide num_envs ({num_envs})")
    return requested


def agent_on_policy(agent_id: str) -> bool:
    return AGENTS[agent_id].on_policy


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM: a checkpoint was written and training stopped."""

    def __init__(self, steps: int, signal_name: str):
        super().__init__(f"{signal_name} at step {steps}: checkpoint written")
        self.steps, self.signal_name = steps, signal_name


@contextlib.contextmanager
def _stop_requests(enabled: bool):
    """Turn SIGINT/SIGTERM into a request the loop honours after the current update."""
    requested: list[str] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield requested
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda number, frame: requested.append(signal.Signals(number).name))
    try:
        yield requested
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _resume_setup(agent_id, env_id, run_dir, overrides, config_values, ranks: Ranks, device):
    """The recorded config, env spec, seed and checkpoint bytes of the run in ``run_dir``.
    Rank 0 reads them and sends them to the other ranks, which need no shared file system."""
    if overrides or config_values:
        raise TrainError("--resume continues with the recorded hyperparameters; --set cannot change them")
    config_bytes = checkpoint_bytes = b""
    if ranks.is_main:
        if run_dir is None or not (run_dir / fmt.CHECKPOINT_STATE).exists():
            raise TrainError(f"--resume: {run_dir} holds no checkpoint to resume from")
        try:
            config_bytes = (run_dir / fmt.CONFIG_FILE).read_bytes()
            checkpoint_bytes = (run_dir / fmt.CHECKPOINT_TENSORS).read_bytes()
        except OSError as err:
            raise TrainError(f"--resume: cannot read {run_dir}: {err.strerror or err}") from None
    config_bytes = ranks.broadcast_bytes(config_bytes, device)
    checkpoint_bytes = ranks.broadcast_bytes(checkpoint_bytes, device)
    from ..hub.schema import parse_config_bytes

    try:  # the same validation a loaded repo gets
        saved = parse_config_bytes(config_bytes)
    except ValueError as err:
        raise TrainError(f"--resume: {run_dir}/config.json: {err}") from None
    if saved["agent"] != agent_id or saved["env"]["env_id"] != env_id:
        raise TrainError(f"--resume: {run_dir} is a {saved['agent']} run on {saved['env']['env_id']}, "
                         f"not {agent_id} on {env_id}")
    return saved["agent_config"], EnvSpec.from_dict(saved["env"]), saved["seed"], checkpoint_bytes


def _run(agent: Agent, env, total: int, seed: int, run_dir: Path | None, progress: bool, log_every: int,
         checkpoint_every: int, start_steps: int = 0, start_updates: int = 0, start_episodes: int = 0,
         ranks: Ranks | None = None, sync_check_every: int = 100, resume_state: dict | None = None,
         prior_wall: float = 0.0, timed_from: int = 0) -> TrainResult:
    cfg = agent.config
    ranks = ranks or Ranks()
    log = MetricsLog(run_dir)
    recent: deque[float] = deque(maxlen=20)
    episodes: list[Episode] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=start_steps, unit="step", dynamic_ncols=True, file=sys.stderr)
    # A resumed run draws new env seeds and replay indices, not a replay of the first part.
    stream_seed = seed + start_steps
    # Each rank samples its replay minibatches with its own stream (its buffer holds other data).
    rng = np.random.default_rng(stream_seed if not ranks.active else [stream_seed, ranks.rank])
    steps, updates, last_checkpoint = start_steps, start_updates, start_steps
    start = time.perf_counter()
    # Rank r's envs get the seeds one process would give envs r*E .. r*E+E-1.
    env_seed = stream_seed + ranks.rank * env.num_envs

    if agent.on_policy:
        collector = OnPolicyCollector(env, cfg.n_steps, env_seed)
        rows_per_iteration = env.num_envs * cfg.n_steps
    else:
        collector = ReplayCollector(env, env_seed)
        rows_per_iteration = env.num_envs
        replay = ReplayBuffer(cfg.buffer_size // ranks.world, env.num_envs, env.obs_info.shape, env.obs_info.dtype,
                              frame_stack=env.spec.kind == "atari")
        batch_size = cfg.batch_size // ranks.world
        # Updates start once the (re)filled buffer holds learning_starts steps.
        learn_from, update_base = start_steps + cfg.learning_starts, start_updates

    # Exact resume: a single process on Gymnasium envs saves the envs' states, the observations and
    # running episodes, and soft-q's replay buffer and sampling stream, so a resumed run is the
    # uninterrupted run. (ALE's vector env cannot save its emulators; a buffer over
    # REPLAY_SAVE_LIMIT is refilled instead; several processes restart their envs.)
    exact = (not ranks.active and env.can_save_state
             and (agent.on_policy or replay.nbytes <= REPLAY_SAVE_LIMIT))
    if exact and resume_state and "env_state" in resume_state:
        saved = resume_state["tensors"]
        try:
            env.set_state(resume_state["env_state"])
            collector.load_state(saved)
            if not agent.on_policy:
                replay.load_state(saved)
                rng.bit_generator.state = resume_state["replay_rng"]
                learn_from, update_base = cfg.learning_starts, 0  # as if never stopped
        except (KeyError, ValueError) as err:
            raise TrainError(f"--resume: the checkpoint's env or replay state does not fit this run: {err}") from None

    due = 0  # replay agents: the updates due once the current vector step is taken
    metrics = None  # the latest update's

    def next_batch() -> ReplaySample | None:
        if updates < due and replay.can_sample(cfg.n_steps):
            return replay.sample(batch_size, cfg.n_steps, rng, agent.to_tensor, agent.device)
        return None

    def learn(batch: ReplaySample | None) -> None:
        nonlocal metrics, updates
        while batch is not None:
            metrics = agent.learn(batch)
            updates += 1
            batch = next_batch()

    stepping_start = time.perf_counter()

    def wall_seconds() -> float:
        """The whole run's wall time: earlier parts (from the checkpoint) plus this one."""
        return prior_wall + time.perf_counter() - start

    def finished(new: list[Episode]) -> None:
        for episode in new:
            episodes.append(episode)
            recent.append(episode.score)
            log.episode(steps, episode)

    def checkpoint() -> None:
        if run_dir is None:
            return
        state = {"steps": steps, "updates": updates, "episodes": start_episodes + len(episodes),
                 "wall_seconds": round(wall_seconds(), 1)}
        if timed_from:
            state["timed_from_step"] = timed_from
        tensors = {}
        if exact:
            state["env_state"] = env.get_state()
            tensors.update(collector.state_tensors())
            if not agent.on_policy:
                state["replay_rng"] = rng.bit_generator.state
                tensors.update(replay.state_tensors())
        fmt.save_checkpoint(run_dir, agent, state, tensors)
        # config.json's steps, wall time and hardware (the model card's) follow every checkpoint, so
        # a run killed at any moment, or copied between checkpoints, describes the weights it holds.
        record_training_facts(run_dir, steps, state["wall_seconds"], agent.device, ranks.world, timed_from)

    with _stop_requests(run_dir is not None or ranks.active) as stop_requested:
        try:
            if run_dir is not None and start_steps == 0:
                checkpoint()  # from the first moment on, the run dir loads and resumes
            while steps < total:
                agent.set_progress(steps / total)
                metrics = None
                before = steps
                if agent.on_policy:
                    rollout, new = collector.collect(agent)
                    steps += rollout.actions.numel() * ranks.world
                    metrics = agent.learn(rollout)
                    updates += 1
                else:
                    steps += env.num_envs * ranks.world
                    due = update_base + max(0, steps - learn_from) // cfg.train_freq
                    # The updates due after this step run inside it, while the envs step.
                    new = collector.step(agent, replay, next_batch, learn)
                stop = bool(stop_requested)
                if ranks.active:
                    # Every rank stops, or raises, at the same iteration: a stop or NaN on any one
                    # of them is seen by all, and rank 0 logs every rank's episodes.
                    # (A NaN on one rank makes the mean metrics NaN, so every rank raises below.)
                    flags, metrics, new = ranks.exchange(agent.device, [float(stop)], metrics, new,
                                                         rows_per_iteration)
                    stop = flags[0] > 0  # a signal arriving after the exchange is seen next time
                    if sync_check_every and metrics is not None and updates % sync_check_every == 0:
                        digest = ranks.check_identical(agent.network, agent.device)
                        log.record({"kind": "sync", "step": steps, "updates": updates, "processes": ranks.world,
                                    "fingerprint": digest})
                finished([Episode(score, length) for score, length in new])
                elapsed = time.perf_counter() - start
                sps = (steps - start_steps) / elapsed if elapsed > 0 else 0.0
                # Checked after every update, before any checkpoint can save a diverged network.
                if metrics is not None and not all(np.isfinite(v) for v in metrics.values()):
                    bad = ", ".join(k for k, v in metrics.items() if not np.isfinite(v))
                    raise FloatingPointError(f"training diverged at step {steps} (non-finite {bad}); "
                                             "the last checkpoint is intact")
                if metrics is not None and updates % log_every == 0:
                    log.update(steps, metrics, sps)
                if bar is not None:
                    bar.update(steps - before)
                    if recent:
                        bar.set_postfix(sps=f"{sps:.0f}", ret=f"{np.mean(recent):.1f}", refresh=False)
                if stop:
                    checkpoint()
                    raise TrainingInterrupted(steps, stop_requested[0] if stop_requested else "SIGTERM")
                if run_dir is not None and checkpoint_every and steps - last_checkpoint >= checkpoint_every:
                    checkpoint()
                    last_checkpoint = steps
            agent.set_progress(1.0)
            if run_dir is not None:
                checkpoint()
        finally:
            if bar is not None:
                bar.close()
            log.close()
    end = time.perf_counter()
    return TrainResult(agent, run_dir, steps, episodes, end - start, start_steps, end - stepping_start,
                       prior_wall + end - start)
