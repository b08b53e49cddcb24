"""The heat simulator and its exact posterior, against closed forms and Monte Carlo."""

import math

import torch

from physdiff.metrics import band_masks
from simulators import heat


def test_single_mode_decays_exactly() -> None:
    n, dt = 16, 0.013
    y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float64)] * 2, indexing="ij")
    theta = 2 * math.pi / n
    for ky, kx in [(0, 1), (2, 3), (5, -4), (8, 0)]:
        u = torch.cos(theta * (ky * y + kx * x))
        expected = math.exp(-(ky**2 + kx**2) * dt) * u
        torch.testing.assert_close(heat.step(u, dt), expected, atol=1e-12, rtol=0)


def test_step_is_a_semigroup_and_conserves_the_mean() -> None:
    u = torch.randn(3, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(heat.step(heat.step(u, 0.01), 0.02), heat.step(u, 0.03))
    torch.testing.assert_close(heat.step(u, 0.5).mean((-2, -1)), u.mean((-2, -1)))


def test_noise_free_rollout_matches_closed_form_at_T() -> None:
    u = heat.sample_prior(4, 16, 16, generator=torch.Generator().manual_seed(1))
    traj = heat.rollout(u, n_steps=32, dt=0.2 / 32, g=0.0)
    assert traj.shape == (4, 33, 16, 16)
    torch.testing.assert_close(traj[:, -1], heat.step(u, 0.2), atol=1e-12, rtol=1e-10)


def test_step_gradcheck() -> None:
    u = torch.randn(2, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda u: heat.step(u, dt=0.1), (u,))


def test_prior_samples_have_the_prior_spectrum() -> None:
    n = 4000
    x = heat.sample_prior(n, 8, 8, exponent=2.0, generator=torch.Generator().manual_seed(2))
    power = torch.fft.fft2(x).abs().square().mean(0)
    spectrum = heat.prior_spectrum(8, 8, exponent=2.0)
    nonzero = spectrum > 0
    # relative standard error of a mean of n exponential (or chi²_1) variables is ≤ √(2/n)
    assert ((power[nonzero] / spectrum[nonzero] - 1).abs() < 5 * math.sqrt(2 / n)).all()
    assert power[0, 0] < 1e-20


def _simulate_pairs(n: int, prior: heat.GaussianPrior, n_steps: int, dt: float, g: float,
                    size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, size, size, dtype=torch.float64, generator=gen)
    x0 = prior.mean + torch.fft.ifft2(torch.fft.fft2(z) * prior.spectrum.sqrt() / size).real
    return x0, heat.rollout(x0, n_steps, dt, g, gen)[:, -1]


def test_exact_posterior_matches_monte_carlo_regression() -> None:
    """Draw (x_0, x_T) jointly; per Fourier mode the regression of x̂_0 on x̂_T and the residual
    variance must equal the posterior gain and variance within sampling error."""
    size, n_steps, g, n = 8, 8, 0.3, 20000
    dt = 0.4 / n_steps
    prior = heat.GaussianPrior(mean=0.7, spectrum=heat.prior_spectrum(size, size, 2.0) * 3.0)
    x0, xT = _simulate_pairs(n, prior, n_steps, dt, g, size, seed=3)
    post = heat.posterior(xT, prior, n_steps, dt, g)
    resid = torch.fft.fft2(x0 - post.mean)
    # residuals are uncorrelated with the observation and have the stated variance
    emp_var = resid.abs().square().mean(0)
    nonzero = prior.spectrum > 0
    rel = emp_var[nonzero] / post.variance[nonzero]
    assert ((rel - 1).abs() < 6 * math.sqrt(2 / n)).all(), rel
    xT_hat = torch.fft.fft2(xT - xT.mean(0))
    corr = (resid * xT_hat.conj()).mean(0).abs() / (emp_var * xT_hat.abs().square().mean(0)).sqrt()
    assert corr[nonzero].max() < 6 / math.sqrt(n)
    # the k = 0 mode is known exactly from the prior
    torch.testing.assert_close(post.mean.mean((-2, -1)), torch.full((n,), 0.7, dtype=torch.float64))
    # the posterior is better than the prior
    assert (post.variance[nonzero] < prior.spectrum[nonzero]).all()


def test_exact_posterior_samples_have_the_posterior_band_variance() -> None:
    size, n_steps, g = 16, 16, 0.1
    dt = 0.2 / n_steps
    prior = heat.GaussianPrior(mean=0.0, spectrum=heat.prior_spectrum(size, size) / 6.0)
    _, xT = _simulate_pairs(4, prior, n_steps, dt, g, size, seed=4)
    post = heat.posterior(xT, prior, n_steps, dt, g)
    n = 3000
    samples = post.sample(n, generator=torch.Generator().manual_seed(5))  # (4, n, H, W)
    x_hat = torch.fft.fft2(samples)
    var = (x_hat - torch.fft.fft2(post.mean)[:, None]).abs().square().mean((0, 1))
    for mask in band_masks(size, size):
        ratio = var[mask].sum() / post.variance[mask].sum()
        assert abs(ratio - 1) < 0.05, ratio
    assert samples.dtype == xT.dtype and torch.isfinite(samples).all()


def test_inverse_step_negates_the_forward_increment() -> None:
    u = torch.randn(2, 8, 8, dtype=torch.float64)
    dt = 1e-3
    torch.testing.assert_close(heat.inverse_step(u, dt) - u, u - heat.step(u, dt))
    # first-order accurate inverse: S(P̃⁻¹(u)) = u + O(dt²)
    err = (heat.step(heat.inverse_step(u, dt), dt) - u).abs().max()
    assert err < 64 * 64 * dt**2 * u.abs().max()
