"""Partial, noisy observations y = A(x_T) + σ_y ε (docs/method.md §6): operators, likelihood
scores, the exact linear-Gaussian posteriors of heat, and the Langevin end-state sampler against
the exact p(x_T | y)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from physdiff.conditioning import fourier_preconditioner, sample_end_states, split_rhat
from physdiff.observations import (
    AvgPool,
    ChannelSubset,
    Function,
    Identity,
    Mask,
    Matrix,
    check_observed,
    dense_matrix,
    likelihood_score,
)
from simulators import heat

F64 = torch.float64
SIZE, K, DT, G = 8, 32, 0.2 / 32, 0.1  # heat-32 physics on an 8×8 grid


def _prior() -> heat.GaussianPrior:
    """The GRF prior in normalised units: unit per-pixel variance, raw mean 0.3."""
    std = math.sqrt(heat.prior_spectrum(SIZE, SIZE).sum() / SIZE**4)
    return heat.GaussianPrior.from_normalisation(SIZE, SIZE, 4.0, 0.3, std)


# ------------------------------------------------------------------------------- operators


def test_operator_shapes() -> None:
    x = torch.randn(5, 3, 8, 8)
    assert Identity()(x).shape == (5, 3, 8, 8)
    assert ChannelSubset([0, 2])(x).shape == (5, 2, 8, 8)
    assert ChannelSubset([0, 2]).observed_shape((3, 8, 8)) == (2, 8, 8)
    assert AvgPool(4)(x).shape == (5, 3, 2, 2)
    assert AvgPool(4).observed_shape((3, 8, 8)) == (3, 2, 2)
    assert Mask(torch.ones(1, 8, 8)).observed_shape((3, 8, 8)) == (3, 8, 8)
    assert Matrix(torch.randn(7, 192)).observed_shape((3, 8, 8)) == (7,)
    assert Function(lambda v: v[:, :, ::2, ::2]).observed_shape((3, 8, 8)) == (3, 4, 4)
    torch.testing.assert_close(ChannelSubset([2])(x), x[:, 2:3])


def test_avg_pool_of_a_constant_is_the_constant_and_means_blocks() -> None:
    x = torch.full((2, 1, 8, 8), 0.37, dtype=F64)
    torch.testing.assert_close(AvgPool(2)(x), torch.full((2, 1, 4, 4), 0.37, dtype=F64))
    z = torch.randn(1, 1, 8, 8, dtype=F64)
    torch.testing.assert_close(AvgPool(4)(z)[0, 0, 1, 0], z[0, 0, 4:8, 0:4].mean())


def test_mask_keeps_ones_and_zeroes_the_rest() -> None:
    mask = (torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(0)) < 0.25).double()
    x = torch.randn(3, 1, 8, 8, dtype=F64)
    out = Mask(mask)(x)
    keep = mask.bool().expand_as(x)
    assert torch.equal(out[keep], x[keep]) and (out[~keep] == 0).all()


@pytest.mark.parametrize("operator", [
    Mask((torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(1)) < 0.5).double()),
    AvgPool(2), ChannelSubset([1]),
    Matrix(torch.randn(5, 32, dtype=F64, generator=torch.Generator().manual_seed(2))),
])
def test_likelihood_score_is_At_residual_over_sigma2(operator: object) -> None:
    """Autograd score = Aᵀ (y − A x) / σ² with A the operator's dense matrix, per channel σ."""
    gen = torch.Generator().manual_seed(3)
    shape = (2, 4, 4)
    a = dense_matrix(operator, shape)  # type: ignore[arg-type]
    obs = operator.observed_shape(shape)  # type: ignore[attr-defined]
    x = torch.randn(3, *shape, dtype=F64, generator=gen)
    y = torch.randn(3, *obs, dtype=F64, generator=gen)
    sigma = torch.tensor([0.3, 0.7], dtype=F64)[: obs[0]] if len(obs) > 1 else 0.4
    s = check_observed(operator, y, sigma, shape)  # type: ignore[arg-type]
    var = s.expand(obs).reshape(-1).square()
    expected = ((y.flatten(1) - x.flatten(1) @ a.T) / var) @ a
    score = likelihood_score(operator, y, sigma)(x)  # type: ignore[arg-type]
    torch.testing.assert_close(score.flatten(1), expected, rtol=1e-12, atol=1e-12)


