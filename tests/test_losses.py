"""equirl.agents.losses against independent float64 references written from the maths.

Every reference below is plain numpy (float64) with explicit loops, written from the formulas of
Schulman, Chen & Abbeel (2017) as summarised in shared/docs/paper-spec.md (sections 1-2 and 7);
none of them calls, or copies, the code under test.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from equirl.agents import losses as L

DT = torch.float64


def t64(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=DT)


def npy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------
# numpy references
# ---------------------------------------------------------------------------------------------

def ref_soft_value_row(q_row, tau, pibar_row):
    """tau * log sum_a pibar(a) exp(q_a / tau), shifted by the max for stability."""
    z = [q / tau for q in q_row]
    m = max(z)
    s = 0.0
    for za, pa in zip(z, pibar_row):
        s += pa * math.exp(za - m)
    return tau * (m + math.log(s))


def ref_soft_value(q, tau, pibar_per_action):
    """q [..., A] -> [...]; pibar_per_action is the (possibly unnormalised) weight of each action."""
    q = np.asarray(q, dtype=np.float64)
    flat = q.reshape(-1, q.shape[-1])
    out = np.empty(flat.shape[0])
    for i, row in enumerate(flat):
        out[i] = ref_soft_value_row(list(row), tau, [pibar_per_action] * len(row))
    return out.reshape(q.shape[:-1])


def ref_kl(log_pi, log_ref):
    log_pi = np.asarray(log_pi, dtype=np.float64)
    flat = log_pi.reshape(-1, log_pi.shape[-1])
    out = np.empty(flat.shape[0])
    for i, row in enumerate(flat):
        s = 0.0
        for lp in row:
            s += math.exp(lp) * (lp - log_ref)
        out[i] = s
    return out.reshape(log_pi.shape[:-1])


def ref_log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(-1, x.shape[-1])
    out = np.empty_like(flat)
    for i, row in enumerate(flat):
        m = max(row)
        lse = m + math.log(sum(math.exp(v - m) for v in row))
        for j, v in enumerate(row):
            out[i, j] = v - lse
    return out.reshape(x.shape)


def ref_nstep(r, kl, term, trunc, nv, gamma, tau):
    """Explicit forward sum over the window that starts at t.

    The window runs to the end of the segment or to the first step j >= t at which the episode
    terminated or was truncated, k = j - t + 1 steps:
        y_t = r_t + sum_{d=1}^{k-1} gamma^d (r_{t+d} - tau KL_{t+d}) + gamma^k [not term_j] V(s'_j)
    """
    T, B = r.shape
    y = np.zeros((T, B))
    for b in range(B):
        for t in range(T):
            j = t
            while j < T - 1 and not (term[j, b] or trunc[j, b]):
                j += 1
            k = j - t + 1
            total = float(r[t, b])
            for d in range(1, k):
                total += gamma ** d * (float(r[t + d, b]) - tau * float(kl[t + d, b]))
            if not term[j, b]:
                total += gamma ** k * float(nv[j, b])
            y[t, b] = total
    return y


def call_nstep(r, kl, term, trunc, nv, gamma, tau):
    return L.nstep_soft_targets(t64(r), t64(kl), torch.as_tensor(term), torch.as_tensor(trunc), t64(nv),
                                gamma, tau)


# ---------------------------------------------------------------------------------------------
# log_reference, soft/hard value, Boltzmann policy, KL
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("num_actions", [1, 2, 6, 18])
def test_log_reference(num_actions):
    assert L.log_reference(num_actions, "uniform") == pytest.approx(-math.log(num_actions), abs=1e-15)
    assert L.log_reference(num_actions, "none") == 0.0


@pytest.mark.parametrize("bad", ["Uniform", "kl", "", "entropy"])
def test_log_reference_bad_name(bad):
    with pytest.raises(ValueError):
        L.log_reference(4, bad)


@pytest.mark.parametrize("reference", ["uniform", "none"])
@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0, 3.0])
def test_soft_value_matches_reference(reference, tau):
    rng = np.random.default_rng(1)
    A = 5
    q = rng.normal(size=(4, 3, A)) * 2.0
    log_ref = L.log_reference(A, reference)
    pibar = 1.0 / A if reference == "uniform" else 1.0
    got = L.soft_value(t64(q), tau, log_ref)
    assert got.shape == (4, 3)
    np.testing.assert_allclose(npy(got), ref_soft_value(q, tau, pibar), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reference", ["uniform", "none"])
def test_soft_value_large_magnitude_is_stable(reference):
    A = 4
    tau = 0.01
    q = np.array([[1000.0, 999.0, 998.5, 1000.0 - 1e-3], [-1000.0, -1001.0, -1000.5, -999.0],
                  [1000.0, 1000.0, 1000.0, 1000.0]])
    log_ref = L.log_reference(A, reference)
    pibar = 1.0 / A if reference == "uniform" else 1.0
    got = npy(L.soft_value(t64(q), tau, log_ref))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref_soft_value(q, tau, pibar), rtol=1e-13, atol=1e-10)
    # All-equal actions: V = q + tau*log(sum pibar) exactly in maths.
    assert got[2] == pytest.approx(1000.0 + tau * math.log(A * pibar), abs=1e-10)


def test_entropy_bonus_minus_kl_penalty_value_is_tau_log_A():
    rng = np.random.default_rng(2)
    for A in (2, 3, 7, 18):
        for tau in (0.01, 0.1, 1.0):
            q = t64(rng.normal(size=(6, A)))
            bonus = L.soft_value(q, tau, L.log_reference(A, "none"))
            penalty = L.soft_value(q, tau, L.log_reference(A, "uniform"))
            np.testing.assert_allclose(npy(bonus - penalty), tau * math.log(A), rtol=0, atol=1e-12)


def test_soft_value_tends_to_hard_value():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(8, 6))
    hard = npy(L.hard_value(t64(q)))
    np.testing.assert_array_equal(hard, np.array([max(row) for row in q]))
    for reference in ("uniform", "none"):
        soft = npy(L.soft_value(t64(q), 1e-4, L.log_reference(6, reference)))
        assert np.all(np.abs(soft - hard) < 1e-3)
        assert np.all(np.isfinite(soft))


def test_boltzmann_log_policy_normalised_and_eq12():
    rng = np.random.default_rng(4)
    A = 5
    log_ref = L.log_reference(A, "uniform")
    for tau in (0.01, 0.5, 2.0):
        q = rng.normal(size=(3, 4, A)) * 3.0
        logp = L.boltzmann_log_policy(t64(q), tau)
        np.testing.assert_allclose(npy(logp.exp().sum(-1)), 1.0, rtol=0, atol=1e-12)
        # Eq. 12 with V_Q = soft_value (equirl) ...
        vq = L.soft_value(t64(q), tau, log_ref)
        eq12 = log_ref + (t64(q) - vq.unsqueeze(-1)) / tau
        np.testing.assert_allclose(npy(logp), npy(eq12), rtol=1e-12, atol=1e-9)
        # ... and with the numpy reference V_Q: log(pibar * exp((Q - V_Q)/tau)).
        vq_ref = ref_soft_value(q, tau, 1.0 / A)
        expected = np.empty_like(q)
        for idx in np.ndindex(q.shape[:-1]):
            for a in range(A):
                expected[idx + (a,)] = math.log(1.0 / A) + (q[idx + (a,)] - vq_ref[idx]) / tau
        np.testing.assert_allclose(npy(logp), expected, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("reference", ["uniform", "none"])
def test_kl_to_reference_matches_reference(reference):
    rng = np.random.default_rng(5)
    A = 6
    log_ref = L.log_reference(A, reference)
    log_pi = ref_log_softmax(rng.normal(size=(5, 2, A)) * 2)
    got = L.kl_to_reference(t64(log_pi), log_ref)
    assert got.shape == (5, 2)
    np.testing.assert_allclose(npy(got), ref_kl(log_pi, log_ref), rtol=1e-12, atol=1e-14)


def test_kl_with_zero_reference_is_minus_entropy():
    rng = np.random.default_rng(6)
    log_pi = ref_log_softmax(rng.normal(size=(7, 4)))
    entropy = np.array([-sum(math.exp(lp) * lp for lp in row) for row in log_pi])
    np.testing.assert_allclose(npy(L.kl_to_reference(t64(log_pi), 0.0)), -entropy, rtol=1e-12, atol=1e-14)


def test_kl_to_uniform_nonnegative_and_zero_at_uniform():
    rng = np.random.default_rng(7)
    for A in (2, 5, 18):
        log_ref = L.log_reference(A, "uniform")
        log_pi = ref_log_softmax(rng.normal(size=(50, A)) * rng.uniform(0.1, 10))
        kl = npy(L.kl_to_reference(t64(log_pi), log_ref))
        assert np.all(kl >= -1e-15)
        uniform = np.full((3, A), -math.log(A))
        np.testing.assert_allclose(npy(L.kl_to_reference(t64(uniform), log_ref)), 0.0, atol=1e-14)


@pytest.mark.parametrize("reference", ["uniform", "none"])
@pytest.mark.parametrize("tau", [0.05, 0.3, 1.7])
def test_variational_identity(reference, tau):
    """E_pi[Q] - tau KL(pi||pibar) == V_Q - tau KL(pi||pi^B_Q) for every pi (paper-spec §7.2)."""
    rng = np.random.default_rng(8)
    A = 5
    log_ref = L.log_reference(A, reference)
    for _ in range(5):
        q = rng.normal(size=(6, A)) * 2
        log_pi = ref_log_softmax(rng.normal(size=(6, A)) * 2)
        q_t, log_pi_t = t64(q), t64(log_pi)
        # pi^B_Q = pibar exp((Q - V_Q)/tau) is softmax(Q/tau) for either reference.
        log_boltz = L.boltzmann_log_policy(q_t, tau)
        lhs = (log_pi_t.exp() * q_t).sum(-1) - tau * L.kl_to_reference(log_pi_t, log_ref)
        kl_to_boltz = (log_pi_t.exp() * (log_pi_t - log_boltz)).sum(-1)
        rhs = L.soft_value(q_t, tau, log_ref) - tau * kl_to_boltz
        np.testing.assert_allclose(npy(lhs), npy(rhs), rtol=0, atol=1e-10)
        # Independent numpy version of both sides.
        pibar = 1.0 / A if reference == "uniform" else 1.0
        vq = ref_soft_value(q, tau, pibar)
        for i in range(q.shape[0]):
            pi = [math.exp(v) for v in log_pi[i]]
            lhs_np = sum(p * qa for p, qa in zip(pi, q[i])) - tau * sum(
                p * (lp - math.log(pibar)) for p, lp in zip(pi, log_pi[i]))
            log_pib = [math.log(pibar) + (qa - vq[i]) / tau for qa in q[i]]
            rhs_np = vq[i] - tau * sum(p * (lp - lb) for p, lp, lb in zip(pi, log_pi[i], log_pib))
            assert lhs_np == pytest.approx(rhs_np, abs=1e-10)
            assert float(lhs[i]) == pytest.approx(lhs_np, abs=1e-10)
        # The maximum over pi is V_Q, attained at pi^B_Q.
        at_boltz = (log_boltz.exp() * q_t).sum(-1) - tau * L.kl_to_reference(log_boltz, log_ref)
        np.testing.assert_allclose(npy(at_boltz), npy(L.soft_value(q_t, tau, log_ref)), rtol=0, atol=1e-10)
        assert np.all(npy(lhs) <= npy(at_boltz) + 1e-12)


# ---------------------------------------------------------------------------------------------
# n-step soft targets
# ---------------------------------------------------------------------------------------------

def _random_case(rng, T, B, p_term, p_trunc, exclusive=True):
    r = rng.normal(size=(T, B))
    kl = rng.uniform(0, 2, size=(T, B))
    nv = rng.normal(size=(T, B)) * 3
    term = rng.random((T, B)) < p_term
    trunc = rng.random((T, B)) < p_trunc
    if exclusive:
        trunc &= ~term
    return r, kl, term, trunc, nv


@pytest.mark.parametrize("T", [1, 3, 5])
@pytest.mark.parametrize("B", [1, 4])
def test_nstep_targets_random_masks(T, B):
    rng = np.random.default_rng(100 + 10 * T + B)
    for trial in range(40):
        p_term = [0.0, 0.2, 0.5, 0.9][trial % 4]
        p_trunc = [0.0, 0.3, 0.6, 0.1, 0.9][trial % 5]
        gamma = float(rng.choice([0.0, 0.5, 0.9, 0.99, 1.0]))
        tau = float(rng.choice([0.0, 0.01, 0.5, 2.0]))
        case = _random_case(rng, T, B, p_term, p_trunc, exclusive=trial % 3 != 0)
        got = call_nstep(*case, gamma, tau)
        assert got.shape == (T, B) and got.dtype == DT
        np.testing.assert_allclose(npy(got), ref_nstep(*case, gamma, tau), rtol=1e-12, atol=1e-12)


# Hand-picked columns of a T=5 segment: (terminated steps, truncated steps).
SPECIAL_COLUMNS = {
    "no_ends": ((), ()),
    "two_terminals": ((1, 3), ()),
    "three_terminals": ((0, 2, 4), ()),
    "terminal_at_last": ((4,), ()),
    "truncated_at_last": ((), (4,)),
    "truncated_middle": ((), (2,)),
    "terminal_after_truncation": ((3,), (2,)),
    "truncation_after_terminal": ((1,), (2,)),
    "terminal_at_first": ((0,), ()),
    "truncated_at_first": ((), (0,)),
    "all_truncated": ((), (0, 1, 2, 3, 4)),
    "all_terminal": ((0, 1, 2, 3, 4), ()),
    "both_flags_same_step": ((2,), (2,)),
}


def _special_case(rng, T=5):
    names = list(SPECIAL_COLUMNS)
    B = len(names)
    r = rng.normal(size=(T, B))
    kl = rng.uniform(0, 2, size=(T, B))
    nv = rng.normal(size=(T, B)) * 3
    term = np.zeros((T, B), dtype=bool)
    trunc = np.zeros((T, B), dtype=bool)
    for b, name in enumerate(names):
        te, tr = SPECIAL_COLUMNS[name]
        term[list(te), b] = True
        trunc[list(tr), b] = True
    return names, (r, kl, term, trunc, nv)


@pytest.mark.parametrize("gamma,tau", [(0.9, 0.3), (0.99, 0.01), (1.0, 1.0), (0.5, 0.0)])
def test_nstep_targets_special_masks(gamma, tau):
    rng = np.random.default_rng(11)
    names, case = _special_case(rng)
    got = npy(call_nstep(*case, gamma, tau))
    expected = ref_nstep(*case, gamma, tau)
    for b, name in enumerate(names):
        np.testing.assert_allclose(got[:, b], expected[:, b], rtol=1e-12, atol=1e-12, err_msg=name)


def test_nstep_targets_hand_computed_column():
    """One column worked out by hand: T=4, truncated at 1, terminated at 3."""
    g, tau = 0.9, 0.5
    r = np.array([[1.0], [2.0], [3.0], [4.0]])
    kl = np.array([[10.0], [20.0], [30.0], [40.0]])
    nv = np.array([[100.0], [200.0], [300.0], [400.0]])
    term = np.array([[False], [False], [False], [True]])
    trunc = np.array([[False], [True], [False], [False]])
    y = npy(call_nstep(r, kl, term, trunc, nv, g, tau))[:, 0]
    expected = [
        1.0 + g * (2.0 - tau * 20.0) + g ** 2 * 200.0,  # window 0..1, cut at 1: bootstrap V(s'_1)
        2.0 + g * 200.0,                                # cut at 1
        3.0 + g * (4.0 - tau * 40.0),                    # window 2..3, terminal at 3: no bootstrap
        4.0,                                            # terminal
    ]
    np.testing.assert_allclose(y, expected, rtol=1e-14, atol=1e-12)


@pytest.mark.parametrize("T", [1, 3, 5])
def test_nstep_targets_ignore_unused_next_values(T):
    rng = np.random.default_rng(12 + T)
    for trial in range(20):
        B = 4
        case = _random_case(rng, T, B, 0.3, 0.3, exclusive=trial % 2 == 0)
        r, kl, term, trunc, nv = case
        base = call_nstep(r, kl, term, trunc, nv, 0.95, 0.2)
        unused = np.zeros((T, B), dtype=bool)
        unused[: T - 1] = ~trunc[: T - 1]
        perturbed = nv.copy()
        perturbed[unused] += rng.normal(size=unused.sum()) * 1e3 + 7.0
        again = call_nstep(r, kl, term, trunc, perturbed, 0.95, 0.2)
        assert torch.equal(base, again)
        # And the entries that are read do matter (sanity check of the perturbation test).
        used = ~unused & ~term
        if used.any():
            bumped = nv.copy()
            bumped[used] += 1.0
            assert not torch.equal(base, call_nstep(r, kl, term, trunc, bumped, 0.95, 0.2))


@pytest.mark.parametrize("T", [1, 3, 5])
def test_nstep_targets_telescoping(T):
    """y_t = tau KL_t + V(s_t) + sum_{d>=0} gamma^d delta_{t+d} with no episode ends (paper-spec §7.8)."""
    rng = np.random.default_rng(13 + T)
    B = 3
    for gamma, tau in [(0.99, 0.01), (0.8, 0.7), (1.0, 2.0)]:
        r = rng.normal(size=(T, B))
        kl = rng.uniform(0, 2, size=(T, B))
        V = rng.normal(size=(T + 1, B))  # V(s_0) .. V(s_T)
        nv = V[1:]
        none = np.zeros((T, B), dtype=bool)
        got = npy(call_nstep(r, kl, none, none, nv, gamma, tau))
        delta = r - tau * kl + gamma * V[1:] - V[:-1]
        for b in range(B):
            for t in range(T):
                expected = tau * kl[t, b] + V[t, b] + sum(gamma ** d * delta[t + d, b] for d in range(T - t))
                assert got[t, b] == pytest.approx(expected, abs=1e-12)


def test_nstep_targets_are_detached():
    rng = np.random.default_rng(14)
    r, kl, term, trunc, nv = _random_case(rng, 4, 3, 0.2, 0.2)
    rt, klt, nvt = (t64(x).requires_grad_() for x in (r, kl, nv))
    y = L.nstep_soft_targets(rt, klt, torch.as_tensor(term), torch.as_tensor(trunc), nvt, 0.9, 0.1)
    assert not y.requires_grad
    assert y.grad_fn is None


def test_nstep_targets_shape_errors():
    z = torch.zeros(3, 2, dtype=DT)
    m = torch.zeros(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError):
        L.nstep_soft_targets(torch.zeros(3, 3, dtype=DT), z, m, m, z, 0.9, 0.1)
    with pytest.raises(ValueError):
        L.nstep_soft_targets(z, z, m, m, torch.zeros(2, 2, dtype=DT), 0.9, 0.1)
    with pytest.raises(ValueError):
        L.nstep_soft_targets(z, z, torch.zeros(3, dtype=torch.bool), m, z, 0.9, 0.1)
    with pytest.raises(ValueError):
        L.nstep_soft_targets(z, torch.zeros(2, 3, dtype=DT), m, m, z, 0.9, 0.1)
    one_d = torch.zeros(3, dtype=DT)
    b1 = torch.zeros(3, dtype=torch.bool)
    with pytest.raises(ValueError):
        L.nstep_soft_targets(one_d, one_d, b1, b1, one_d, 0.9, 0.1)


# ---------------------------------------------------------------------------------------------
# losses: values, gradients, stop-gradients
# ---------------------------------------------------------------------------------------------

def test_soft_q_loss_value_and_grad():
    rng = np.random.default_rng(20)
    q, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 3))
    qt, yt = t64(q).requires_grad_(), t64(y).requires_grad_()
    loss = L.soft_q_loss(qt, yt)
    n = q.size
    expected = sum(0.5 * (q[i, j] - y[i, j]) ** 2 for i in range(5) for j in range(3)) / n
    assert loss.item() == pytest.approx(expected, rel=1e-13)
    loss.backward()
    np.testing.assert_allclose(npy(qt.grad), (q - y) / n, rtol=1e-13, atol=1e-15)
    assert yt.grad is None


def test_policy_gradient_loss_value_and_grad():
    rng = np.random.default_rng(21)
    lp, adv = -rng.uniform(0, 3, size=(4, 6)), rng.normal(size=(4, 6))
    lpt, advt = t64(lp).requires_grad_(), t64(adv).requires_grad_()
    loss = L.policy_gradient_loss(lpt, advt)
    n = lp.size
    expected = -sum(lp[i, j] * adv[i, j] for i in range(4) for j in range(6)) / n
    assert loss.item() == pytest.approx(expected, rel=1e-13)
    loss.backward()
    np.testing.assert_allclose(npy(lpt.grad), -adv / n, rtol=1e-13, atol=1e-15)
    assert advt.grad is None


def test_kl_penalty_loss_value_and_grad():
    rng = np.random.default_rng(22)
    kl = rng.uniform(0, 2, size=(3, 5))
    tau = 0.37
    klt = t64(kl).requires_grad_()
    loss = L.kl_penalty_loss(klt, tau)
    assert loss.item() == pytest.approx(tau * sum(kl.ravel()) / kl.size, rel=1e-13)
    loss.backward()
    np.testing.assert_allclose(npy(klt.grad), np.full(kl.shape, tau / kl.size), rtol=1e-13)


def test_value_loss_value_and_grad():
    rng = np.random.default_rng(23)
    v, vt_ = rng.normal(size=(5, 2)), rng.normal(size=(5, 2))
    vt, tt = t64(v).requires_grad_(), t64(vt_).requires_grad_()
    loss = L.value_loss(vt, tt)
    n = v.size
    expected = sum(0.5 * (v[i, j] - vt_[i, j]) ** 2 for i in range(5) for j in range(2)) / n
    assert loss.item() == pytest.approx(expected, rel=1e-13)
    loss.backward()
    np.testing.assert_allclose(npy(vt.grad), (v - vt_) / n, rtol=1e-13, atol=1e-15)
    assert tt.grad is None


def test_kl_penalty_loss_gradient_through_logits():
    """d/dlogits tau*mean KL(softmax(logits)||uniform), vs the hand-derived numpy gradient
    tau/N * pi_j (log pi_j - log_ref - KL)."""
    rng = np.random.default_rng(24)
    A, N, tau = 4, 3, 0.2
    logits = rng.normal(size=(N, A))
    log_ref = L.log_reference(A, "uniform")
    lt = t64(logits).requires_grad_()
    L.kl_penalty_loss(L.kl_to_reference(F.log_softmax(lt, -1), log_ref), tau).backward()
    log_pi = ref_log_softmax(logits)
    expected = np.zeros_like(logits)
    for i in range(N):
        kl = sum(math.exp(lp) * (lp - log_ref) for lp in log_pi[i])
        for j in range(A):
            expected[i, j] = tau / N * math.exp(log_pi[i, j]) * (log_pi[i, j] - log_ref - kl)
    np.testing.assert_allclose(npy(lt.grad), expected, rtol=1e-11, atol=1e-14)


def test_entropy_pg_advantages():
    rng = np.random.default_rng(25)
    y, v, kl = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.uniform(0, 2, size=(4, 3))
    tau = 0.3
    yt, vt, klt = (t64(x).requires_grad_() for x in (y, v, kl))
    got = L.entropy_pg_advantages(yt, vt, klt, tau)
    assert not got.requires_grad
    expected = np.array([[y[i, j] - tau * kl[i, j] - v[i, j] for j in range(3)] for i in range(4)])
    np.testing.assert_allclose(npy(got), expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("reference", ["uniform", "none"])
def test_sampled_soft_advantages(reference):
    rng = np.random.default_rng(26)
    A = 6
    log_ref = L.log_reference(A, reference)
    y, v, lp = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), -rng.uniform(0, 4, size=(4, 3))
    tau = 0.7
    yt, vt, lpt = (t64(x).requires_grad_() for x in (y, v, lp))
    got = L.sampled_soft_advantages(yt, vt, lpt, tau, log_ref)
    assert not got.requires_grad
    expected = np.array([[y[i, j] - v[i, j] - tau * (lp[i, j] - log_ref) for j in range(3)] for i in range(4)])
    np.testing.assert_allclose(npy(got), expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("scale", [0.5, 100.0, -2.0, 0.0, 1.0 / 0.01])
def test_scale_gradient(scale):
    rng = np.random.default_rng(27)
    x = t64(rng.normal(size=(3, 4))).requires_grad_()
    w = rng.normal(size=(3, 4))
    y = L.scale_gradient(x, scale)
    assert torch.equal(y, x)
    (y * t64(w)).sum().backward()
    np.testing.assert_allclose(npy(x.grad), scale * w, rtol=1e-15, atol=0)


# ---------------------------------------------------------------------------------------------
# dueling soft Q and the per-sample identity
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("reference", ["uniform", "none"])
def test_dueling_soft_q_value(reference):
    rng = np.random.default_rng(30)
    A, B, tau = 5, 4, 0.3
    log_ref = L.log_reference(A, reference)
    v = rng.normal(size=B)
    log_pi = ref_log_softmax(rng.normal(size=(B, A)))
    for vs, advs in [(1.0, 1.0), (0.5, 1.0 / tau)]:
        q = npy(L.dueling_soft_q(t64(v), t64(log_pi), tau, log_ref, value_scale=vs, advantage_scale=advs))
        expected = np.array([[v[b] + tau * (log_pi[b, a] - log_ref) for a in range(A)] for b in range(B)])
        np.testing.assert_allclose(q, expected, rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize("reference", ["uniform", "none"])
@pytest.mark.parametrize("tau", [0.01, 0.3, 2.0])
def test_dueling_soft_value_recovers_value_head(reference, tau):
    rng = np.random.default_rng(31)
    A = 6
    log_ref = L.log_reference(A, reference)
    v = t64(rng.normal(size=(3, 4)) * 5)
    logits = t64(rng.normal(size=(3, 4, A)) * 3)
    q = L.dueling_soft_q(v, F.log_softmax(logits, -1), tau, log_ref)
    np.testing.assert_allclose(npy(L.soft_value(q, tau, log_ref)), npy(v), rtol=0, atol=1e-12)
    # Its Boltzmann policy is softmax(logits).
    np.testing.assert_allclose(npy(L.boltzmann_log_policy(q, tau)), npy(F.log_softmax(logits, -1)), atol=1e-11)


@pytest.mark.parametrize("c,tau", [(0.5, 0.01), (2.0, 0.3), (1.0, 1.0)])
def test_dueling_soft_q_scaled_gradients(c, tau):
    rng = np.random.default_rng(32)
    A, B = 4, 5
    log_ref = L.log_reference(A, "uniform")
    v, logits, y = rng.normal(size=B), rng.normal(size=(B, A)), rng.normal(size=B)
    actions = rng.integers(0, A, size=B)
    vt, lt = t64(v).requires_grad_(), t64(logits).requires_grad_()
    q = L.dueling_soft_q(vt, F.log_softmax(lt, -1), tau, log_ref, value_scale=c, advantage_scale=1.0 / tau)
    q_taken = q[torch.arange(B), torch.as_tensor(actions)]
    (0.5 * (q_taken - t64(y)).pow(2)).sum().backward()
    log_pi = ref_log_softmax(logits)
    gv = np.zeros(B)
    gl = np.zeros((B, A))
    for b in range(B):
        a = actions[b]
        qa = v[b] + tau * (log_pi[b, a] - log_ref)
        gv[b] = c * (qa - y[b])
        for j in range(A):
            dlogpi = (1.0 if j == a else 0.0) - math.exp(log_pi[b, j])
            gl[b, j] = (1.0 / tau) * tau * (qa - y[b]) * dlogpi
    np.testing.assert_allclose(npy(vt.grad), gv, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(npy(lt.grad), gl, rtol=1e-10, atol=1e-13)


class _TinyNet(torch.nn.Module):
    def __init__(self, obs_dim, hidden, num_actions):
        super().__init__()
        self.trunk = torch.nn.Linear(obs_dim, hidden)
        self.v = torch.nn.Linear(hidden, 1)
        self.pi = torch.nn.Linear(hidden, num_actions)

    def forward(self, x):
        h = torch.tanh(self.trunk(x))
        return self.v(h).squeeze(-1), self.pi(h)


def _flat_grad(out, params):
    grads = torch.autograd.grad(out, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)])


@pytest.mark.parametrize("reference", ["uniform", "none"])
@pytest.mark.parametrize("tau", [0.01, 0.5])
def test_per_sample_gradient_identity(reference, tau):
    """grad 1/2 (Q(s,a) - y)^2 == -(tau grad log pi(a) + grad V)(y - Q) (paper-spec §7.3)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(33)
    A = 4
    log_ref = L.log_reference(A, reference)
    net = _TinyNet(3, 8, A).to(DT)
    params = list(net.parameters())
    for _ in range(4):
        s = t64(rng.normal(size=(1, 3)))
        a = int(rng.integers(0, A))
        y = t64([rng.normal() * 2])
        v, logits = net(s)
        log_pi = F.log_softmax(logits, -1)
        q = L.dueling_soft_q(v, log_pi, tau, log_ref)[:, a]
        lhs = _flat_grad(L.soft_q_loss(q, y), params)
        rhs = -(tau * _flat_grad(log_pi[0, a], params) + _flat_grad(v[0], params)) * (y[0] - q[0]).item()
        np.testing.assert_allclose(npy(lhs), npy(rhs), rtol=0, atol=1e-12)
        # Same as the actor-critic with the sampled advantage A_hat = y - Q for policy and value
        # (paper-spec §2.3.3): tau * grad L_pol + grad L_val.
        adv = L.sampled_soft_advantages(y, v, log_pi[:, a], tau, log_ref)
        assert float(adv[0]) == pytest.approx((y[0] - q[0]).item(), abs=1e-12)
        ac = tau * L.policy_gradient_loss(log_pi[:, a], adv) + L.value_loss(v, v.detach() + adv)
        np.testing.assert_allclose(npy(_flat_grad(ac, params)), npy(lhs), rtol=0, atol=1e-12)


@pytest.mark.parametrize("reference", ["uniform", "none"])
def test_expected_gradient_identity(reference):
    """sum_a pi(a) grad L_QL(a) == tau sum_a pi(a) grad L_pol(a) + sum_a pi(a) grad L_val(a)
    with arbitrary per-action targets (paper-spec §7.4), built from the equirl losses."""
    torch.manual_seed(1)
    rng = np.random.default_rng(34)
    A, tau = 5, 0.2
    log_ref = L.log_reference(A, reference)
    net = _TinyNet(3, 6, A).to(DT)
    params = list(net.parameters())
    s = t64(rng.normal(size=(1, 3)))
    y_per_action = rng.normal(size=A) * 2
    v, logits = net(s)
    log_pi = F.log_softmax(logits, -1)
    pi = log_pi.detach().exp()[0]
    kl = L.kl_to_reference(log_pi, log_ref)
    q = L.dueling_soft_q(v, log_pi, tau, log_ref)
    ql = sum(pi[a] * L.soft_q_loss(q[:, a], t64([y_per_action[a]])) for a in range(A))
    pg = 0.0
    for a in range(A):
        y = t64([y_per_action[a]])
        delta = L.entropy_pg_advantages(y, v, kl, tau)
        l_pol = L.policy_gradient_loss(log_pi[:, a], delta) + L.kl_penalty_loss(kl, tau)
        l_val = L.value_loss(v, v.detach() + delta)
        pg = pg + pi[a] * (tau * l_pol + l_val)
    np.testing.assert_allclose(npy(_flat_grad(ql, params)), npy(_flat_grad(pg, params)), rtol=0, atol=1e-12)
