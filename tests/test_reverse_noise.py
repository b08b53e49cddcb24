"""Calibrated reverse-step noise and the flow correction against the heat chain's exact discrete
reverse kernel, and spectral noise on grids of any dimension.

Heat, x_{k+1} = S(x_k) + g √dt z: per Fourier mode (unnormalised fft2 units) with a = e^{−|k|² dt}
and σ² = g² dt H W, the marginal spectra obey v_{k+1} = a² v_k + σ², and the exact reverse kernel is
p(x̂_k | x̂_{k+1}) = N(a v_k / v_{k+1} · x̂_{k+1}, v_k σ² / v_{k+1}) (prior mean 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import pytest
import torch
from torch import Tensor

from physdiff.flow_correction import corrected_score, held_out_choice, mode_gain_correction
from physdiff.metrics import band_masks, band_variance_ratio
from physdiff.noise import residual_spectra, spectral_noise
from physdiff.samplers import euler_maruyama, probability_flow, repeat_samples
from physdiff.sde import Drift, as_drift, reverse_drift
from simulators import heat

F64 = torch.float64

# ---------------------------------------------------------------------------------------------
# Heat: the exact discrete reverse kernel
# ---------------------------------------------------------------------------------------------

# dt chosen so that |k|² dt = 1.3 .. 2.6 in the highest band (|k| = 8 .. 11.3), as on heat-32
SIZE, N_STEPS, DT, G_HEAT = 16, 8, 0.02, 0.2


@dataclass(frozen=True)
class _HeatChain:
    prior: heat.GaussianPrior
    gain: Tensor  # (K, H, W), E[x̂_k | x̂_{k+1}] = gain_k x̂_{k+1}
    variance: Tensor  # (K, H, W), Var(x̂_k | x̂_{k+1})
    drift: Drift  # c = 1 reverse drift whose Euler step is the exact conditional mean
    score: Drift  # the score that drift uses


def _heat_chain(size: int = SIZE, n_steps: int = N_STEPS, dt: float = DT,
                g: float = G_HEAT) -> _HeatChain:
    a = torch.exp(-dt * heat.wavenumbers_squared(size, size))
    sigma2 = g**2 * dt * size * size
    v = [heat.prior_spectrum(size, size) / 6]
    for _ in range(n_steps):
        v.append(a**2 * v[-1] + sigma2)
    spectra = torch.stack(v)
    gain = a * spectra[:-1] / spectra[1:]
    variance = spectra[:-1] * sigma2 / spectra[1:]
    step = partial(heat.step, dt=dt)

    def score(x: Tensor, t: Tensor) -> Tensor:
        # the step t_{k+1} -> t_k, k per sample; solves x − dt f = mean with f = P − g² s
        k = torch.round(t / dt).long() - 1
        mean = torch.fft.ifft2(gain[k] * torch.fft.fft2(x)).real
        return (mean - (2 * x - step(x))) / (dt * g**2)

    drift = reverse_drift(as_drift(step, dt), score, g, c=1.0)
    return _HeatChain(heat.GaussianPrior(0.0, spectra[0]), gain, variance, drift, score)


def _heat_observations(chain: _HeatChain, n: int, seed: int) -> Tensor:
    """x_T of n trajectories from the prior, shape (n, H, W)."""
    gen = torch.Generator().manual_seed(seed)
    x_0 = heat.sample_prior(n, SIZE, SIZE, generator=gen) / math.sqrt(6)
    return heat.rollout(x_0, N_STEPS, DT, G_HEAT, gen)[:, -1]


def _reverse_ts() -> Tensor:
    return torch.linspace(N_STEPS * DT, 0, N_STEPS + 1, dtype=F64)


def test_noise_free_c1_path_is_the_exact_posterior_mean() -> None:
    """Iterating exact conditional means E[x_k | x_{k+1}] from x_T gives E[x_0 | x_T] (the means
    are linear, so the tower property applies). Float64 round-off only: tolerance 1e-8."""
    chain = _heat_chain()
    x_T = _heat_observations(chain, 4, seed=2)
    path = euler_maruyama(chain.drift, x_T, _reverse_ts(), G_HEAT, noise=lambda x, i, gen: 0,
                          return_path=True)
    assert path.shape == (N_STEPS + 1, 4, SIZE, SIZE)
    expected = heat.posterior(x_T, chain.prior, N_STEPS, DT, G_HEAT).mean
    torch.testing.assert_close(path[-1], expected, atol=1e-8, rtol=0)
    # halfway: E[x_4 | x_T] is the posterior of the last 4 steps, with the step-4 marginal prior
    a2 = torch.exp(-2 * DT * heat.wavenumbers_squared(SIZE, SIZE))
    v4 = chain.prior.spectrum
    for _ in range(4):
        v4 = a2 * v4 + G_HEAT**2 * DT * SIZE * SIZE
    half = heat.posterior(x_T, heat.GaussianPrior(0.0, v4), N_STEPS - 4, DT, G_HEAT).mean
    torch.testing.assert_close(path[4], half, atol=1e-8, rtol=0)


def _posterior_samples(chain: _HeatChain, x_T: Tensor, n: int, seed: int,
                       spectra: Tensor | None) -> Tensor:
    """(B, n, H, W) samples by Euler-Maruyama; spectral noise if given, else white noise."""
    gen = torch.Generator().manual_seed(seed)
    noise = spectral_noise(spectra) if spectra is not None else None
    with torch.no_grad():
        x = euler_maruyama(chain.drift, repeat_samples(x_T, n), _reverse_ts(), G_HEAT,
                           generator=gen, noise=noise)
    return x.reshape(x_T.shape[0], n, SIZE, SIZE)


def test_spectral_noise_gives_exact_posterior_band_variance() -> None:
    """With the exact conditional variances as `spectral_noise`, the c = 1 sampler is exact
    ancestral sampling of p(x_0 | x_T): per-band variance ratio 1 within 4 %.

    The pooled band variance over B n = 8000 samples has relative standard error below 1 % even
    in the lowest band (8 modes, 4 independent complex coefficients), so 4 % is > 4 SE.
    """
    chain = _heat_chain()
    x_T = _heat_observations(chain, 4, seed=3)
    post = heat.posterior(x_T, chain.prior, N_STEPS, DT, G_HEAT)
    samples = _posterior_samples(chain, x_T, 2000, seed=4, spectra=chain.variance)
    for mask in band_masks(SIZE, SIZE):
        ratio = band_variance_ratio(samples, post.variance, mask)
        assert abs(ratio - 1) < 0.04, ratio
    # and the sample mean is the posterior mean: per-mode error ≤ 5 √(Var / n) with n = 2000
    err = torch.fft.fft2(samples.mean(1) - post.mean).abs().square()
    nonzero = post.variance > 0
    assert (err[:, nonzero] < 25 * post.variance[nonzero] / 2000).all()


def test_white_noise_is_too_narrow_at_high_wavenumbers() -> None:
    """The textbook noise g √dt z is the exact reverse-kernel variance only where a ≈ 1.

    With the exact means, white noise gives x̂_0 the variance w = Σ_j (Π_{i<j} gain_i)² σ²
    (a linear recursion, computed here). At |k|² dt ≈ 1-3 this is far below the posterior
    variance: ratio < 0.8 in the top band, whereas the lowest band is within 10 % of 1. The
    sampled ratios must agree with the recursion to 4 % (as in the spectral-noise test).
    """
    chain = _heat_chain()
    x_T = _heat_observations(chain, 4, seed=3)
    post = heat.posterior(x_T, chain.prior, N_STEPS, DT, G_HEAT)
    sigma2 = G_HEAT**2 * DT * SIZE * SIZE
    white = torch.zeros(SIZE, SIZE, dtype=F64)
    for k in reversed(range(N_STEPS)):
        white = chain.gain[k] ** 2 * white + sigma2
    samples = _posterior_samples(chain, x_T, 2000, seed=5, spectra=None)
    masks = band_masks(SIZE, SIZE)
    ratios = [band_variance_ratio(samples, post.variance, m) for m in masks]
    predicted = [(white[m].sum() / post.variance[m].sum()).item() for m in masks]
    for ratio, pred in zip(ratios, predicted, strict=True):
        assert abs(ratio / pred - 1) < 0.04, (ratios, predicted)
    assert ratios[-1] < 0.8, ratios
    assert abs(ratios[0] - 1) < 0.1, ratios


def test_residual_spectra_recover_the_exact_reverse_variance() -> None:
    """With the exact c = 1 drift, E|r̂_k|² of the one-step residual is Var(x̂_k | x̂_{k+1})
    (law of total variance), per step and band.

    Tolerance: for N trajectories the band sum Σ|r̂|² has variance ≤ 2 Σ V² / N (|r̂|² is
    exponential for complex modes, χ²₁ for real ones, and k, −k are fully correlated), so the
    relative error is bounded by 5 √(2 Σ V² / N) / Σ V, about 1-4 % here.
    """
    chain = _heat_chain()
    n = 3000
    gen = torch.Generator().manual_seed(6)
    x_0 = heat.sample_prior(n, SIZE, SIZE, generator=gen) / math.sqrt(6)
    traj = heat.rollout(x_0, N_STEPS, DT, G_HEAT, gen)
    times = DT * torch.arange(N_STEPS + 1, dtype=F64)
    spectra = residual_spectra(chain.drift, traj, times, DT, batch_size=1000)
    assert spectra.shape == (N_STEPS, SIZE, SIZE)
    for k in range(N_STEPS):
        for mask in band_masks(SIZE, SIZE):
            exact = chain.variance[k][mask]
            tol = 5 * math.sqrt(2 * exact.square().sum().item() / n) / exact.sum().item()
            assert tol < 0.05
            ratio = (spectra[k][mask].sum() / exact.sum()).item()
            assert abs(ratio - 1) < tol, (k, ratio, tol)
    # the k = 0 mode is deterministic given the prior mean 0 at the first step
    assert spectra[0, 0, 0] < 1e-20


def test_mode_gain_correction_repairs_a_wrong_step_for_the_flow() -> None:
    """A score 15 % too large on every mode gives a c = ½ path far from the exact score's; the
    per-mode least-squares correction fitted on 3000 trajectories (physdiff/flow_correction.py)
    restores the exact conditional-mean gain of every step (to 4 standard errors of the fit) and
    the c = ½ path to within 1 % of the wrong path's squared error."""
    chain = _heat_chain()
    physics = as_drift(partial(heat.step, dt=DT), DT)

    def wrong(x: Tensor, t: Tensor) -> Tensor:
        return 1.15 * chain.score(x, t)

    n = 3000
    gen = torch.Generator().manual_seed(7)
    traj = heat.rollout(heat.sample_prior(n, SIZE, SIZE, generator=gen) / math.sqrt(6), N_STEPS,
                        DT, G_HEAT, gen)
    times = DT * torch.arange(N_STEPS + 1, dtype=F64)
    beta = mode_gain_correction(reverse_drift(physics, wrong, G_HEAT, 1.0), traj, times, DT,
                                batch_size=1000)
    assert beta.shape == (N_STEPS, 2, SIZE, SIZE)
    fixed = corrected_score(wrong, beta, DT, G_HEAT)
    # the corrected step's gain per mode, measured on a unit impulse per mode: the exact gain
    a2 = torch.exp(-2 * DT * heat.wavenumbers_squared(SIZE, SIZE))
    v = [chain.prior.spectrum]
    for _ in range(N_STEPS):
        v.append(a2 * v[-1] + G_HEAT**2 * DT * SIZE * SIZE)
    probe = torch.randn(1, SIZE, SIZE, dtype=F64, generator=gen)
    for k in range(N_STEPS):
        t = torch.full((1,), times[k + 1].item(), dtype=F64)
        step = probe - DT * reverse_drift(physics, fixed, G_HEAT, 1.0)(probe, t)
        gain = (torch.fft.fft2(step) / torch.fft.fft2(probe)).real[0]
        # LS slope error: √(Var(x̂_k | x̂_{k+1}) / Σ|ŷ|²), Σ|ŷ|² ≈ n v_{k+1}
        se = (chain.variance[k] / (n * v[k + 1])).sqrt()
        assert ((gain - chain.gain[k]).abs() <= 4 * se + 1e-6).all(), k
    x_T = _heat_observations(chain, 64, seed=8)

    def flow(score: Drift) -> Tensor:
        return probability_flow(reverse_drift(physics, score, G_HEAT, 0.5), x_T, _reverse_ts())

    exact = flow(chain.score)
    err_wrong = (flow(wrong) - exact).square().mean()
    err_fixed = (flow(fixed) - exact).square().mean()
    assert err_fixed < 0.01 * err_wrong, (err_fixed, err_wrong)