def test_likelihood_score_of_a_nonlinear_operator_and_under_no_grad() -> None:
    """J_Aᵀ (y − A(x)) / σ² for A(x) = x² (J = diag(2x)), also inside torch.no_grad."""
    x = torch.randn(4, 6, dtype=F64)
    y = torch.randn(4, 6, dtype=F64)
    with torch.no_grad():
        score = likelihood_score(lambda v: v.square(), y, 0.5)(x)
    torch.testing.assert_close(score, 2 * x * (y - x**2) / 0.25)


# ----------------------------------------------------------- exact linear-Gaussian references


def test_fourier_operators_as_dense_matrices() -> None:
    """circulant(λ) applies the heat step; fourier_preconditioner is circulant(√(D/HW))."""
    u = torch.randn(3, SIZE, SIZE, dtype=F64)
    lam = torch.exp(-0.1 * heat.wavenumbers_squared(SIZE, SIZE))
    torch.testing.assert_close((u.flatten(1) @ heat.circulant(lam).T).reshape(u.shape),
                               heat.step(u, 0.1))
    d = torch.rand(SIZE, SIZE, dtype=F64) + 0.5
    d = 0.5 * (d + torch.roll(d.flip(0, 1), (1, 1), (0, 1)))  # even: D_k = D_−k
    root = heat.circulant((d / SIZE**2).sqrt())
    torch.testing.assert_close(fourier_preconditioner(d)(u), (u.flatten(1) @ root).reshape(u.shape))


def test_full_mask_small_noise_reproduces_the_full_observation_posterior() -> None:
    """A mask that keeps every pixel, σ_y = 1e-4: p(x_0 | y) → heat.posterior(x_T); the gap is
    O(σ_y² / min eig Σ_T) ≈ 1e-8 / 1.9e-4, so about 5e-5 relative."""
    prior = _prior()
    gen = torch.Generator().manual_seed(4)
    x_T = heat.end_state_prior(prior, K, DT, G).sample(3, gen)
    a = dense_matrix(Mask(torch.ones(1, SIZE, SIZE)), (1, SIZE, SIZE))
    exact = heat.posterior(x_T, prior, K, DT, G)
    dense = heat.observed_posterior(x_T.reshape(3, -1), a, 1e-4, prior, K, DT, G)
    torch.testing.assert_close(dense.mean, exact.mean, rtol=0, atol=1e-5)
    cov = heat.circulant(exact.variance / SIZE**2)
    torch.testing.assert_close(dense.covariance, cov, rtol=0, atol=1e-4 * cov.abs().max())
    # and the end-state posterior collapses onto the observation: with A = I its mean is
    # y − σ_y² (Σ_T + σ_y² I)⁻¹ (y − m_T), an offset of up to ~1e-6 here (a tolerance of 1e-6
    # on the offset itself passed or failed by the machine's rounding)
    end = heat.observed_end_state_posterior(x_T.reshape(3, -1), a, 1e-4, prior, K, DT, G)
    p_T = heat.end_state_prior(prior, K, DT, G)
    centred = (x_T - p_T.mean).reshape(3, -1).T
    offset = 1e-8 * torch.linalg.solve(p_T.covariance + 1e-8 * torch.eye(SIZE**2, dtype=F64),
                                       centred)
    torch.testing.assert_close(end.mean, x_T - offset.T.reshape(x_T.shape), rtol=0, atol=1e-10)
    assert 1e-7 < offset.abs().max() < 2e-6  # not a zero offset, and still ~1e-6 (1.04e-6)
    assert end.variance.max() < 1.01e-8


