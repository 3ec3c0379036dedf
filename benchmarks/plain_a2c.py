"""The brief's third speed anchor: a plain PyTorch A2C loop over ale-py's vector env.

No library around it: AtariVectorEnv (16 envs, the settings equirl's PongNoFrameskip-v4 spec
uses), a Nature CNN with policy and value heads, 5-step returns, RMSprop 7e-4, entropy 0.01,
value 0.5, gradient clip 0.5. It is what an engineer writes in an afternoon; equirl's a3c does the
same arithmetic plus episode bookkeeping, metrics and checkpoints. Prints steps/s as JSON, like
the SB3 reference scripts, so that ``paired_speed.py --plain`` can alternate it with the others.

    .venv/bin/python benchmarks/plain_a2c.py --steps 8000 [--channels-last] [--passive]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

if "--passive" in sys.argv:  # must precede torch's import: OpenMP reads it once, when loaded
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

import numpy as np
import torch
from ale_py.vector_env import AtariVectorEnv
from torch import nn


class NatureCNN(nn.Module):
    def __init__(self, actions: int):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(4, 32, 8, 4), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU(), nn.Conv2d(64, 64, 3, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(3136, 512), nn.ReLU())
        self.policy, self.value = nn.Linear(512, actions), nn.Linear(512, 1)

    def forward(self, frames: torch.Tensor):
        hidden = self.trunk(frames)
        return self.policy(hidden), self.value(hidden).squeeze(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8000, help="timed agent steps (after 800 warm-up steps)")
    parser.add_argument("--envs", type=int, default=16)
    parser.add_argument("--channels-last", action="store_true", help="the CNN in channels-last memory format")
    parser.add_argument("--passive", action="store_true", help="OMP_WAIT_POLICY=PASSIVE (as equirl sets)")
    args = parser.parse_args()
    env = AtariVectorEnv("pong", args.envs, autoreset_mode="SameStep", reward_clipping=False,
                         repeat_action_probability=0.0, noop_max=30, max_num_frames_per_episode=108000)
    net = NatureCNN(env.single_action_space.n)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    net = net.to(memory_format=layout)
    optimizer = torch.optim.RMSprop(net.parameters(), lr=7e-4, alpha=0.99, eps=1e-5)
    obs, _ = env.reset(seed=0)
    n_steps, gamma = 5, 0.99

    def to_input(frames: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(frames).to(memory_format=layout).float().div_(255)

    def update() -> None:
        nonlocal obs
        frames, actions, rewards, dones = [], [], [], []
        for _ in range(n_steps):
            with torch.no_grad():
                logits, _ = net(to_input(obs))
            action = torch.distributions.Categorical(logits=logits).sample().numpy()
            frames.append(obs)
            obs, reward, terminated, truncated, _ = env.step(action)
            actions.append(action), rewards.append(reward), dones.append(terminated | truncated)
        with torch.no_grad():
            _, bootstrap = net(to_input(obs))
        returns, running = [], bootstrap.numpy()
        for reward, done in zip(reversed(rewards), reversed(dones)):
            running = reward + gamma * running * (1.0 - done)
            returns.append(running)
        returns = torch.as_tensor(np.stack(returns[::-1]).reshape(-1), dtype=torch.float32)
        logits, values = net(to_input(np.concatenate(frames)))
        log_probs = torch.log_softmax(logits, -1)
        taken = log_probs.gather(1, torch.as_tensor(np.concatenate(actions)).long().unsqueeze(1)).squeeze(1)
        advantage = returns - values
        entropy = -(log_probs.exp() * log_probs).sum(-1).mean()
        loss = -(taken * advantage.detach()).mean() + 0.5 * advantage.pow(2).mean() - 0.01 * entropy
        optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 0.5)
        optimizer.step()

    per_update = n_steps * args.envs
    for _ in range(max(1, 800 // per_update)):
        update()
    updates = max(1, args.steps // per_update)
    start = time.perf_counter()
    for _ in range(updates):
        update()
    sps = updates * per_update / (time.perf_counter() - start)
    env.close()
    print(json.dumps({"system": "plain PyTorch A2C", "channels_last": args.channels_last, "passive": args.passive,
                      "sps": round(sps, 1)}))


if __name__ == "__main__":
    main()
