"""Peer reference: Stable-Baselines3 DQN training speed on an Atari game, on this machine.

The settings of the paired comparison with equirl's soft-q: 4 envs, one gradient step of batch
32 per vector step (= every 4 agent steps, DQN's replay ratio), Nature CNN, Adam 1e-4, target
update every 2,000 agent steps (SB3 counts the interval in agent steps: every 500 vector steps of
4 envs; paired_speed.py gives soft-q the same, 500 updates). The warm-up passes learning_starts,
so the timed part updates throughout. Prints agent steps per second.

    .venv/bin/python benchmarks/sb3_dqn_reference.py --env PongNoFrameskip-v4 --steps 4000
"""
import argparse
import json
import time

import ale_py
import gymnasium as gym
import torch
from stable_baselines3 import DQN
from stable_baselines3.common.env_util import make_atari_env
from stable_baselines3.common.vec_env import VecFrameStack

parser = argparse.ArgumentParser()
parser.add_argument("--env", default="PongNoFrameskip-v4")
parser.add_argument("--n-envs", type=int, default=4)
parser.add_argument("--steps", type=int, default=4000)
parser.add_argument("--buffer-size", type=int, default=100_000)
parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
args = parser.parse_args()

gym.register_envs(ale_py)
if args.threads:
    torch.set_num_threads(args.threads)
env = VecFrameStack(make_atari_env(args.env, n_envs=args.n_envs, seed=0), n_stack=4)
model = DQN("CnnPolicy", env, verbose=0, device="cpu", buffer_size=args.buffer_size, learning_starts=1000,
            batch_size=32, train_freq=1, gradient_steps=1, target_update_interval=2000, learning_rate=1e-4)
model.learn(2000)  # warm-up, past learning_starts
start = time.perf_counter()
model.learn(args.steps, reset_num_timesteps=False)
sps = args.steps / (time.perf_counter() - start)
print(json.dumps({"system": "stable-baselines3 DQN", "env": args.env, "n_envs": args.n_envs, "sps": round(sps, 1)}))
