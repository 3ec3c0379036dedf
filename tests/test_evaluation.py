"""The evaluation protocol: known returns on a toy env, raw full-game scores on real Breakout,
identical results.json for the same seed, --verify, and the evaluate command."""
from __future__ import annotations

import argparse
import datetime
import json

import gymnasium as gym
import numpy as np
import pytest

from equirl.evaluation.commands import register, run
from equirl.evaluation.evaluate import (
    EvaluationError,
    evaluate,
    read_results,
    results_dict,
    run_protocol,
    verify,
    write_results_json,
)
from equirl.evaluation.protocol import HUMAN_REFERENCE, Protocol, ProtocolError, human_normalized
from equirl.zoo.envs import spec_from_id

# ---- a toy env with known returns ----------------------------------------------------------


class WalkEnv(gym.Env):
    """Episodes of N = 3 + seed % 5 steps (3 without a seed); step k pays k * (action + 1)."""

    observation_space = gym.spaces.Box(0.0, 100.0, shape=(1,), dtype=np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.length = 3 + seed % 5 if seed is not None else 3
        self.k = 0
        return np.array([0.0], dtype=np.float32), {}

    def step(self, action):
        self.k += 1
        return (np.array([self.k], dtype=np.float32), float(self.k * (int(action) + 1)), self.k >= self.length,
                False, {})


WALK, WALK_CAPPED = "EquirlTestWalk-v0", "EquirlTestWalkCapped-v0"
if WALK not in gym.registry:
    gym.register(WALK, entry_point=WalkEnv)
    gym.register(WALK_CAPPED, entry_point=WalkEnv, max_episode_steps=5)


class ConstantAgent:
    """Always the same action; remembers how many observations it was asked about."""

    def __init__(self, action: int):
        self.action = action
        self.batch_sizes: list[int] = []

    def act(self, obs, greedy=True):
        self.batch_sizes.append(len(obs))
        return np.full(len(obs), self.action, dtype=np.int64)


def test_toy_env_gives_known_returns_one_episode_per_seed():
    agent = ConstantAgent(1)
    result = evaluate(agent, WALK, episodes=5, seed=10)
    # Episode i has seed 10 + i, so N = 3..7 steps and a return of 2 * (1 + ... + N) = N (N + 1).
    assert result.seeds == [10, 11, 12, 13, 14]
    assert result.lengths == [3, 4, 5, 6, 7]
    assert result.scores == [12.0, 20.0, 30.0, 42.0, 56.0]
    assert all(type(s) is float for s in result.scores)
    assert result.truncated == [False] * 5
    assert (result.mean, result.median, result.min, result.max, result.count) == (32.0, 30.0, 12.0, 56.0, 5)
    assert result.std == pytest.approx(np.std([12, 20, 30, 42, 56]))
    assert result.human_normalized is None  # not an Atari game
    # The agent only acts for the episodes still running: envs that finished are not counted.
    assert agent.batch_sizes == [5, 5, 5, 4, 3, 2, 1]


def test_time_limit_marks_episodes_truncated():
    result = evaluate(ConstantAgent(0), WALK_CAPPED, episodes=5, seed=10)
    assert result.lengths == [3, 4, 5, 5, 5]
    assert result.scores == [6.0, 10.0, 15.0, 15.0, 15.0]
    assert result.truncated == [False, False, False, True, True]


# ---- the protocol as data ------------------------------------------------------------------


def test_protocol_round_trips_and_rejects_bad_values():
    protocol = Protocol(episodes=7, seed=3, greedy=False, sticky=0.1)
    assert Protocol.from_dict(json.loads(json.dumps(protocol.to_dict()))) == protocol
    assert protocol.episode_seeds() == [3, 4, 5, 6, 7, 8, 9]
    with pytest.raises(ProtocolError, match="unknown protocol field"):
        Protocol.from_dict({"episodes": 3, "epsilon": 0.01})
    with pytest.raises(ProtocolError, match=r"sticky-action probability must be in \[0, 1\]"):
        Protocol(sticky=1.5)
    with pytest.raises(ProtocolError, match="episodes must be an integer from 1 to 1000"):
        Protocol(episodes=0)


def test_protocol_env_spec_follows_the_id_unless_overridden():
    v5, v4 = spec_from_id("ALE/Breakout-v5"), spec_from_id("BreakoutNoFrameskip-v4")
    assert v5.reward_clipping  # the training spec clips ...
    spec = Protocol().env_spec(v5)
    assert not spec.reward_clipping  # ... evaluation never does
    assert spec.ale["repeat_action_probability"] == 0.25
    assert Protocol().env_spec(v4).ale["repeat_action_probability"] == 0.0
    assert Protocol(sticky=0.0).env_spec(v5).ale["repeat_action_probability"] == 0.0
    assert v5.ale["repeat_action_probability"] == 0.25  # the recorded spec is not modified
    assert spec.ale["episodic_life"] is False and spec.ale["max_num_frames_per_episode"] == 108_000
    assert spec.ale["noop_max"] == 30
    assert Protocol(full_game=False).env_spec(v4).ale["episodic_life"] is True
    with pytest.raises(ProtocolError, match="sticky actions are an Atari setting"):
        Protocol(sticky=0.25).env_spec("CartPole-v1")


def test_human_normalized_uses_the_named_reference():
    pong = spec_from_id("PongNoFrameskip-v4")
    assert human_normalized(pong, -20.7) == pytest.approx(0.0)
    assert human_normalized(pong, 14.6) == pytest.approx(1.0)
    for env_id in ("BreakoutNoFrameskip-v4", "BeamRiderNoFrameskip-v4", "QbertNoFrameskip-v4",
                   "SeaquestNoFrameskip-v4", "SpaceInvadersNoFrameskip-v4"):
        assert human_normalized(spec_from_id(env_id), 100.0) is not None
    assert "Agent57" in HUMAN_REFERENCE


# ---- real Atari: raw score, full game over all lives ---------------------------------------


class BreakoutTracker:
    """Moves the paddle under the ball (in the 84x84 frame), FIRE when no ball is in play.
    Scores 1- and 4-point bricks, so its raw score differs from its clipped one."""

    def act(self, obs, greedy=True):
        actions = []
        for stack in obs:
            frame = stack[-1]
            ball = np.argwhere(frame[38:75, 5:79] > 0)
            paddle = np.flatnonzero(frame[76, 5:79] > 0)
            if len(ball) == 0 or len(paddle) == 0:
                actions.append(1)
                continue
            ball_x, paddle_x = ball[:, 1].mean(), paddle.mean()
            actions.append(2 if ball_x > paddle_x + 1 else 3 if ball_x < paddle_x - 1 else 0)
        return np.array(actions, dtype=np.int64)


def reference_game(spec, seed: int, agent) -> dict:
    """Play one game in ale-py's vector env directly, watching lives and both reward kinds."""
    from ale_py.vector_env import AtariVectorEnv

    settings = {k: v for k, v in spec.ale.items() if k != "game"}
    env = AtariVectorEnv(spec.ale["game"], 1, autoreset_mode="SameStep", reward_clipping=False, **settings)
    obs, info = env.reset(seed=seed)
    game = {"start_lives": int(info["lives"][0]), "raw": 0.0, "clipped": 0.0, "first_life_steps": None,
            "first_life_raw": None}
    lives, step = game["start_lives"], 0
    while True:
        obs, reward, terminated, truncated, info = env.step(agent.act(obs))
        step += 1
        game["raw"] += float(reward[0])
        game["clipped"] += float(np.sign(reward[0]))
        if terminated[0] or truncated[0]:
            game.update(steps=step, lives_before_end=lives, terminated=bool(terminated[0]))
            env.close()
            return game
        if info["lives"][0] < lives and game["first_life_steps"] is None:
            game["first_life_steps"], game["first_life_raw"] = step, game["raw"]
        lives = int(info["lives"][0])


@pytest.fixture(scope="module")
def breakout_game():
    return reference_game(Protocol().env_spec("BreakoutNoFrameskip-v4"), 0, BreakoutTracker())


def test_breakout_full_game_raw_score(breakout_game):
    result = evaluate(BreakoutTracker(), "BreakoutNoFrameskip-v4", episodes=1, seed=0)
    # The reference game loses all 5 lives: game over, not the frame cap.
    assert breakout_game["start_lives"] == 5 and breakout_game["lives_before_end"] == 1
    assert breakout_game["terminated"]
    # The evaluated episode is that whole game, scored with the raw score (4-point bricks count 4).
    assert result.lengths == [breakout_game["steps"]]
    assert result.scores == [breakout_game["raw"]]
    assert breakout_game["raw"] > breakout_game["clipped"]
    assert result.truncated == [False]
    assert result.human_normalized == pytest.approx((breakout_game["raw"] - 1.7) / (30.5 - 1.7))


def test_breakout_per_life_is_only_the_first_life(breakout_game):
    per_life = evaluate(BreakoutTracker(), "BreakoutNoFrameskip-v4", episodes=1, seed=0, full_game=False)
    assert per_life.lengths == [breakout_game["first_life_steps"]]
    assert per_life.scores == [breakout_game["first_life_raw"]]
    assert per_life.lengths[0] < breakout_game["steps"] / 2


def test_sticky_override_turns_v5_into_the_v4_game(breakout_game):
    result = evaluate(BreakoutTracker(), "ALE/Breakout-v5", episodes=1, seed=0, sticky=0.0)
    assert result.spec.ale["repeat_action_probability"] == 0.0
    assert result.scores == [breakout_game["raw"]] and result.lengths == [breakout_game["steps"]]


def test_atari_results_json_records_every_setting(tmp_path):
    result = evaluate(BreakoutTracker(), "BreakoutNoFrameskip-v4", episodes=2, seed=5, full_game=False)
    data = write_results_json(tmp_path / "results.json", result, source="tracker")
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored == data
    assert stored["episodes"]["returns"] == result.scores and stored["episodes"]["seeds"] == [5, 6]
    assert stored["episodes"]["lengths"] == result.lengths
    assert stored["rom_md5"] == spec_from_id("BreakoutNoFrameskip-v4").rom_md5
    assert stored["env"]["ale"]["episodic_life"] is True and stored["env"]["reward_clipping"] is False
    assert set(stored["env"]["ale"]) >= {"repeat_action_probability", "frameskip", "noop_max",
                                         "max_num_frames_per_episode", "full_action_space", "stack_num"}
    assert stored["policy_mode"] == "greedy" and stored["protocol"]["full_game"] is False
    assert stored["summary"]["human_normalized_reference"] == HUMAN_REFERENCE
    assert {"equirl", "torch", "gymnasium", "ale_py", "numpy"} <= set(stored["versions"])
    assert stored["equirl_version"] and "code_revision" in stored
    assert datetime.datetime.fromisoformat(stored["date"]).utcoffset() == datetime.timedelta(0)


# ---- a trained agent: reproducible results.json, --verify ----------------------------------


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory):
    from equirl.zoo.train import train

    run_dir = tmp_path_factory.mktemp("cartpole") / "run"
    return train("a3c", "CartPole-v1", 2048, seed=0, out=run_dir, device="cpu")


