"""``soft-q``: DQN-style soft Q-learning (§3.5, §6.2).

Replay buffer, target network, and the soft (log-sum-exp) backup
``y = r + gamma * tau * log E_{pi-bar} exp(Q-bar(s')/tau)`` in its two forms: ``reference='none'``
(entropy bonus, ``tau*lse``) and ``reference='uniform'`` (KL penalty, ``tau*lse - tau*log|A|``),
which differ by ``gamma*tau*log|A|`` per step. n-step targets carry the intermediate
``-tau*KL`` terms, not only the bootstrap (paper-spec §5's pitfall). ``backup='hard'`` is
standard DQN's max backup, the tau -> 0 limit.

Exploration samples the Boltzmann policy ``softmax(Q/tau)``; epsilon-greedy is available
because the paper's §6.2 comparison kept DQN's. The KL terms inside n-step targets are those of
the Boltzmann policy of the online network when the action was taken, recorded with each
transition (the paper does not say which network; this one costs no extra forward passes).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from . import losses
from .base import Agent, ObsInfo, ReplaySample
from .networks import QNetwork, QRecord, weight_versions


class _Acted(NamedTuple):
    """What :meth:`SoftQ.act_for_training` computed for the batch the next update learns from."""

    batch: ReplaySample
    record: QRecord | None  # the online network's pass over the batch's observations (None: not recorded)
    first_row: int  # the batch's first row in that pass (acting's rows come first)
    targets: Tensor
    target_versions: tuple  # the target network's weights the targets were computed with


@dataclass
class SoftQConfig:
    """Soft Q-learning hyperparameters (defaults: DQN on Atari with the paper's tau = 0.1)."""

    num_envs: int = 4
    """Parallel environments; each vector step adds num_envs transitions to the buffer."""
    buffer_size: int = 100_000
    """Replay capacity in transitions."""
    batch_size: int = 32
    """Transitions per update."""
    learning_starts: int = 20_000
    """Agent steps of experience collected before the first update."""
    train_freq: int = 4
    """Agent steps per update (DQN's replay ratio: one batch of 32 every 4 steps)."""
    target_update_interval: int = 2_000
    """Updates between copies of the online network into the target network."""
    n_steps: int = 1
    """Length of the n-step target window."""
    gamma: float = 0.99
    """Discount factor."""
    tau: float = 0.1
    """Temperature of the soft backup and of the Boltzmann exploration policy."""
    backup: str = "soft"
    """'soft' (log-sum-exp) or 'hard' (max: standard DQN)."""
    reference: str = "none"
    """'none': entropy bonus (tau*lse); 'uniform': KL penalty to uniform (tau*lse - tau*log|A|)."""
    exploration: str = "boltzmann"
    """'boltzmann' (sample softmax(Q/tau)) or 'epsilon_greedy'."""
    eps_start: float = 1.0
    """Epsilon-greedy: epsilon at the start."""
    eps_end: float = 0.01
    """Epsilon-greedy: final epsilon."""
    eps_fraction: float = 0.1
    """Epsilon-greedy: fraction of training over which epsilon decays linearly."""
    lr: float = 1e-4
    """Adam learning rate."""
    lr_decay: bool = False
    """Decay the learning rate linearly to zero over the run."""
    eps: float = 1.5e-4
    """Adam epsilon."""
    max_grad_norm: float = 10.0
    """Clip the global gradient norm to this (0 disables)."""
    hidden: tuple[int, ...] = (64, 64)
    """Hidden widths of the MLP trunk used for vector observations."""
    float64: bool = False
    """Compute in float64."""
    bf16: bool = False
    """Run the CNN trunk under bfloat16 autocast: faster on CPUs with AMX/AVX512-BF16 and on
    recent GPUs; weights, optimizer and losses stay float32. Not bit-identical to float32, and
    on Pong the actor-critic agents' bf16 gradient drifts from float32's as play improves and
    their one bf16 run scored 5.53 where float32 scored 18-20. soft-q's bf16 gradient on trained
    Pong states is 4-7% off float32's in directions that change from batch to batch (a3c's: 19%,
    in a consistent one); trained on Pong beside float32 to 3M steps (one seed each), its
    checkpoints' greedy scores swung as widely as float32's and ended alike (4.6 and 4.4 on
    average over the last 10), lower only from 2.05 to 2.55M (4.6 against 7.1; BENCHMARKS.md).
    Acting's pass over the next batch is
    recorded in bfloat16 and the update replays autocast's backward (the same gradients, bit
    for bit), as float32 does."""

    def validate(self) -> None:
        checks = {
            "num_envs": self.num_envs >= 1, "buffer_size": self.buffer_size >= self.n_steps + 1,
            "batch_size": self.batch_size >= 1, "learning_starts": self.learning_starts >= 0,
            "train_freq": self.train_freq >= 1, "target_update_interval": self.target_update_interval >= 1,
            "n_steps": self.n_steps >= 1, "gamma": 0.0 <= self.gamma <= 1.0, "tau": self.tau > 0.0,
            "backup": self.backup in ("soft", "hard"), "reference": self.reference in ("uniform", "none"),
            "exploration": self.exploration in ("boltzmann", "epsilon_greedy"),
            "eps_start": 0.0 <= self.eps_start <= 1.0, "eps_end": 0.0 <= self.eps_end <= 1.0,
            "eps_fraction": 0.0 < self.eps_fraction <= 1.0, "lr": self.lr > 0.0, "eps": self.eps > 0.0,
            "max_grad_norm": self.max_grad_norm >= 0.0, "hidden": len(self.hidden) >= 1 and min(self.hidden) >= 1,
            "bf16": not (self.bf16 and self.float64),  # one precision or the other
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError("invalid SoftQConfig value(s): " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))


class SoftQ(Agent):
    agent_id = "soft-q"
    Config = SoftQConfig
    on_policy = False

    def __init__(self, config: SoftQConfig, obs_info: ObsInfo, num_actions: int, network_spec: dict,
                 device="cpu", seed: int = 0):
        config.validate()
        super().__init__(config, obs_info, num_actions, network_spec, device, seed)
        self.network = self.build_network(config, network_spec, num_actions).to(device=self.device, dtype=self.dtype)
        self.target = copy.deepcopy(self.network).requires_grad_(False)
        self.optimizer = self.make_adam(config.lr, config.eps)
        self.log_ref = losses.log_reference(num_actions, config.reference)
        self.updates = 0
        self._acted: _Acted | None = None  # for the next update (act_for_training's ``batch``)

    @staticmethod
    def build_network(config: SoftQConfig, network_spec: dict, num_actions: int) -> QNetwork:
        return QNetwork(network_spec["trunk"], num_actions, bf16=config.bf16)

    # ---- acting ----------------------------------------------------------------------
    def epsilon(self) -> float:
        cfg = self.config
        return cfg.eps_start + (cfg.eps_end - cfg.eps_start) * min(self.progress / cfg.eps_fraction, 1.0)

    def action_logits(self, obs: Tensor) -> Tensor:
        """Boltzmann exploration: logits Q/tau. (Epsilon-greedy is handled in :meth:`act`.)"""
        return self.network(obs) / self.config.tau

    @torch.no_grad()
    def act_for_training(self, obs, batch: ReplaySample | None = None) -> tuple:
        """Actions, plus the behaviour policy's KL at each state for later n-step targets.

        ``batch``: the batch the next :meth:`learn` will get (sampled before acting:
        ReplayCollector.step). Its targets are computed first, by the target network, and the
        online network's pass over its observations runs with acting's, in one call; that
        :meth:`learn` then uses those targets and replays the pass's backward instead of running
        the forward again. The same values, bit for bit, in float32 and in bf16 (oneDNN computes
        each row alike whatever the batch, once there are 2 rows or more; a 1-row pass can round
        differently; tests/test_soft_q_pipeline.py). Merging the passes saves 0.25-0.55 ms of a
        ~16 ms vector step on 2 CPU cores in float32; running the target network's pass first,
        not in the update, 1-2% more (the update's backward then follows acting's pass directly;
        BENCHMARKS.md)."""
        obs = self.to_tensor(obs)
        self._acted = None
        if batch is None:
            q = self.network(obs)
        else:
            targets, versions = self.td_targets(batch), weight_versions(self.target)
            record = None
            if self.network.recordable:
                q, record = self.network.forward_recorded(torch.cat([obs, batch.obs]))
                q = q[:len(obs)]
            else:
                q = self.network(obs)
            self._acted = _Acted(batch, record, len(obs), targets, versions)
        if self.config.exploration == "boltzmann":
            actions = self.sample(q / self.config.tau)
        else:
            actions = self._epsilon_greedy(q)
        if self.config.backup == "soft":
            kl = losses.kl_to_reference(losses.boltzmann_log_policy(q, self.config.tau), self.log_ref)
        else:
            kl = torch.zeros(len(q), device=q.device, dtype=q.dtype)
        return actions.cpu().numpy(), kl.float().cpu().numpy()

    def _epsilon_greedy(self, q: Tensor) -> Tensor:
        n, num_actions = q.shape
        explore = self.random_rows(lambda rows: torch.rand(rows, generator=self.generator, device=q.device), n)
        explore = explore < self.epsilon()
        random_actions = self.random_rows(
            lambda rows: torch.randint(num_actions, (rows,), generator=self.generator, device=q.device), n)
        return torch.where(explore, random_actions, q.argmax(-1))

    @torch.no_grad()
    def act(self, obs, greedy: bool = False):
        if greedy or self.config.exploration == "boltzmann":
            return super().act(obs, greedy)
        return self._epsilon_greedy(self.network(self.to_tensor(obs))).cpu().numpy()

    # ---- learning --------------------------------------------------------------------
    def learn(self, batch: ReplaySample) -> dict[str, float]:
        cfg = self.config
        q = targets = None
        acted, self._acted = self._acted, None  # one update learns from it
        if acted is not None and acted.batch is batch:
            q = self.network.forward_replayed(acted.record, slice(acted.first_row, None))
            if acted.target_versions == weight_versions(self.target):
                targets = acted.targets
        if q is None:
            q = self.network(batch.obs)
        loss, q_taken, targets = self.td_loss(q, batch, targets)
        lr = self._set_lr(cfg.lr, cfg.lr_decay)
        grad_norm = self.clip_and_step(loss, cfg.max_grad_norm)
        self.updates += 1
        if self.updates % cfg.target_update_interval == 0:
            self.target.load_state_dict(self.network.state_dict())
        return {"loss": float(loss.detach()), "loss_q": float(loss.detach()), "q_taken_mean": float(q_taken.detach().mean()),
                "target_mean": float(targets.mean()), "grad_norm": grad_norm, "lr": lr,
                "epsilon": self.epsilon() if cfg.exploration == "epsilon_greedy" else 0.0}

    def td_loss(self, q: Tensor, batch: ReplaySample, targets: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The n-step soft (or hard) TD loss of ``q``, the online network's Q-values at the
        batch's observations, against ``targets`` (by default :meth:`td_targets`); with the
        taken actions' values and the targets."""
        q_taken = q.gather(-1, batch.actions.unsqueeze(-1)).squeeze(-1)
        if targets is None:
            targets = self.td_targets(batch)
        return losses.soft_q_loss(q_taken, targets), q_taken, targets

    @torch.no_grad()
    def td_targets(self, batch: ReplaySample) -> Tensor:
        """The batch's n-step targets: its rewards and recorded KL terms, then the target
        network's soft (or hard) value of the bootstrap observation."""
        cfg = self.config
        q_boot = self.target(batch.bootstrap_obs)
        soft = cfg.backup == "soft"
        boot_value = losses.soft_value(q_boot, cfg.tau, self.log_ref) if soft else losses.hard_value(q_boot)
        window = batch.rewards.shape[0]
        return losses.nstep_soft_targets(
            batch.rewards.to(self.dtype), batch.kl.to(self.dtype), batch.terminated, batch.truncated,
            boot_value.unsqueeze(0).expand(window, -1), cfg.gamma, cfg.tau if soft else 0.0)[0]

    # ---- state -----------------------------------------------------------------------
    def extra_state(self) -> dict[str, Tensor]:
        state = {f"target.{k}": v.detach() for k, v in self.target.state_dict().items()}
        state["updates"] = torch.tensor([self.updates], dtype=torch.int64)
        return state

    def load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        self.target.load_state_dict({k[len("target."):]: v for k, v in tensors.items() if k.startswith("target.")})
        self.updates = int(tensors["updates"][0])