def test_observed_posterior_matches_monte_carlo_regression() -> None:
    """Joint draws (x_0, y) with AvgPool(2): the residual x_0 − E[x_0 | y] has the stated
    covariance (pooled trace within 5 standard errors of a χ² mean)."""
    prior, n = _prior(), 4000
    gen = torch.Generator().manual_seed(5)
    x_0 = heat.DenseGaussian(torch.full((SIZE, SIZE), prior.mean, dtype=F64),
                             heat.dense_chain(prior, K, DT, G)[2]).sample(n, gen)
    x_T = heat.rollout(x_0, K, DT, G, gen)[:, -1]
    a = dense_matrix(AvgPool(2), (SIZE, SIZE))
    y = x_T.reshape(n, -1) @ a.T + 0.05 * torch.randn(n, a.shape[0], dtype=F64, generator=gen)
    post = heat.observed_posterior(y, a, 0.05, prior, K, DT, G)
    resid = (x_0 - post.mean).reshape(n, -1)
    trace = post.covariance.trace()
    # Var of ‖r‖² is 2 tr(C²) for Gaussian r; mean over n draws
    se = math.sqrt(2 * (post.covariance @ post.covariance).trace() / n)
    assert abs(resid.square().sum(1).mean() - trace) < 5 * se
    assert resid.mean(0).abs().max() < 5 * post.variance.max().sqrt() / math.sqrt(n)


# -------------------------------------------------------------------- the end-state sampler