def test_same_seed_twice_gives_identical_results_json(cartpole_run, tmp_path):
    agent = cartpole_run.agent
    before = agent.generator.get_state()
    for name in ("a", "b"):  # stochastic: sampled actions must repeat too
        write_results_json(tmp_path / f"{name}.json", evaluate(agent, None, episodes=4, seed=7, greedy=False), agent)
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("a", "b"))
    assert a["episodes"] == b["episodes"] and a["summary"] == b["summary"]
    assert a["policy_mode"] == "stochastic" and a["agent"] == "a3c"
    assert agent.generator.get_state().equal(before)  # the agent's own sampling stream is untouched
    other = evaluate(agent, None, episodes=4, seed=8, greedy=False)
    assert other.scores != a["episodes"]["returns"]


def test_verify_reproduces_and_detects_changes(cartpole_run):
    agent = cartpole_run.agent
    data = results_dict(evaluate(agent, "CartPole-v1", episodes=3, seed=1), agent)
    assert verify(data, agent).reproduced
    tampered = json.loads(json.dumps(data))
    tampered["episodes"]["returns"][1] += 1.0
    outcome = verify(tampered, agent)
    assert not outcome.reproduced and outcome.mismatches == [1]
    assert "1 of 3 episodes differ" in outcome.describe()
    hostile = json.loads(json.dumps(data))
    hostile["env"]["gym_kwargs"] = {"max_episode_steps": 1}
    with pytest.raises(EvaluationError, match="refusing to verify"):
        verify(hostile, agent)


