"""The paper's equivalence, measured with the project's own losses and agents.

Each check returns a measured error; :data:`BOUNDS` says how small it must be. All of it runs in
float64 on the CPU in a few seconds, so ``equirl equivalence`` and the tests run every check on
every run.

1. ``expected_gradient_error``: E_a~pi grad soft-Q loss == tau * E grad PG loss + E grad value
   loss, with the expectation over actions computed exactly by enumeration (§4, paper-spec §2.2),
   1-step and n-step, for ``Q = V + tau log pi`` and for a plain Q head (§2.1).
2. ``per_sample_identity_error``: grad 1/2 (Q - y)^2 == -(tau grad log pi(a) + grad V)(y - Q).
3. ``trajectory_max_param_diff``: ``matched-q`` and ``a3c`` with the sampled entropy term trained
   side by side from one seed on CartPole-v1: identical parameters (paper-spec §2.3.3).
4. ``npg_step_error``: the Gauss-Newton step on the damped soft-Q regression equals the
   entropy-regularized natural gradient step with step size eps/tau, V held fixed (§5).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..agents import losses
from ..agents.networks import ActorCriticNetwork, QNetwork

BOUNDS = {
    "expected_gradient_error": 1e-10,
    "per_sample_identity_error": 1e-10,
    "trajectory_max_param_diff": 1e-9,
    "npg_step_error": 1e-10,
}
DTYPE = torch.float64


class _Heads:
    """V(s) and log pi(.|s) from either parameterization, plus Q = V + tau log(pi/pi-bar)."""

    def __init__(self, kind: str, obs_dim: int, num_actions: int, tau: float, log_ref: float):
        trunk = {"kind": "mlp", "obs_shape": [obs_dim], "hidden": [16]}
        self.kind, self.tau, self.log_ref = kind, tau, log_ref
        self.net = (ActorCriticNetwork(trunk, num_actions) if kind == "dueling" else QNetwork(trunk, num_actions)).to(DTYPE)
        # Larger output weights than the agents' init, so pi is far from uniform and every term counts.
        for p in self.net.parameters():
            nn.init.normal_(p, std=0.7)

    def __call__(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.kind == "dueling":
            logits, values = self.net(obs)
            log_pi = torch.log_softmax(logits, -1)
            q = losses.dueling_soft_q(values, log_pi, self.tau, self.log_ref)
        else:  # plain Q head: V and pi are defined from Q (§2.1)
            q = self.net(obs)
            values = losses.soft_value(q, self.tau, self.log_ref)
            log_pi = losses.boltzmann_log_policy(q, self.tau)
        return q, values, log_pi


def _flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    # A parameter the loss does not use (the value head, for a policy loss) has zero gradient.
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])


def expected_gradient_error(n_steps: int, kind: str, seed: int = 0, states: int = 3, num_actions: int = 4,
                            obs_dim: int = 5, tau: float = 0.3, gamma: float = 0.9) -> float:
    """Max |E grad L_QL - (tau E grad L_pol + E grad L_val)| over parameters, exact expectation."""
    torch.manual_seed(seed)
    log_ref = -math.log(num_actions)
    heads = _Heads(kind, obs_dim, num_actions, tau, log_ref)
    params = list(heads.net.parameters())
    obs = torch.randn(states, obs_dim, dtype=DTYPE)
    # For each (state, action): a random continuation of n-1 further steps and a bootstrap state.
    rewards = torch.randn(states, num_actions, n_steps, dtype=DTYPE)
    later_obs = torch.randn(states, num_actions, n_steps, obs_dim, dtype=DTYPE)  # s_{t+1..t+n}
    q, values, log_pi = heads(obs)
    kl = losses.kl_to_reference(log_pi, log_ref)
    with torch.no_grad():
        _, later_values, later_log_pi = heads(later_obs.reshape(-1, obs_dim))
        later_values = later_values.view(states, num_actions, n_steps)
        later_kl = losses.kl_to_reference(later_log_pi, log_ref).view(states, num_actions, n_steps)
    pi = log_pi.exp().detach()
    lhs = torch.zeros(sum(p.numel() for p in params), dtype=DTYPE)
    rhs = torch.zeros_like(lhs)
    no_end = torch.zeros(n_steps, 1, dtype=torch.bool)
    for s in range(states):
        for a in range(num_actions):
            # Window [s_t, s_{t+1}, ..., s_{t+n-1}], bootstrapping from s_{t+n}.
            window_kl = torch.cat([kl[s:s + 1].detach(), later_kl[s, a, :-1]]).unsqueeze(1)
            next_values = later_values[s, a].unsqueeze(1)
            y = losses.nstep_soft_targets(rewards[s, a].unsqueeze(1), window_kl, no_end, no_end, next_values,
                                          gamma, tau)[0]
            loss_ql = losses.soft_q_loss(q[s, a], y)
            advantage = losses.entropy_pg_advantages(y, values[s], kl[s], tau)
            loss_pol = losses.policy_gradient_loss(log_pi[s, a], advantage) + losses.kl_penalty_loss(kl[s], tau)
            loss_val = losses.value_loss(values[s], values[s].detach() + advantage)
            w = pi[s, a] / states
            lhs += w * _flat_grad(loss_ql, params)
            rhs += w * (tau * _flat_grad(loss_pol, params) + _flat_grad(loss_val, params))
    return float((lhs - rhs).abs().max())


def per_sample_identity_error(kind: str, seed: int = 0, samples: int = 8, num_actions: int = 4, obs_dim: int = 5,
                              tau: float = 0.3) -> float:
    """Max over samples and parameters of |grad 1/2(Q-y)^2 + (tau grad log pi(a) + grad V)(y - Q)|."""
    torch.manual_seed(seed)
    log_ref = -math.log(num_actions)
    heads = _Heads(kind, obs_dim, num_actions, tau, log_ref)
    params = list(heads.net.parameters())
    worst = 0.0
    for _ in range(samples):
        obs = torch.randn(1, obs_dim, dtype=DTYPE)
        a = int(torch.randint(num_actions, ()))
        y = torch.randn((), dtype=DTYPE)
        q, values, log_pi = heads(obs)
        grad_ql = _flat_grad(losses.soft_q_loss(q[0, a], y), params)
        residual = float((y - q[0, a]).detach())
        grad_pg = _flat_grad(log_pi[0, a], params)
        grad_v = _flat_grad(values[0], params)
        worst = max(worst, float((grad_ql + (tau * grad_pg + grad_v) * residual).abs().max()))
    return worst


def trajectory_param_diffs(updates: int = 200, seed: int = 0) -> dict[str, float]:
    """Train matched-q, a3c with the sampled entropy term, and standard a3c from one seed on
    CartPole-v1 in float64; max |parameter difference| of each a3c against matched-q."""
    from ..zoo.train import train

    common = {"float64": True, "num_envs": 4, "n_steps": 5, "tau": 0.05, "lr_decay": False}
    steps = updates * common["num_envs"] * common["n_steps"]
    runs = {
        "matched-q": train("matched-q", "CartPole-v1", steps, seed=seed, config_values=common),
        "a3c-sampled": train("a3c", "CartPole-v1", steps, seed=seed,
                             config_values=dict(common, entropy_gradient="sampled")),
        "a3c": train("a3c", "CartPole-v1", steps, seed=seed, config_values=common),
    }
    reference = runs["matched-q"].agent.weights()

    def diff(name: str) -> float:
        weights = runs[name].agent.weights()
        return max(float((weights[k] - reference[k]).abs().max()) for k in reference)

    return {"trajectory_max_param_diff": diff("a3c-sampled"), "trajectory_param_diff_analytic_a3c": diff("a3c"),
            "trajectory_updates": updates}


def npg_step_error(seed: int = 0, states: int = 5, num_actions: int = 3, features: int = 4, tau: float = 0.2,
                   eps: float = 0.1) -> float:
    """Gauss-Newton step on the damped soft-Q regression vs (eps/tau) x natural gradient (§5).

    Policy: softmax of linear logits; V is held fixed (not a parameter). Expectations over actions
    are exact (weights pi). Compared as the induced change of log pi at every (s, a), since the
    Fisher matrix of softmax logits is singular."""
    gen = torch.Generator().manual_seed(seed)
    log_ref = -math.log(num_actions)
    phi = torch.randn(states, features, generator=gen, dtype=DTYPE)
    theta = torch.randn(features, num_actions, generator=gen, dtype=DTYPE, requires_grad=True)
    values = torch.randn(states, generator=gen, dtype=DTYPE)  # frozen V(s)
    advantages = torch.randn(states, num_actions, generator=gen, dtype=DTYPE)  # Delta(s, a)

    log_pi = torch.log_softmax(phi @ theta, -1)
    pi = log_pi.exp().detach()
    kl = losses.kl_to_reference(log_pi, log_ref)
    q = losses.dueling_soft_q(values, log_pi, tau, log_ref)  # gradient flows into log pi only
    # Psi: rows grad log pi(a|s); J: rows grad Q(s, a) = tau Psi.
    psi = torch.stack([_flat_grad(log_pi[s, a], [theta]) for s in range(states) for a in range(num_actions)])
    jac = torch.stack([_flat_grad(q[s, a], [theta]) for s in range(states) for a in range(num_actions)])
    weights = (pi / states).reshape(-1)

    # Soft-Q side: damped target (1-eps) Q_old + eps Q-hat, Q-hat = y = tau KL + V + Delta.
    q_hat = (kl.detach() * tau + values).unsqueeze(-1) + advantages
    damped = (1 - eps) * q.detach() + eps * q_hat
    residual = (q.detach() - damped).reshape(-1)
    gn_step = -torch.linalg.pinv(jac.T @ (weights[:, None] * jac)) @ (jac.T @ (weights * residual))

    # Policy-gradient side: g = E[grad log pi Delta] - tau grad KL, from the project's PG losses.
    pg_loss = sum(pi[s, a] / states * losses.policy_gradient_loss(log_pi[s, a], advantages[s, a])
                  for s in range(states) for a in range(num_actions))
    pg_loss = pg_loss + losses.kl_penalty_loss(kl, tau)
    g = -_flat_grad(pg_loss, [theta])
    fisher = psi.T @ (weights[:, None] * psi)
    npg_step = (eps / tau) * (torch.linalg.pinv(fisher) @ g)
    return float((psi @ gn_step - psi @ npg_step).abs().max())


def run_all(trajectory_updates: int = 200) -> dict[str, float]:
    """Every check, worst case over its variants; keys of :data:`BOUNDS` plus reported extras."""
    results: dict[str, float] = {}
    for n in (1, 3):
        for kind in ("dueling", "q_head"):
            results[f"expected_gradient_error[{n}-step,{kind}]"] = expected_gradient_error(n, kind)
    results["expected_gradient_error"] = max(v for k, v in results.items() if k.startswith("expected_gradient_error["))
    results["per_sample_identity_error"] = max(per_sample_identity_error(k) for k in ("dueling", "q_head"))
    results.update(trajectory_param_diffs(trajectory_updates))
    results["npg_step_error"] = npg_step_error()
    return results
