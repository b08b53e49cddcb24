"""Reverse-time samplers against exact posteriors: the 1D Ornstein-Uhlenbeck process and the
Langevin corrector's invariant density (the heat chain's exact reverse kernel is in
test_reverse_noise.py).

OU, dx = −λ x dt + g dW, x_0 ~ N(μ₀, s₀²): the marginals are N(m_t, v_t) with
m_t = μ₀ e^{−λt}, v_t = s₀² e^{−2λt} + g² (1 − e^{−2λt}) / (2λ), score −(x − m_t) / v_t, and
p(x_0 | x_T) = N(μ₀ + s₀² e^{−λT} (x_T − m_T) / v_T, s₀² − s₀⁴ e^{−2λT} / v_T).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from physdiff.samplers import (
    euler_maruyama,
    langevin_corrector,
    probability_flow,
    repeat_samples,
)
from physdiff.sde import expand_like, reverse_drift

F64 = torch.float64

# ---------------------------------------------------------------------------------------------
# 1D Ornstein-Uhlenbeck
# ---------------------------------------------------------------------------------------------

LAM, G, MU0, S0, T = 1.5, 0.8, 1.0, 0.5, 1.0


def _ou_mean(t: Tensor | float) -> Tensor:
    return MU0 * torch.exp(-LAM * torch.as_tensor(t, dtype=F64))


def _ou_var(t: Tensor | float) -> Tensor:
    decay = torch.exp(-2 * LAM * torch.as_tensor(t, dtype=F64))
    return S0**2 * decay + G**2 * (1 - decay) / (2 * LAM)


def _ou_score(x: Tensor, t: Tensor) -> Tensor:
    """Exact ∇log p_t for x of shape (B, 1), t of shape (B,)."""
    return -(x - expand_like(_ou_mean(t), x)) / expand_like(_ou_var(t), x)


def _ou_physics(x: Tensor, t: Tensor) -> Tensor:
    return -LAM * x


def _ou_posterior(x_T: float) -> tuple[float, float]:
    """Mean and variance of p(x_0 | x_T)."""
    v_T, m_T, e = _ou_var(T).item(), _ou_mean(T).item(), math.exp(-LAM * T)
    return MU0 + S0**2 * e / v_T * (x_T - m_T), S0**2 - S0**4 * e**2 / v_T


def _em_moments(x_T: float, ts: Tensor) -> tuple[float, float]:
    """Exact mean and variance of the *discrete* Euler-Maruyama chain on ts.

    One step from t with h = t − s > 0 is x ← A x + B + g √h z, A = 1 + hλ − h g² / v_t,
    B = h g² m_t / v_t: a linear-Gaussian recursion, so its moments follow exactly.
    """
    mean, var = x_T, 0.0
    for t, s in zip(ts[:-1].tolist(), ts[1:].tolist(), strict=True):
        h = t - s
        v_t, m_t = _ou_var(t).item(), _ou_mean(t).item()
        a = 1 + h * LAM - h * G**2 / v_t
        mean, var = a * mean + h * G**2 * m_t / v_t, a * a * var + G**2 * h
    return mean, var


def test_reverse_sde_samples_the_exact_ou_posterior() -> None:
    """Euler-Maruyama with the exact score, from one x_T, samples p(x_0 | x_T).

    Tolerance: the sample mean and variance of n draws have standard errors √(V/n) and
    V √(2/n); 4 of them, plus an O(dt) allowance for the discretisation. The allowance is
    justified, not guessed: the exact moments of the discrete chain (`_em_moments`) must be within
    it of the posterior, and their error must halve when dt halves (first-order weak error).
    """
    x_T, n, n_steps = -0.3, 20000, 400
    mean_post, var_post = _ou_posterior(x_T)
    ts = torch.linspace(T, 0, n_steps + 1, dtype=F64)

    # discretisation error of the chain itself: O(dt), first order
    errs = []
    for m in (n_steps, 2 * n_steps):
        mean_m, var_m = _em_moments(x_T, torch.linspace(T, 0, m + 1, dtype=F64))
        errs.append(max(abs(mean_m - mean_post), abs(var_m - var_post)))
    dt_allowance = 2 * errs[0]
    assert dt_allowance < 2e-2, errs  # O(dt) with dt = 1/400 and O(1) constants
    assert 1.7 < errs[0] / errs[1] < 2.3, errs

    gen = torch.Generator().manual_seed(0)
    drift = reverse_drift(_ou_physics, _ou_score, G, c=1.0)
    x = repeat_samples(torch.full((1, 1), x_T, dtype=F64), n)
    assert x.shape == (n, 1)
    with torch.no_grad():
        samples = euler_maruyama(drift, x, ts, G, generator=gen)[:, 0]
    se_mean, se_var = math.sqrt(var_post / n), var_post * math.sqrt(2 / n)
    assert abs(samples.mean().item() - mean_post) < 4 * se_mean + dt_allowance
    assert abs(samples.var().item() - var_post) < 4 * se_var + dt_allowance
    # a sampler that ignored the observation would give the prior N(1, 0.25) instead
    assert abs(mean_post - MU0) > 4 * se_mean + dt_allowance


def _ou_transport(x_T: Tensor) -> Tensor:
    """Probability-flow map p_T -> p_0: x_0 = m_0 + √(v_0 / v_T) (x_T − m_T)."""
    return _ou_mean(0.0) + torch.sqrt(_ou_var(0.0) / _ou_var(T)) * (x_T - _ou_mean(T))


def test_probability_flow_is_the_analytic_transport_map() -> None:
    """The c = 1/2 flow with the exact score maps each x_T to m_0 + √(v_0/v_T)(x_T − m_T).

    rk4 on 400 steps has error O(dt⁴) ≈ 1e-10: tolerance 1e-8. Euler is first order: error
    below 1e-2 at dt = 1/400 and halving with dt (ratio 2 ± 0.3).
    """
    x_T = torch.tensor([[-1.0], [0.0], [0.3], [2.0]], dtype=F64)
    expected = _ou_transport(x_T)
    drift = reverse_drift(_ou_physics, _ou_score, G, c=0.5)
    ts = torch.linspace(T, 0, 401, dtype=F64)
    torch.testing.assert_close(probability_flow(drift, x_T, ts, method="rk4"), expected,
                               atol=1e-8, rtol=0)
    errs = []
    for n_steps in (400, 800):
        ts = torch.linspace(T, 0, n_steps + 1, dtype=F64)
        errs.append((probability_flow(drift, x_T, ts, method="euler") - expected).abs().max())
    assert errs[0] < 1e-2
    assert 1.7 < errs[0] / errs[1] < 2.3, errs
    # the c = 1 drift (the conditional-mean path) is a different map: the test can tell them apart
    path_c1 = probability_flow(reverse_drift(_ou_physics, _ou_score, G, c=1.0), x_T, ts, "rk4")
    assert (path_c1 - expected).abs().max() > 1e-2


def test_probability_flow_pushes_p_T_to_p_0() -> None:
    """Samples of p_T = N(m_T, v_T) pushed through the flow have the moments of p_0 = N(μ₀, s₀²).

    Tolerance: 4 standard errors of the sample mean and variance (rk4 error is negligible).
    """
    n = 20000
    gen = torch.Generator().manual_seed(1)
    x_T = _ou_mean(T) + _ou_var(T).sqrt() * torch.randn(n, 1, dtype=F64, generator=gen)
    drift = reverse_drift(_ou_physics, _ou_score, G, c=0.5)
    x_0 = probability_flow(drift, x_T, torch.linspace(T, 0, 101, dtype=F64), method="rk4")
    assert abs(x_0.mean().item() - MU0) < 4 * S0 / math.sqrt(n)
    assert abs(x_0.var().item() - S0**2) < 4 * S0**2 * math.sqrt(2 / n)


def _standard_normal_score(x: Tensor, t: Tensor) -> Tensor:
    return -x


def _run_corrector(shape: tuple[int, ...], n_iter: int, snr: float, seed: int) -> Tensor:
    """Start far from N(0, I), at N(2, 0.5²), and apply the corrector n_iter times."""
    gen = torch.Generator().manual_seed(seed)
    x = 2 + 0.5 * torch.randn(shape, dtype=F64, generator=gen)
    t = torch.full(shape[:1], 0.5, dtype=F64)
    correct = langevin_corrector(_standard_normal_score, snr=snr)
    for _ in range(n_iter):
        x = correct(x, t, gen)
    return x


def test_langevin_corrector_samples_the_score_density_for_fields() -> None:
    """On 32 × 32 fields with the score of N(0, I), many corrector steps from N(2, 0.25) end at
    N(0, I): the corrector is a Langevin sampler of the score's density.

    Tolerance on the variance, 3 %: ULA's O(ε) bias 1 / (1 − ε/2) − 1 ≈ 1 % (ε ≈ 2 r² = 0.02),
    plus 4 standard errors (0.3 %). Mean: the start is contracted by (1 − ε)^600 ≈ 1e-5.
    """
    x = _run_corrector((256, 32, 32), n_iter=600, snr=0.1, seed=7)
    assert abs(x.mean().item()) < 0.01
    assert abs(x.var().item() - 1) < 0.03, x.var().item()


def test_langevin_corrector_keeps_standard_normal_in_low_dimension() -> None:
    """With the exact score of N(0, I) on states of shape (B, 4), many corrector steps must end
    at N(0, I): mean within 0.02, variance within 5 % (ULA bias ≈ 1 %, SE ≈ 0.5 %).

    A per-sample step size ε(‖s(x)‖) fails this: its invariant density is ∝ ‖x‖² π^{d/(d+2)},
    per-component variance (1 + 2/d)² = 2.25 at d = 4.
    """
    x = _run_corrector((8000, 4), n_iter=400, snr=0.1, seed=8)
    assert abs(x.mean().item()) < 0.02
    assert abs(x.var().item() - 1) < 0.05, x.var().item()
