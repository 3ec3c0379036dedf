"""How far bfloat16 moves an agent's gradient, layer by layer, on real Atari states.

Loads an agent (a bundled name, a run folder or a Hub repo), collects rollouts with its own
policy on its own env, and computes its loss gradient with the Nature CNN in float32 (the
reference) and with bfloat16 autocast on chosen layers: the a3c/entropy-pg loss on rollouts of
16 envs x 5 steps, or for soft-q the TD loss (SoftQ.td_loss) on replay batches of 32 drawn from
~10,000 transitions of its Boltzmann policy, the target network a copy of the online one (as
after a sync) and in the same precision. For each choice it prints:

- cos: cosine between the bf16 and float32 gradients (all parameters), median over batches;
- err: |g_bf16 - g_f32| / |g_f32|, median over batches;
- err corr: mean cosine between the error vectors of different batches. Noise would give ~0;
  a value near the gradients' own cross-batch cosine means the error is a bias that
  accumulates over updates instead of averaging out;
- conv1 norm: |g_bf16| / |g_f32| for the first convolution's weights.

With ``--evaluate N`` it also plays N protocol episodes greedily with the whole trunk in bf16
and reports how often its greedy action agrees with float32's on the visited states.

With ``--q-values`` (soft-q) it instead compares the Q-values and the Boltzmann policy of the
float32 trunk with the bf16 trunk's on 1,280 replay states of the agent's own play: the error of
Q, of its action-dependent part (Q minus its mean over actions), the policies' total-variation
distance and how often the greedy action agrees.

With ``--time N`` it instead times forward+backward of 80 frames through a fresh Nature CNN for
each choice of bf16 layers (N alternated rounds, medians; one thread).

    .venv/bin/python benchmarks/bf16_gradients.py a3c-Pong --batches 12 [--evaluate 30]
    .venv/bin/python benchmarks/bf16_gradients.py soft-q-Pong --batches 12
    .venv/bin/python benchmarks/bf16_gradients.py soft-q-Pong --q-values
    .venv/bin/python benchmarks/bf16_gradients.py --time 25
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from profile_update import filled_replay  # benchmarks/ is on the path when this script runs

import equirl
from equirl.agents.a3c import entropy_regularized_pg_loss
from equirl.zoo.rollout import OnPolicyCollector

LAYERS = ("conv1", "conv2", "conv3", "fc")
CHOICES = {"all bf16": LAYERS, "all but conv1": LAYERS[1:], "conv3 and fc": LAYERS[2:], "conv1 only": ("conv1",),
           "conv2 only": ("conv2",), "conv3 only": ("conv3",), "fc only": ("fc",)}


def layerwise_forward(trunk, in_bf16: set):
    """The Nature CNN's forward with autocast switched per layer (the agent's own forward
    switches all four at once)."""
    convs = [m for m in trunk.convs if isinstance(m, torch.nn.Conv2d)]

    def forward(obs):
        x = obs.contiguous(memory_format=torch.channels_last).float() / 255.0
        for name, layer in zip(LAYERS, convs + [trunk.fc[0]]):  # fc: FcOverMap, on conv3's map
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name in in_bf16):
                x = F.relu(layer(x if name in in_bf16 else x.float()))
        return x.float()
    return forward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("agent", nargs="?", help="bundled name, run folder or Hub repo of an a3c/entropy-pg agent")
    parser.add_argument("--batches", type=int, default=12, help="rollouts of 16 envs x 5 steps")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--evaluate", type=int, default=0, metavar="N", help="also play N episodes in bf16")
    parser.add_argument("--time", type=int, default=0, metavar="N", help="only time each choice, N rounds")
    parser.add_argument("--q-values", action="store_true", help="soft-q: only compare Q-values and policies")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.time:
        return time_choices(args.time)
    if args.agent is None:
        parser.error("an agent is needed (or --time N)")
    agent = equirl.load(args.agent)
    if agent.agent_id not in ("a3c", "entropy-pg", "soft-q"):
        raise SystemExit(f"{args.agent}: an a3c, entropy-pg or soft-q agent is needed, not {agent.agent_id}")
    soft_q = agent.agent_id == "soft-q"
    if args.q_values:
        if not soft_q:
            raise SystemExit(f"{args.agent}: --q-values is for soft-q agents, not {agent.agent_id}")
        return compare_q_values(agent, args.seed)
    if soft_q:
        agent.target.load_state_dict(agent.network.state_dict())  # files hold no target network
    else:
        agent.optimize = lambda loss, terms, metrics: loss  # the loss, not an optimizer step
    networks = (agent.network, agent.target) if soft_q else (agent.network,)
    trunks = [m for network in networks for m in network.modules() if hasattr(m, "convs")]
    params = list(agent.network.parameters())
    conv1 = trunks[0].convs[0].weight

    def loss_of(batch):
        return agent.td_loss(agent.network(batch.obs), batch)[0] if soft_q else entropy_regularized_pg_loss(agent, batch)

    def gradients(batch, in_bf16):
        for trunk in trunks:
            trunk.forward = layerwise_forward(trunk, set(in_bf16))
        grads = torch.autograd.grad(loss_of(batch), params)
        # float64 for the comparisons, so the cosines are not themselves rounded
        return torch.cat([g.flatten() for g in grads]).double(), grads[params.index(conv1)].double()

    for trunk in trunks:  # rollouts with the float32 policy
        trunk.forward = layerwise_forward(trunk, set())
    if soft_q:
        batches = replay_batches(agent, args.batches, args.seed)
    else:
        collector = OnPolicyCollector(agent.make_env(num_envs=16), 5, seed=args.seed)
        batches = [collector.collect(agent)[0] for _ in range(args.batches)]
    reference = [gradients(batch, ()) for batch in batches]
    signal = torch.stack([F.normalize(g, dim=0) for g, _ in reference])
    off_diagonal = ~torch.eye(len(batches), dtype=torch.bool)
    print(f"{args.agent}: {len(batches)} batches of {len(batches[0].actions.flatten())} transitions; the float32 gradients' own "
          f"cross-batch cosine: {float((signal @ signal.T)[off_diagonal].mean()):.3f}")
    print("| bf16 layers | cos | err | err corr | conv1 norm |\n|---|---|---|---|---|")
    for label, in_bf16 in CHOICES.items():
        cos, err, norm, errors = [], [], [], []
        for batch, (g32, c32) in zip(batches, reference):
            g16, c16 = gradients(batch, in_bf16)
            cos.append(float(F.cosine_similarity(g16, g32, dim=0)))
            err.append(float((g16 - g32).norm() / g32.norm()))
            norm.append(float(c16.norm() / c32.norm()))
            errors.append(F.normalize(g16 - g32, dim=0))
        e = torch.stack(errors)
        corr = float((e @ e.T)[off_diagonal].mean())
        print(f"| {label} | {torch.tensor(cos).median():.4f} | {torch.tensor(err).median():.3f} | {corr:.3f} "
              f"| {torch.tensor(norm).median():.3f} |")
    if args.evaluate:
        evaluate_in_bf16(agent, trunks, batches, args.evaluate)


def compare_q_values(agent, seed: int, batches: int = 40) -> None:
    """Q-values and Boltzmann policies of the float32 and the all-bf16 trunk on the same states."""
    tau, trunk = agent.config.tau, agent.network.trunk
    obs = torch.cat([batch.obs for batch in replay_batches(agent, batches, seed)])
    with torch.no_grad():
        trunk.forward = layerwise_forward(trunk, set())
        q32 = agent.network(obs).double()
        trunk.forward = layerwise_forward(trunk, set(LAYERS))
        q16 = agent.network(obs).double()
    advantage_error = ((q16 - q16.mean(1, keepdim=True)) - (q32 - q32.mean(1, keepdim=True))).abs()
    tv = 0.5 * (F.softmax(q32 / tau, 1) - F.softmax(q16 / tau, 1)).abs().sum(1)
    error = (q16 - q32).abs()
    print(f"{len(obs)} states, Q mean {q32.mean():.3f}: |Q_bf16 - Q_f32| median {error.median():.4f} "
          f"(90th percentile {error.quantile(0.9):.4f}); its action-dependent part median {advantage_error.median():.4f} "
          f"against a spread over actions of {(q32.max(1).values - q32.min(1).values).median():.4f} (median); "
          f"policy total variation median {tv.median():.4f}; greedy action agrees in "
          f"{(q32.argmax(1) == q16.argmax(1)).double().mean():.1%}")


def replay_batches(agent, count: int, seed: int, vector_steps: int = 2500) -> list:
    """``count`` replay batches of soft-q's batch size from ``vector_steps`` steps of its envs,
    acted on by its own (Boltzmann) policy."""
    cfg = agent.config
    env = agent.make_env(num_envs=cfg.num_envs)
    _, replay = filled_replay(agent, env, cfg, vector_steps, seed)
    env.close()
    rng = np.random.default_rng(seed)
    return [replay.sample(cfg.batch_size, cfg.n_steps, rng, agent.to_tensor, agent.device) for _ in range(count)]


def time_choices(rounds: int) -> None:
    from equirl.agents.networks import NatureCNN

    torch.manual_seed(0)
    trunk = NatureCNN(4, 84, 84)
    frames = torch.randint(0, 256, (80, 4, 84, 84), dtype=torch.uint8)
    choices = {"none (float32)": (), **CHOICES}
    seconds = {label: [] for label in choices}
    for round_ in range(rounds + 2):  # the first two rounds warm up
        for label, in_bf16 in choices.items():
            forward = layerwise_forward(trunk, set(in_bf16))
            start = time.perf_counter()
            forward(frames).sum().backward()
            if round_ >= 2:
                seconds[label].append(time.perf_counter() - start)
    print("| bf16 layers | forward+backward of 80 frames (ms, median) |\n|---|---|")
    for label, times in seconds.items():
        print(f"| {label} | {1000 * float(torch.tensor(times).median()):.1f} |")


def evaluate_in_bf16(agent, trunks, batches, episodes: int) -> None:
    from equirl.evaluation.evaluate import evaluate

    states = torch.cat([batch.obs.reshape(-1, *batch.obs.shape[-3:]) for batch in batches])
    with torch.no_grad():
        for trunk in trunks:
            trunk.forward = layerwise_forward(trunk, set())
        log_pi32 = agent.action_logits(states).log_softmax(-1)
        for trunk in trunks:
            trunk.forward = layerwise_forward(trunk, set(LAYERS))
        log_pi16 = agent.action_logits(states).log_softmax(-1)
    agree = (log_pi32.argmax(-1) == log_pi16.argmax(-1)).double().mean()
    kl = (log_pi32.exp() * (log_pi32 - log_pi16)).sum(-1).mean()
    print(f"greedy actions agree on {float(agree):.1%} of {len(states)} states; mean KL(f32 || bf16) {float(kl):.1e}")
    score = evaluate(agent, None, episodes=episodes)  # the protocol recorded with the agent
    print(f"greedy play with the trunk in bf16: {score.mean:.2f} +/- {score.std:.2f} over {episodes} episodes")


if __name__ == "__main__":
    main()