def test_stochastic_toy_protocol_runs_through_run_protocol():
    result = run_protocol(ConstantAgent(0), WALK, Protocol(episodes=2, seed=0, greedy=False))
    assert result.scores == [6.0, 10.0] and result.protocol.policy_mode == "stochastic"


def test_read_results_names_a_missing_file(tmp_path):
    with pytest.raises(EvaluationError, match="no results.json"):
        read_results(tmp_path)


# ---- the evaluate command ------------------------------------------------------------------


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="equirl")
    register(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(argv))


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "not a source!"], "not a folder"),
    (["evaluate", "SOURCE", "--episodes", "0"], "episodes must be an integer from 1 to 1000"),
    (["evaluate", "SOURCE", "--verify", "--seed", "3"], "--verify re-runs the protocol stored in results.json"),
    (["evaluate", "SOURCE", "--sticky", "2"], "sticky-action probability must be in [0, 1]"),
    (["record", "SOURCE", "--out", "replay.gif"], "--out must name an .mp4 file"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys, cartpole_run):
    argv = [str(cartpole_run.run_dir) if a == "SOURCE" else a for a in argv]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith(f"equirl {argv[0]}: error: ") and err.count("\n") == 1


def test_evaluate_command_writes_verifies_and_compares(cartpole_run, capsys):
    run_dir = cartpole_run.run_dir
    results = run_dir / "results.json"
    assert cli(["evaluate", str(run_dir), "--episodes", "3", "--seed", "2", "--json", str(results)]) == 0
    out = capsys.readouterr().out
    assert "| source | agent | env |" in out and "Protocol: 3 episodes per agent" in out
    stored = json.loads(results.read_text())
    assert stored["protocol"]["seed"] == 2 and len(stored["episodes"]["returns"]) == 3

    assert cli(["evaluate", str(run_dir), "--verify"]) == 0
    assert "reproduced: all 3 episodes" in capsys.readouterr().out
    stored["episodes"]["returns"][0] += 5.0
    results.write_text(json.dumps(stored))
    assert cli(["evaluate", str(run_dir), "--verify"]) == 1
    assert "NOT reproduced" in capsys.readouterr().out

    # Several sources: one markdown table, one row each; --json - prints a list on stdout.
    assert cli(["evaluate", str(run_dir), str(run_dir), "--episodes", "2", "--json", "-"]) == 0
    captured = capsys.readouterr()
    assert [r["summary"]["episodes"] for r in json.loads(captured.out)] == [2, 2]
    assert captured.err.count("| a3c | CartPole-v1 |") == 2


def test_an_agent_for_another_env_is_refused(cartpole_run):
    with pytest.raises(EvaluationError, match="the agent has 2 actions and BreakoutNoFrameskip-v4 has 4"):
        evaluate(cartpole_run.agent, "BreakoutNoFrameskip-v4", episodes=1)