def test_flow_correction_is_kept_only_where_it_lowers_held_out_error() -> None:
    """held_out_choice judges a fitted correction by the flow's MSE against held-out x_0 alone:
    for a score 15 % too small it keeps the correction fitted to that score, and drops one
    fitted to a score 15 % too large (applied to the too-small score it overshoots); it counts
    a case whose reconstruction diverged. (A score too large shrinks the flow towards the
    posterior mean and lowers its MSE: the criterion cannot fault that; see held_out_choice.)"""
    chain = _heat_chain()
    physics = as_drift(partial(heat.step, dt=DT), DT)
    gen = torch.Generator().manual_seed(11)

    def trajectories(n: int) -> Tensor:
        prior = heat.sample_prior(n, SIZE, SIZE, generator=gen) / math.sqrt(6)
        return heat.rollout(prior, N_STEPS, DT, G_HEAT, gen)

    def scaled(factor: float) -> Drift:
        return lambda x, t: factor * chain.score(x, t)

    times = DT * torch.arange(N_STEPS + 1, dtype=F64)
    train_set, held_out = trajectories(1000), trajectories(200)
    wrong = scaled(0.85)

    def fitted(score: Drift) -> Tensor:
        return mode_gain_correction(reverse_drift(physics, score, G_HEAT, 1.0), train_set,
                                    times, DT, batch_size=1000)

    def flow(beta: Tensor) -> Callable[[bool], Tensor]:
        def run(corrected: bool) -> Tensor:
            score = corrected_score(wrong, beta, DT, G_HEAT) if corrected else wrong
            return probability_flow(reverse_drift(physics, score, G_HEAT, 0.5),
                                    held_out[:, -1], _reverse_ts())
        return run

    good = held_out_choice(flow(fitted(wrong)), held_out[:, 0])
    assert good["kept"] and good["corrected"] < 0.9 * good["uncorrected"], good
    bad = held_out_choice(flow(fitted(scaled(1.15))), held_out[:, 0])
    assert not bad["kept"] and bad["corrected"] > bad["uncorrected"], bad
    assert good["blown_up"] == 0 and good["cases"] == 200

    def one_diverged(corrected: bool) -> Tensor:
        x = flow(fitted(wrong))(corrected).clone()
        x[3] *= 1e3
        return x

    assert held_out_choice(one_diverged, held_out[:, 0])["blown_up"] == 1


