"""The act/learn interface every agent shares, and the batches agents learn from.

An agent owns its network, optimizer and sampling RNG; it knows nothing about environments.
The training loop (``equirl.zoo.train``) feeds it numpy observations and batches.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from . import optim


@dataclass
class Rollout:
    """An on-policy segment of T steps from B environments, time-major, on the agent's device
    (``obs`` may stay on the host: see there).

    ``final_obs``/``final_index`` carry the last observation of episodes that were truncated
    inside the segment (``final_index[k] = (t, b)``): their value is bootstrapped, whereas
    ``obs[t+1, b]`` is already the first observation of the next episode.
    """

    # [T, B, *obs_shape]. The collector leaves it on the host as the env emitted it: an update
    # that replays acting's forward pass never reads it, and on a GPU moving it would be the
    # largest copy of the update. Read it through Agent.to_tensor.
    obs: Tensor
    actions: Tensor  # [T, B] int64
    rewards: Tensor  # [T, B] float
    terminated: Tensor  # [T, B] bool
    truncated: Tensor  # [T, B] bool
    next_obs: Tensor  # [B, *obs_shape]: the observation after the last step
    final_obs: Tensor  # [K, *obs_shape]
    final_index: Tensor  # [K, 2] int64: (t, b) of each truncated step
    acting: tuple | None = None  # per acting call (step, then group), what act_recorded returned besides the actions


@dataclass
class ReplaySample:
    """n-step windows sampled from a replay buffer, time-major over the window (n steps).

    ``bootstrap_obs[b]`` is the state the window of sample b bootstraps from: ``s_{t+n}``, or
    the final state of the episode if it was truncated inside the window.
    """

    obs: Tensor  # [B, *obs_shape]: s_t
    actions: Tensor  # [B]
    rewards: Tensor  # [n, B]
    kl: Tensor  # [n, B]: KL of the behaviour policy at s_{t+d}, as recorded when acting
    terminated: Tensor  # [n, B]
    truncated: Tensor  # [n, B]
    bootstrap_obs: Tensor  # [B, *obs_shape]


@dataclass
class ObsInfo:
    """What an agent needs to know about observations to build its network."""

    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "uint8", "float32"


def dataclass_from_dict(cls: type, values: dict, error: type[Exception] = ValueError, what: str = "") -> Any:
    """Build a dataclass (a config, an env spec, a protocol) from plain values, rejecting
    unknown names with ``error``."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise error(f"unknown {what or cls.__name__} field(s): {', '.join(map(repr, unknown))}; "
                    f"known: {', '.join(sorted(names))}")
    return cls(**values)