def test_langevin_end_states_match_the_exact_p_xT_given_y() -> None:
    """8×8 heat, 25 % random mask, σ_y = 0.05, exact prior score −Σ_T⁻¹ (x − m_T) at T.

    Tolerances: the draws are the final states of independent chains, so with n draws the sample
    mean has standard error √(v/n) per pixel (max of 64 |z| < 4.5: false-alarm rate about 4e-4),
    and the sample variance has relative standard error √(2/(N − 1)) with N = 2n pooled over the
    two observations (the posterior covariance does not depend on y). The pooled variance
    Σ_pixels v̂ / Σ v has relative error at most √(2/(N − 1)) too (equality only if every pixel
    were perfectly correlated); 4.5 standard errors there as well.
    """
    prior, m, n, sigma = _prior(), 2, 256, 0.05
    gen = torch.Generator().manual_seed(6)
    end = heat.end_state_prior(prior, K, DT, G)
    x_T = end.sample(m, gen)[:, None]  # (M, 1, H, W)
    mask = torch.zeros(SIZE * SIZE, dtype=F64)
    mask[torch.randperm(SIZE * SIZE, generator=gen)[: SIZE * SIZE // 4]] = 1  # exactly 25 %
    mask = mask.reshape(1, SIZE, SIZE)
    y = Mask(mask)(x_T + sigma * torch.randn(x_T.shape, dtype=F64, generator=gen))
    a = dense_matrix(Mask(mask), (1, SIZE, SIZE))[mask.flatten().bool()]
    exact = heat.observed_end_state_posterior(y.flatten(1) @ a.T, a, sigma, prior, K, DT, G)

    precision = torch.linalg.inv(end.covariance).float()
    m_T = end.mean.reshape(-1).float()

    def prior_score(x: Tensor) -> Tensor:
        return -((x.flatten(1) - m_T) @ precision).reshape(x.shape)

    # Fourier preconditioner D_k = HW / (HW / S_k + ρ / σ²) (see fourier_preconditioner), applied
    # as its dense matrix: the same map, cheaper than FFTs of 8×8 fields. Condition number of
    # the preconditioned target ≈ 100, so the slowest mode's integrated autocorrelation time is
    # ≈ 2κ / step_factor ≈ 200 steps, and split-R̂² ≈ 1 + τ / (half the kept steps) ≈ 1.05.
    lam = torch.exp(-K * DT * heat.wavenumbers_squared(SIZE, SIZE))
    s_T = lam**2 * prior.spectrum + heat.noise_spectrum(SIZE, SIZE, K, DT, G)
    d = SIZE**2 / (SIZE**2 / s_T + mask.mean() / sigma**2)
    root = heat.circulant((d / SIZE**2).sqrt()).float()

    def precondition(v: Tensor) -> Tensor:
        return (v.flatten(1) @ root).reshape(v.shape)

    draws, diag = sample_end_states(prior_score, Mask(mask), y.float(), sigma, n, gen,
                                    steps=10000, burn_in=0.2, step_factor=1.0,
                                    precondition=precondition)
    assert draws.shape == (m, n, 1, SIZE, SIZE) and diag.rhat.shape == (m, 3)
    assert diag.max_rhat < 1.05, diag.rhat
    mean, var = draws.double().mean(1)[:, 0], draws.double().var(1)[:, 0]
    z = (mean - exact.mean) / (exact.variance / n).sqrt()
    assert z.abs().max() < 4.5, z.abs().max()
    ratio = var.mean(0) / exact.variance
    tol = 4.5 * math.sqrt(2 / (m * n - 1))
    assert (ratio - 1).abs().max() < tol, ratio
    pooled = var.mean(0).sum() / exact.variance.sum()
    assert abs(pooled - 1) < tol, pooled


def test_identity_with_zero_noise_returns_the_observation() -> None:
    y = torch.randn(2, 1, 4, 4)
    draws, diag = sample_end_states(lambda x: -x, Identity(), y, 0.0, 3)
    assert draws.shape == (2, 3, 1, 4, 4) and torch.equal(draws[:, 1], y)
    assert diag.max_rhat == 1.0


def test_split_rhat_is_one_for_iid_and_large_for_disagreeing_chains() -> None:
    gen = torch.Generator().manual_seed(7)
    iid = torch.randn(4, 1000, generator=gen, dtype=F64)
    assert abs(split_rhat(iid) - 1) < 0.01
    shifted = iid + torch.arange(4, dtype=F64)[:, None]
    assert split_rhat(shifted) > 1.5


# --------------------------------------------------------------------------- bad input


def test_bad_observations_are_one_line_errors() -> None:
    y = torch.zeros(2, 1, 8, 8)

    def message(**kwargs: object) -> str:
        args = {"prior_score": lambda x: -x, "operator": Mask(torch.ones(1, 8, 8)), "y": y,
                "sigma": 0.1, "n": 2, "steps": 8, **kwargs}
        with pytest.raises(ValueError) as err:
            sample_end_states(**args)  # type: ignore[arg-type]
        text = str(err.value)
        assert len(text.splitlines()) == 1, text
        return text

    assert "mask has shape (1, 7, 7), expected the state shape (1, 8, 8)" in message(
        operator=Mask(torch.ones(1, 7, 7)))
    assert "sigma must be > 0" in message(sigma=0.0)
    assert "sigma must be > 0" in message(sigma=-0.1)
    bad = y.clone()
    bad[0, 0, 1, 1] = math.nan
    assert "y contains 1 NaN or Inf" in message(y=bad)
    assert "pass state_shape" in message(operator=AvgPool(2), y=torch.zeros(2, 1, 4, 4))
    assert "expected (1, 4, 4)" in message(operator=AvgPool(2), y=y, state_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="only 0 and 1"):
        Mask(torch.full((1, 8, 8), 0.5))
    with pytest.raises(ValueError, match="not linear"):
        dense_matrix(Function(torch.sin), (4,))


def test_sample_posterior_observed_runs_the_reverse_sde_from_each_end_state() -> None:
    """Wiring with an untrained heat model (4×4 grid): shapes, finiteness, one x_0 per x_T."""
    from physdiff.conditioning import sample_posterior_observed
    from physdiff.data import Metadata
    from physdiff.model import Model
    from physdiff.systems.heat import HeatSystem

    meta = Metadata(simulator="heat", dt=0.05, g=0.1, n_steps=4, seed=0, split="test",
                    norm_mean=0.0, norm_std=1.0, version="test", params={"exponent": 4.0})
    system = HeatSystem(meta, (1, 4, 4))
    torch.manual_seed(0)
    model = Model(system.score_net(4, 1), system, meta, None, {"physics": "true"})
    y = torch.randn(2, 1, 2, 2)
    x_0, x_T, diag = sample_posterior_observed(model, AvgPool(2), y, 0.1, 3,
                                               torch.Generator().manual_seed(0), steps=16,
                                               noise="white")
    assert x_0.shape == x_T.shape == (2, 3, 1, 4, 4) and diag.rhat.shape == (2, 3)
    assert torch.isfinite(x_0).all() and torch.isfinite(x_T).all()


@pytest.mark.parametrize("case", ["mask", "pool"])
def test_gaussian_start_draws_the_exact_p_xT_given_y_for_heat(case: str) -> None:
    """Matheron's rule with p_T's exact stationary spectrum: draws of x_T | y have the exact
    posterior mean and per-pixel variance (8×8 heat; 25 % mask with σ_y = 0.05, or 2× pooling with
    σ_y = 0.02). Tolerances as in the Langevin test above (4.5 standard errors)."""
    from physdiff.gaussian_start import end_state_spectrum, gaussian_conditional_draws

    prior, m, n = _prior(), 2, 4000
    gen = torch.Generator().manual_seed(8)
    end = heat.end_state_prior(prior, K, DT, G)
    x_T = end.sample(m, gen)[:, None]
    if case == "mask":
        keep = torch.zeros(SIZE * SIZE, dtype=F64)
        keep[torch.randperm(SIZE * SIZE, generator=gen)[: SIZE * SIZE // 4]] = 1
        operator, sigma = Mask(keep.reshape(1, SIZE, SIZE)), 0.05
    else:
        operator, sigma = AvgPool(2), 0.02
    y = operator(x_T) + sigma * torch.randn(operator(x_T).shape, dtype=F64, generator=gen)
    a = dense_matrix(operator, (1, SIZE, SIZE))
    if case == "mask":  # the observed rows only (a mask's zeros are not observations)
        rows = keep.bool()
        a, y_flat = a[rows], y.flatten(1)[:, rows]
    else:
        y_flat = y.flatten(1)
    exact = heat.observed_end_state_posterior(y_flat, a, sigma, prior, K, DT, G)
    lam = torch.exp(-K * DT * heat.wavenumbers_squared(SIZE, SIZE))
    spectrum = (lam**2 * prior.spectrum + heat.noise_spectrum(SIZE, SIZE, K, DT, G))[None]
    draws, iterations = gaussian_conditional_draws(end.mean[None], spectrum, operator, y,
                                                   sigma, n, gen)
    assert draws.shape == (m, n, 1, SIZE, SIZE) and iterations < 200
    mean, var = draws.mean(1)[:, 0], draws.var(1)[:, 0]
    z = (mean - exact.mean) / (exact.variance / n).sqrt()
    assert z.abs().max() < 4.5, z.abs().max()
    ratio = var.mean(0) / exact.variance
    assert (ratio - 1).abs().max() < 4.5 * math.sqrt(2 / (m * n - 1)), ratio
    # the spectrum estimator: stationary draws give back their spectrum within sampling error
    mu, s_hat = end_state_spectrum(end.sample(4000, gen)[:, None])
    assert abs(mu.item() - end.mean.mean().item()) < 0.05
    rel = (s_hat / spectrum)[spectrum > 1e-9]
    assert (rel.mean() - 1).abs() < 0.02


def test_tweedie_score_of_the_exact_reverse_step_is_the_exact_end_state_score() -> None:
    """With the exact conditional mean of the last heat step as the learned reverse step,
    tweedie_score gives −Σ_T⁻¹ (x − m_T) exactly; reading that step's own s (defined through the
    inverse 2x − S x) as the score is off by 2 / (1 + a) on strongly contracted modes."""
    from physdiff.sde import tweedie_score

    prior = _prior()
    end = heat.end_state_prior(prior, K, DT, G)
    before = heat.end_state_prior(prior, K - 1, DT, G)  # p_{K−1}
    lam = torch.exp(-DT * heat.wavenumbers_squared(SIZE, SIZE))
    v_prev = lam ** (2 * (K - 1)) * prior.spectrum + heat.noise_spectrum(SIZE, SIZE, K - 1, DT, G)
    v_end = lam**2 * v_prev + G**2 * DT * SIZE**2
    m_prev, m_end = before.mean, end.mean

    def cond_mean(x: Tensor) -> Tensor:  # E[x_{K−1} | x_K = x], per Fourier mode
        gain = lam * v_prev / v_end
        return m_prev + torch.fft.ifft2(gain * torch.fft.fft2(x - m_end)).real

    def reverse(x: Tensor, t: Tensor) -> Tensor:  # the c = 1 drift whose step is cond_mean
        return (x - cond_mean(x)) / DT

    x = end.sample(3, torch.Generator().manual_seed(2))[:, None]
    got = tweedie_score(lambda u: heat.step(u, DT), reverse, DT, G)(x, torch.ones(3))
    precision = torch.linalg.inv(end.covariance)
    want = -((x.flatten(1) - end.mean.reshape(-1)) @ precision).reshape(x.shape)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * want.abs().max().item())
    naive = (cond_mean(x) - (2 * x - heat.step(x, DT))) / (G**2 * DT)
    # 8×8: |k|² ≤ 32, a ≥ 0.82, so the naive reading is off by up to 10 %
    assert (naive - want).abs().max() > 0.05 * want.abs().max()


def test_default_preconditioner_is_the_diagonal_posterior_scale_for_a_mask() -> None:
    """System.end_state_preconditioner's default: R² = 1 / (1 / var + diag(AᵀA) / σ_y²), exact
    for a mask (Rademacher probes give diag(AᵀA) without error); None without statistics."""
    from types import SimpleNamespace

    from physdiff.systems.base import System

    variance = torch.tensor([[4.0, 0.25], [1.0, 9.0], [0.5, 2.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    system = System.__new__(System)
    model = SimpleNamespace(end_state={"mean": torch.zeros(3, 2), "variance": variance})
    sigma = torch.tensor(0.1)
    r = system.end_state_preconditioner(model, Mask(mask), sigma)
    want = (1 / (1 / variance + mask / 0.01)).sqrt()
    torch.testing.assert_close(r(torch.ones(5, 3, 2)), want.expand(5, 3, 2))
    assert system.end_state_preconditioner(SimpleNamespace(end_state=None), Mask(mask),
                                           sigma) is None


def test_diagonal_conditional_draws_are_the_per_coordinate_gaussian_posterior() -> None:
    """N(μ, diag v) observed through a mask with σ_y: observed coordinates are
    N(μ + v / (v + σ²) (y − μ), v σ² / (v + σ²)), unobserved ones keep N(μ, v); with
    spread < 1 the unobserved deviation shrinks by that factor."""
    from physdiff.gaussian_start import diagonal_conditional_draws

    gen = torch.Generator().manual_seed(3)
    mu, v, sigma, n = torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[1.0, 4.0, 0.25]]), 0.5, 20000
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    y = Mask(mask)(torch.tensor([[[1.5, 0.0, 1.0]]], dtype=F64))
    draws, _ = diagonal_conditional_draws(mu, v, Mask(mask), y, sigma, n, gen)
    post_mean = torch.where(mask.bool(), mu + v / (v + sigma**2) * (y[0] - mu), mu)
    post_var = torch.where(mask.bool(), v * sigma**2 / (v + sigma**2), v)
    z = (draws[0].mean(0) - post_mean) / (post_var / n).sqrt()
    assert z.abs().max() < 4.5, z
    assert ((draws[0].var(0) / post_var - 1).abs() < 4.5 * math.sqrt(2 / n)).all()
    narrow, _ = diagonal_conditional_draws(mu, v, Mask(mask), y, sigma, n, gen, spread=0.1)
    assert abs(narrow[0, :, 0, 1].std().item() / 2.0 - 0.1) < 0.01
