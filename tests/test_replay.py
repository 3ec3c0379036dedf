"""equirl.zoo.replay.ReplayBuffer against a brute-force log of everything that was added.

Observations encode (env, time) uniquely: obs = [env, time, +1] for the observation acted on at
vector step ``time``, and final observations of truncated episodes are [env, time, -1], so every
sampled row can be decoded and checked against the log.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from equirl.agents.base import ReplaySample
from equirl.zoo.replay import ReplayBuffer

CAPACITY, NUM_ENVS, N_STEPS = 20, 2, 3
SLOTS = CAPACITY // NUM_ENVS  # 10 slots per env stream


class Log:
    """What was added, per env stream and absolute vector step."""

    def __init__(self):
        self.obs: list[np.ndarray] = []  # [time] -> [num_envs, 3]
        self.actions: list[np.ndarray] = []
        self.rewards: list[np.ndarray] = []
        self.kl: list[np.ndarray] = []
        self.terminated: list[np.ndarray] = []
        self.truncated: list[np.ndarray] = []
        self.final_obs: dict[tuple[int, int], np.ndarray] = {}  # (env, time) -> obs

    @property
    def written(self) -> int:
        return len(self.obs)


def add_step(buf: ReplayBuffer, log: Log, rng: np.random.Generator, exclusive: bool,
             p_term: float = 0.2, p_trunc: float = 0.2) -> None:
    t = log.written
    obs = np.array([[e, t, 1.0] for e in range(NUM_ENVS)], dtype=np.float32)
    actions = rng.integers(0, 6, size=NUM_ENVS)
    # Store what float32 storage keeps, so comparisons are exact.
    rewards = rng.normal(size=NUM_ENVS).astype(np.float32)
    kl = rng.uniform(0, 2, size=NUM_ENVS).astype(np.float32)
    terminated = rng.random(NUM_ENVS) < p_term
    truncated = rng.random(NUM_ENVS) < p_trunc
    if exclusive:
        truncated &= ~terminated
    # Rows of envs that did not truncate hold junk, as a vector env's final_obs would.
    final_obs = np.full((NUM_ENVS, 3), np.nan, dtype=np.float32)
    for e in range(NUM_ENVS):
        if truncated[e]:
            final_obs[e] = [e, t, -1.0]
            log.final_obs[(e, t)] = final_obs[e].copy()
    buf.add(obs, actions, rewards, terminated, truncated, kl, final_obs)
    log.obs.append(obs)
    log.actions.append(actions.copy())
    log.rewards.append(rewards)
    log.kl.append(kl)
    log.terminated.append(terminated.copy())
    log.truncated.append(truncated.copy())


def expected_bootstrap(log: Log, env: int, start: int, n: int) -> np.ndarray:
    for j in range(start, start + n):
        if log.terminated[j][env] or log.truncated[j][env]:
            if log.truncated[j][env]:
                return log.final_obs[(env, j)]
            return log.obs[j + 1][env]
    return log.obs[start + n][env]


def check_sample(sample: ReplaySample, log: Log, n: int, batch: int) -> list[tuple[int, int]]:
    assert isinstance(sample, ReplaySample)
    assert sample.obs.shape == (batch, 3)
    assert sample.actions.shape == (batch,)
    for name in ("rewards", "kl", "terminated", "truncated"):
        assert getattr(sample, name).shape == (n, batch), name
    assert sample.terminated.dtype == torch.bool and sample.truncated.dtype == torch.bool
    assert sample.bootstrap_obs.shape == (batch, 3)
    obs = sample.obs.numpy()
    boot = sample.bootstrap_obs.numpy()
    rewards, kl = sample.rewards.numpy(), sample.kl.numpy()
    term, trunc = sample.terminated.numpy(), sample.truncated.numpy()
    actions = sample.actions.numpy()
    windows = []
    w = log.written
    for i in range(batch):
        env, start, marker = int(obs[i, 0]), int(obs[i, 1]), obs[i, 2]
        assert marker == 1.0 and obs[i, 0] == env and obs[i, 1] == start
        assert 0 <= env < NUM_ENVS
        # The whole window and its bootstrap slot are still stored (not overwritten).
        assert start >= max(0, w - SLOTS), (start, w)
        assert start + n <= w - 1, (start, n, w)
        assert actions[i] == log.actions[start][env]
        for d in range(n):
            assert rewards[d, i] == log.rewards[start + d][env]
            assert kl[d, i] == log.kl[start + d][env]
            assert term[d, i] == log.terminated[start + d][env]
            assert trunc[d, i] == log.truncated[start + d][env]
        np.testing.assert_array_equal(boot[i], expected_bootstrap(log, env, start, n),
                                      err_msg=f"env {env} start {start} written {w}")
        windows.append((env, start))
    return windows


@pytest.mark.parametrize("exclusive", [True, False], ids=["exclusive_flags", "overlapping_flags"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sample_against_log(exclusive, seed):
    rng = np.random.default_rng(100 + seed)
    buf = ReplayBuffer(CAPACITY, NUM_ENVS, (3,), "float32")
    log = Log()
    n_checked = 0
    for step in range(45):  # wraps the 10 slots four times
        add_step(buf, log, rng, exclusive)
        assert len(buf) == min(log.written, SLOTS) * NUM_ENVS
        if buf.can_sample(N_STEPS):
            sample = buf.sample(batch_size=64, n_steps=N_STEPS, rng=np.random.default_rng(step),
                                to_tensor=torch.as_tensor, device="cpu")
            check_sample(sample, log, N_STEPS, 64)
            n_checked += 1
    assert n_checked == 45 - N_STEPS


def test_bootstrap_cases_are_exercised():
    """A hand-built stream where every kind of bootstrap certainly occurs."""
    # env 0: terminal at 2, truncation at 5, terminal at 6 right after, truncation at 8;
    # env 1: no ends at all.
    plan_term = {2, 6}
    plan_trunc = {5, 8}
    buf = ReplayBuffer(CAPACITY, NUM_ENVS, (3,), "float32")
    log = Log()
    for t in range(10):
        obs = np.array([[e, t, 1.0] for e in range(NUM_ENVS)], dtype=np.float32)
        terminated = np.array([t in plan_term, False])
        truncated = np.array([t in plan_trunc, False])
        final_obs = np.zeros((NUM_ENVS, 3), dtype=np.float32)
        if truncated[0]:
            final_obs[0] = [0, t, -1.0]
            log.final_obs[(0, t)] = final_obs[0].copy()
        rewards = np.full(NUM_ENVS, t, dtype=np.float32)
        kl = np.full(NUM_ENVS, 0.5 * t, dtype=np.float32)
        actions = np.array([t % 3, (t + 1) % 3])
        buf.add(obs, actions, rewards, terminated, truncated, kl, final_obs)
        log.obs.append(obs)
        log.actions.append(actions)
        log.rewards.append(rewards)
        log.kl.append(kl)
        log.terminated.append(terminated)
        log.truncated.append(truncated)
    sample = buf.sample(batch_size=400, n_steps=N_STEPS, rng=np.random.default_rng(1),
                        to_tensor=torch.as_tensor, device="cpu")
    windows = set(check_sample(sample, log, N_STEPS, 400))
    # Starts 0..6 (window + bootstrap within the 10 stored steps) for both envs.
    assert windows == {(e, s) for e in range(NUM_ENVS) for s in range(7)}
    boot = {(int(o[0]), int(o[1])): b for o, b in zip(sample.obs.numpy(), sample.bootstrap_obs.numpy())}
    np.testing.assert_array_equal(boot[(0, 0)], [0, 3, 1])   # terminal at 2 -> next obs (reset)
    np.testing.assert_array_equal(boot[(0, 3)], [0, 5, -1])  # truncated at 5 -> final obs
    np.testing.assert_array_equal(boot[(0, 4)], [0, 5, -1])
    np.testing.assert_array_equal(boot[(0, 5)], [0, 5, -1])  # truncation first, terminal after it
    np.testing.assert_array_equal(boot[(0, 6)], [0, 7, 1])   # terminal at 6
    np.testing.assert_array_equal(boot[(1, 2)], [1, 5, 1])   # no end: s_{t+n}
    np.testing.assert_array_equal(boot[(1, 6)], [1, 9, 1])


def test_every_valid_window_is_sampled():
    rng = np.random.default_rng(7)
    buf = ReplayBuffer(CAPACITY, NUM_ENVS, (3,), "float32")
    log = Log()
    for _ in range(33):
        add_step(buf, log, rng, exclusive=True)
    sample = buf.sample(batch_size=2000, n_steps=N_STEPS, rng=np.random.default_rng(0),
                        to_tensor=torch.as_tensor, device="cpu")
    windows = check_sample(sample, log, N_STEPS, 2000)
    w = log.written
    valid = {(e, s) for e in range(NUM_ENVS) for s in range(w - SLOTS, w - N_STEPS)}
    assert set(windows) == valid
    # Roughly uniform: each of the 14 windows gets 2000/14 ~ 143 draws.
    counts = np.array([windows.count(v) for v in sorted(valid)])
    assert counts.min() > 80 and counts.max() < 220


@pytest.mark.parametrize("n", [1, 3, 5, 9, 10, 12])
def test_can_sample_and_len(n):
    rng = np.random.default_rng(n)
    buf = ReplayBuffer(CAPACITY, NUM_ENVS, (3,), "float32")
    log = Log()
    assert len(buf) == 0
    assert not buf.can_sample(n)
    with pytest.raises(RuntimeError):
        buf.sample(batch_size=4, n_steps=n, rng=rng, to_tensor=torch.as_tensor, device="cpu")
    for _ in range(25):
        add_step(buf, log, rng, exclusive=True)
        w = log.written
        assert len(buf) == min(w, SLOTS) * NUM_ENVS
        # A window of n steps plus its bootstrap observation needs n + 1 stored steps.
        expected = min(w, SLOTS) >= n + 1
        assert buf.can_sample(n) == expected, (n, w)
        if expected:
            s = buf.sample(batch_size=16, n_steps=n, rng=rng, to_tensor=torch.as_tensor, device="cpu")
            check_sample(s, log, n, 16)
        else:
            with pytest.raises(RuntimeError):
                buf.sample(batch_size=4, n_steps=n, rng=rng, to_tensor=torch.as_tensor, device="cpu")



# ---- frame-once storage of stacked frames ------------------------------------------------


class StackedStreams:
    """Synthetic stacked-frame envs: each step shifts the stack by one new random frame; an
    episode starts with a zero-padded stack (as ale-py's) or, with ``p_full``, four random frames."""

    def __init__(self, num_envs, rng, k=4, p_full=0.3):
        self.rng, self.k, self.p_full = rng, k, p_full
        self.stacks = np.stack([self._first() for _ in range(num_envs)])

    def _first(self):
        stack = self.rng.integers(1, 255, size=(self.k, 3, 2), dtype=np.uint8)
        if self.rng.random() >= self.p_full:
            stack[:-1] = 0
        return stack

    def step(self, terminated, truncated):
        final = self.stacks.copy()
        for e in range(len(self.stacks)):
            if terminated[e] or truncated[e]:
                self.stacks[e] = self._first()
            else:
                self.stacks[e] = np.concatenate([self.stacks[e, 1:], self.rng.integers(0, 255, (1, 3, 2), dtype=np.uint8)])
        return final


def fill_both(steps, capacity, num_envs, seed, check):
    rng = np.random.default_rng(seed)
    streams = StackedStreams(num_envs, rng)
    whole = ReplayBuffer(capacity, num_envs, (4, 3, 2), "uint8")
    frames = ReplayBuffer(capacity, num_envs, (4, 3, 2), "uint8", frame_stack=True)
    for _ in range(steps):
        obs = streams.stacks.copy()
        terminated = rng.random(num_envs) < 0.08
        truncated = (rng.random(num_envs) < 0.08) & ~terminated
        final = streams.step(terminated, truncated)
        args = (obs, rng.integers(0, 6, num_envs), rng.normal(size=num_envs).astype(np.float32), terminated,
                truncated, rng.random(num_envs).astype(np.float32), final)
        whole.add(*args)
        frames.add(*args)
        check(whole, frames)
    return whole, frames


def every_stored_observation_matches(whole, frames):
    times = np.arange(frames._oldest_start(), frames.written)
    for env in range(frames.num_envs):
        envs = np.full(len(times), env)
        np.testing.assert_array_equal(frames.observations(times, envs), whole.obs[times % whole.slots, envs])


def test_frame_once_storage_rebuilds_every_stack_through_wraparound():
    fill_both(steps=300, capacity=60, num_envs=3, seed=7, check=every_stored_observation_matches)


def test_frame_once_samples_equal_whole_stack_samples():
    def same_samples(whole, frames):
        if frames.written > frames.slots or not frames.can_sample(N_STEPS):
            return  # after wraparound the frame buffer keeps 3 extra slots back, so draws differ
        a = whole.sample(16, N_STEPS, np.random.default_rng(frames.written), torch.as_tensor, "cpu")
        b = frames.sample(16, N_STEPS, np.random.default_rng(frames.written), torch.as_tensor, "cpu")
        for name in ReplaySample.__dataclass_fields__:
            assert torch.equal(getattr(a, name), getattr(b, name)), name

    fill_both(steps=100, capacity=400, num_envs=4, seed=3, check=same_samples)


def test_frame_once_checkpoint_round_trip():
    _, frames = fill_both(steps=120, capacity=60, num_envs=3, seed=11, check=lambda *_: None)
    copy = ReplayBuffer(60, 3, (4, 3, 2), "uint8", frame_stack=True)
    copy.load_state(frames.state_tensors())
    times = np.arange(frames._oldest_start(), frames.written)
    for env in range(3):
        envs = np.full(len(times), env)
        np.testing.assert_array_equal(copy.observations(times, envs), frames.observations(times, envs))
    assert copy.start_stacks.keys() == frames.start_stacks.keys() and copy.written == frames.written


def test_frame_once_on_real_pong_frames():
    """ale-py's stacks, with episodes cut every 100 steps: rebuilt stacks equal the env's."""
    from equirl.zoo.envs import make_vector_env, spec_from_id

    spec = spec_from_id("PongNoFrameskip-v4")
    spec.ale["max_num_frames_per_episode"] = 400
    env = make_vector_env(spec, 2)
    whole = ReplayBuffer(300, 2, env.obs_info.shape, "uint8")
    frames = ReplayBuffer(300, 2, env.obs_info.shape, "uint8", frame_stack=True)
    obs, rng, ends = env.reset(seed=0), np.random.default_rng(0), 0
    for t in range(400):
        step = env.step(rng.integers(0, env.num_actions, 2))
        ends += int((step.terminated | step.truncated).sum())
        args = (obs, rng.integers(0, 6, 2), step.rewards, step.terminated, step.truncated & ~step.terminated,
                np.zeros(2, np.float32), step.final_obs)
        whole.add(*args)
        frames.add(*args)
        obs = step.obs
        if t % 50 == 49:
            every_stored_observation_matches(whole, frames)
    env.close()
    assert ends >= 6 and frames.starts.sum() >= 2  # episodes began inside the checked stretches
    assert not frames.start_stacks  # ale-py pads first stacks with zeros
    assert frames.nbytes < whole.nbytes / 3.5


# ---- the two halves of add: sampling between them (ReplayCollector's pipelined step) ---------


def _same_sample(a: ReplaySample, b: ReplaySample) -> None:
    for name in ReplaySample.__dataclass_fields__:
        assert torch.equal(getattr(a, name), getattr(b, name)), name


@pytest.mark.parametrize("n_steps", [1, 3])
def test_sampling_between_the_halves_of_add_equals_sampling_after_add(n_steps):
    """The updates due after a step run before its outcome is stored: what they sample must be
    what they would sample once the whole step is stored, through episode ends, truncations
    (final observations), non-padded first stacks and wraparound (60 steps into 12 slots)."""
    rng = np.random.default_rng(5)
    streams = StackedStreams(2, rng)
    whole = ReplayBuffer(24, 2, (4, 3, 2), "uint8", frame_stack=True)
    halves = ReplayBuffer(24, 2, (4, 3, 2), "uint8", frame_stack=True)
    sampled = 0
    for step in range(60):
        obs = streams.stacks.copy()
        terminated = rng.random(2) < 0.1
        truncated = (rng.random(2) < 0.1) & ~terminated
        final = streams.step(terminated, truncated)
        outcome = (rng.integers(0, 6, 2), rng.normal(size=2).astype(np.float32), terminated, truncated,
                   rng.random(2).astype(np.float32), final)
        halves.add_obs(obs)
        early = halves.can_sample(n_steps) and halves.sample(8, n_steps, np.random.default_rng(step), torch.as_tensor, "cpu")
        halves.add_outcome(*outcome)
        whole.add(obs, *outcome)
        assert halves.can_sample(n_steps) == whole.can_sample(n_steps)
        if whole.can_sample(n_steps):
            _same_sample(early, whole.sample(8, n_steps, np.random.default_rng(step), torch.as_tensor, "cpu"))
            sampled += 1
    assert sampled >= 50
    for name, tensor in whole.state_tensors().items():
        assert torch.equal(tensor, halves.state_tensors()[name]), name


def test_the_halves_of_add_come_in_order():
    buf = ReplayBuffer(24, 2, (4, 3, 2), "uint8", frame_stack=True)
    outcome = (np.zeros(2, dtype=np.int64), np.zeros(2, np.float32), np.zeros(2, bool), np.zeros(2, bool),
               np.zeros(2, np.float32), None)
    with pytest.raises(RuntimeError, match="no observation added"):
        buf.add_outcome(*outcome)
    buf.add_obs(np.zeros((2, 4, 3, 2), np.uint8))
    with pytest.raises(RuntimeError, match="outcome was not added"):
        buf.add_obs(np.zeros((2, 4, 3, 2), np.uint8))
    with pytest.raises(RuntimeError, match="outcome is still to be added"):
        buf.state_tensors()
    buf.add_outcome(*outcome)
    assert buf.written == 1 and set(buf.state_tensors()) >= {"replay.obs", "replay.written"}