class Agent:
    """Base class: ``act(obs, greedy=False) -> actions`` and ``learn(batch) -> {name: float}``.

    Subclasses set ``agent_id``, ``Config`` and ``on_policy``, build ``self.network`` and
    ``self.optimizer`` and implement :meth:`action_logits` and :meth:`learn`.
    """

    agent_id: ClassVar[str]
    Config: ClassVar[type]
    on_policy: ClassVar[bool]

    def __init__(self, config: Any, obs_info: ObsInfo, num_actions: int, network_spec: dict,
                 device: str | torch.device = "cpu", seed: int = 0):
        self.config = config
        self.obs_info = obs_info
        self.num_actions = num_actions
        self.network_spec = network_spec
        self.device = torch.device(device)
        self.dtype = torch.float64 if getattr(config, "float64", False) else torch.float32
        torch.manual_seed(seed)
        # The agent's own generator for action sampling: checkpointed with it, and unaffected
        # by anything else in the process that draws random numbers.
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)
        self.progress = 0.0
        # Data-parallel training (equirl.zoo.distributed) sets these two. ``rows = (offset,
        # total)``: this process acts for rows offset.. of a batch of ``total`` environments, so it
        # draws the random numbers of the whole batch (the same on every rank) and keeps its own
        # rows: N processes then sample exactly the actions one process with all envs would.
        self.rows: tuple[int, int] | None = None
        # Called between backward and clipping, e.g. to average gradients over processes.
        self.reduce_gradients = None

    @staticmethod
    def build_network(config: Any, network_spec: dict, num_actions: int) -> nn.Module:
        """The agent's network as its config and network spec describe it (loaders build it on
        the meta device to learn the weight shapes without allocating)."""
        raise NotImplementedError

    # ---- acting ----------------------------------------------------------------------
    def action_logits(self, obs: Tensor) -> Tensor:
        """Unnormalised log-probabilities of the behaviour policy, ``[N, A]``."""
        raise NotImplementedError

    def to_tensor(self, obs: np.ndarray | Tensor) -> Tensor:
        obs = torch.as_tensor(obs, device=self.device)
        # Pixels stay uint8 until the network scales them; vector observations take the
        # agent's float precision.
        return obs if obs.dtype == torch.uint8 else obs.to(self.dtype)

    def random_rows(self, draw, n: int) -> Tensor:
        """``draw(rows)`` for this process's ``n`` rows: all ``total`` rows are drawn when
        :attr:`rows` is set (see there), so the generator advances the same on every rank."""
        if self.rows is None:
            return draw(n)
        offset, total = self.rows
        if offset + n > total:
            raise ValueError(f"acting for rows {offset}..{offset + n} of a {total}-row batch")
        return draw(total)[offset:offset + n]

    def sample(self, logits: Tensor) -> Tensor:
        """Draw one action per row from ``softmax(logits)`` with the Gumbel-max trick."""
        uniform = self.random_rows(lambda rows: torch.rand((rows,) + tuple(logits.shape[1:]), generator=self.generator,
                                                           device=logits.device, dtype=logits.dtype), len(logits))
        gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(logits.dtype).tiny)))
        return (logits + gumbel).argmax(dim=-1)

    @torch.no_grad()
    def act(self, obs: np.ndarray | Tensor, greedy: bool = False) -> np.ndarray:
        """Actions for a batch of observations: sampled from the behaviour policy, or its mode."""
        logits = self.action_logits(self.to_tensor(obs))
        actions = logits.argmax(dim=-1) if greedy else self.sample(logits)
        return actions.cpu().numpy()

    def act_recorded(self, obs: np.ndarray | Tensor, step: int, steps: int, offset: int = 0,
                     total: int | None = None) -> tuple[np.ndarray, Any]:
        """``act(obs)`` at step ``step`` of a ``steps``-step on-policy segment, for the training
        loop, where ``obs`` are the rows ``offset ..`` of the step's ``total`` (envs acted group by
        group); also returns a record of what of this forward pass ``learn`` may reuse
        (``Rollout.acting``); None here: nothing is kept."""
        return self.act(obs), None

    # ---- learning --------------------------------------------------------------------
    def learn(self, batch: Any) -> dict[str, float]:
        raise NotImplementedError

    def set_progress(self, fraction: float) -> None:
        """Tell the agent how far training is (0..1), for its schedules."""
        self.progress = min(max(fraction, 0.0), 1.0)

    def make_adam(self, lr: float, eps: float) -> torch.optim.Adam:
        params = list(self.network.parameters())
        # The fused kernel updates all tensors in one pass: 1.0 ms instead of 7.3 ms a step for the
        # Nature CNN on CPU (BENCHMARKS.md); optim.Adam runs it without torch's copy of each
        # channels-last gradient. Small networks keep torch's per-tensor loop, which the
        # fixed-seed classic-control results (learning tests, bundled recipes) were made with: the
        # two round differently.
        big = sum(p.numel() for p in params) > 1_000_000
        return optim.Adam(params, lr=lr, eps=eps) if big else torch.optim.Adam(params, lr=lr, eps=eps)

    def clip_and_step(self, loss: Tensor, max_grad_norm: float) -> float:
        optim.clear_gradients(self.optimizer)
        loss.backward()
        if self.reduce_gradients is not None:
            self.reduce_gradients(self.network.parameters())
        params = [p for p in self.network.parameters() if p.grad is not None]
        limit = max_grad_norm if max_grad_norm > 0 else float("inf")
        norm = nn.utils.get_total_norm([p.grad for p in params])
        # clip_grad_norm_ as torch computes it, without its multiplication by 1: torch scales every
        # gradient by min(limit / (norm + 1e-6), 1) so as not to sync with a GPU; on CPU that check
        # is free, and the pass it saves where the norm is within the limit is ~0.5 ms of a
        # soft-q update (a NaN norm still scales, as torch does).
        if norm.device.type != "cpu" or not bool(limit / (norm + 1e-6) >= 1.0):
            nn.utils.clip_grads_with_norm_(params, limit, norm)
        optim.run_step(self.optimizer)
        return float(norm)

    # ---- state -----------------------------------------------------------------------
    def weights(self) -> dict[str, Tensor]:
        """The tensors needed to act (what ``model.safetensors`` holds)."""
        return {k: v.detach() for k, v in self.network.state_dict().items()}

    def load_weights(self, tensors: dict[str, Tensor]) -> None:
        self.network.load_state_dict(tensors, strict=True)

    def extra_state(self) -> dict[str, Tensor]:
        """Tensors beyond the network that a resumable checkpoint needs (e.g. a target net)."""
        return {}

    def load_extra_state(self, tensors: dict[str, Tensor]) -> None:
        pass

    # ---- the Hub (lazy imports: the agents do not depend on the hub or env code) -----------
    @classmethod
    def from_pretrained(cls, source: str, *, revision: str | None = None, device="cpu") -> Agent:
        """Load from a folder, the bundled zoo or a Hugging Face repo id (``equirl.load``)."""
        from ..hub.client import load

        agent = load(source, revision=revision, device=device)
        if cls is not Agent and not isinstance(agent, cls):
            raise TypeError(f"{source} holds a {agent.agent_id} agent, not {cls.agent_id}")
        return agent

    def save_pretrained(self, folder) -> None:
        """Write ``config.json`` + ``model.safetensors`` (a loadable repo folder)."""
        from ..hub.publish import save_pretrained

        save_pretrained(self, folder)

    def push_to_hub(self, repo_id: str, *, private: bool = False, commit_message: str | None = None):
        """Save, evaluate, record and push to ``repo_id`` on the Hugging Face Hub in one commit."""
        from ..hub.publish import push_agent

        return push_agent(self, repo_id, private=private, commit_message=commit_message)

    def make_env(self, num_envs: int = 1):
        """The environment recorded in the agent's config, rebuilt with the same settings."""
        from ..zoo.envs import make_vector_env

        return make_vector_env(self.env_spec, num_envs)

    def _set_lr(self, lr: float, linear_decay: bool) -> float:
        current = lr * (1.0 - self.progress) if linear_decay else lr
        for group in self.optimizer.param_groups:
            group["lr"] = current
        return current