# ---------------------------------------------------------------------------------------------
# Langevin corrector
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(16,), (6, 10), (4, 6, 8)])
def test_spectral_noise_has_the_calibrated_power_on_grids_of_any_dimension(
        grid: tuple[int, ...]) -> None:
    """E|n̂_k|² = spectra_k (unnormalised FFT) for each reverse step's data step, on 1D, 2D and
    3D grids (odd and even sizes), with spectra even in k as residual powers are. 20000 draws:
    the relative standard error of a mode's mean power is ≤ 1 %, so 6 % is > 5 SE."""
    dims = len(grid)
    axes = tuple(range(-dims, 0))
    k = torch.zeros(grid, dtype=torch.float64)
    for axis, n in enumerate(grid):
        shape = [1] * dims
        shape[axis] = n
        k = k + torch.fft.fftfreq(n, 1 / n, dtype=torch.float64).abs().reshape(shape)
    spectra = torch.stack([1 + k, 16 / (1 + k)])[:, None]  # (K = 2, 1, *grid)
    noise = spectral_noise(spectra, dims=dims)
    x = torch.zeros(20000, 1, *grid, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    for i, k_data in ((0, 1), (1, 0)):  # reverse step i uses data step K − 1 − i
        power = torch.fft.fftn(noise(x, i, gen), dim=axes).abs().square().mean(0)
        torch.testing.assert_close(power, spectra[k_data], rtol=0.06, atol=0)
