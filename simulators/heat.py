"""Stochastic heat diffusion on the 2π-periodic square, with its exact Gaussian posterior.

The system (docs/method.md §1, §8 heat-32):

    x_{k+1} = S_dt(x_k) + g √dt z_k,   S_dt: û ← exp(−|k|² dt) û  (integer wavenumbers),

with Gaussian-random-field initial states of power spectrum P(k) = |k|^−exponent (k in cycles per
pixel, k = 0 set to zero). Every map here is linear and diagonal in Fourier space, so the
posterior p(x_0 | x_T) factorises over modes and is known in closed form.

Conventions: fields have shape (..., H, W); Fourier coefficients are those of the unnormalised
`torch.fft.fft2`, and "spectra" (prior, noise, posterior variance) are E|û_k|² in those units, of
shape (H, W). For real white noise of unit variance E|ẑ_k|² = H·W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "GaussianPrior",
    "Posterior",
    "inverse_step",
    "noise_spectrum",
    "posterior",
    "prior_spectrum",
    "rollout",
    "sample_prior",
    "step",
    "wavenumbers_squared",
]


def wavenumbers_squared(h: int, w: int, device: torch.device | None = None) -> Tensor:
    """|k|² with integer wavenumbers of the 2π-periodic square, shape (H, W), float64."""
    ky = torch.fft.fftfreq(h, 1 / h, device=device, dtype=torch.float64)
    kx = torch.fft.fftfreq(w, 1 / w, device=device, dtype=torch.float64)
    return ky[:, None] ** 2 + kx[None, :] ** 2


def step(u: Tensor, dt: float, kappa: float = 1.0) -> Tensor:
    """Advance u_t = κ Δu by dt on the 2π-periodic square, exactly in Fourier space.

    Arguments:
        u: Temperature, shape (..., H, W).
        dt: Time step (negative values run the unstable backward heat equation).

    Returns:
        û ← exp(−κ|k|² dt) û, same shape and dtype as u.
    """
    decay = torch.exp(-kappa * dt * wavenumbers_squared(*u.shape[-2:], device=u.device))
    return torch.fft.ifft2(decay.to(u.dtype) * torch.fft.fft2(u)).real


def inverse_step(u: Tensor, dt: float, kappa: float = 1.0) -> Tensor:
    """Approximate inverse physics step P̃⁻¹(u) = 2u − S_dt(u) (docs/method.md §2).

    Exact inversion multiplies mode k by exp(+|k|² dt) and blows up noise; negating the forward
    increment is stable (gain ≤ 2 per step) and exact to first order in dt.
    """
    return 2 * u - step(u, dt, kappa)


def prior_spectrum(h: int, w: int, exponent: float = 4.0) -> Tensor:
    """E|x̂_k|² of the GRF prior: P(k) = |k|^−exponent, k from fftfreq in cycles/pixel, P(0) = 0.

    Returns:
        Spectrum, shape (H, W), float64.
    """
    ky = torch.fft.fftfreq(h, dtype=torch.float64)
    kx = torch.fft.fftfreq(w, dtype=torch.float64)
    k = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    spectrum = torch.zeros_like(k)
    nonzero = k > 0
    spectrum[nonzero] = k[nonzero] ** -exponent
    return spectrum


def sample_prior(
    n: int, h: int, w: int, exponent: float = 4.0, generator: torch.Generator | None = None
) -> Tensor:
    """Draw n Gaussian random fields: Re ifft2((a + ib) √P(k)), a, b ~ N(0, 1) per coefficient.

    The real part of the inverse FFT has E|x̂_k|² = P(k) (see module docstring).

    Returns:
        Fields, shape (n, H, W), float64.
    """
    shape = (n, h, w)
    re = torch.randn(shape, generator=generator, dtype=torch.float64)
    im = torch.randn(shape, generator=generator, dtype=torch.float64)
    amplitude = prior_spectrum(h, w, exponent).sqrt()
    return torch.fft.ifft2(torch.complex(re, im) * amplitude).real


def rollout(
    x_0: Tensor, n_steps: int, dt: float, g: float, generator: torch.Generator | None = None
) -> Tensor:
    """Simulate x_{k+1} = S_dt(x_k) + g √dt z_k for n_steps steps.

    Arguments:
        x_0: Initial states, shape (B, ..., H, W).

    Returns:
        Trajectories including x_0, shape (B, n_steps + 1, ..., H, W).
    """
    states = [x_0]
    for _ in range(n_steps):
        z = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype, device=x_0.device)
        states.append(step(states[-1], dt) + g * math.sqrt(dt) * z)
    return torch.stack(states, dim=1)


@dataclass(frozen=True)
class GaussianPrior:
    """A stationary Gaussian prior on periodic fields: constant mean, diagonal spectrum.

    In the units of a dataset normalised by (mean m, std s), the GRF prior has mean −m/s and
    spectrum P(k)/s² (`from_normalisation`).
    """

    mean: float
    spectrum: Tensor  # (H, W), E|x̂_k − μ̂_k|²

    @classmethod
    def from_normalisation(
        cls, h: int, w: int, exponent: float, mean: float, std: float
    ) -> GaussianPrior:
        return cls(mean=-mean / std, spectrum=prior_spectrum(h, w, exponent) / std**2)


@dataclass(frozen=True)
class Posterior:
    """p(x_0 | x_T): mean field (B, H, W) and per-mode variance E|x̂_0 − m̂|² (H, W)."""

    mean: Tensor
    variance: Tensor

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw n samples per observation.

        x_0 = ifft2(m̂ + √v_k ẑ_k / √(HW)) with ẑ = fft2 of real white noise, which carries the
        Hermitian symmetry of a real field.

        Returns:
            Samples, shape (B, n, H, W), dtype of the mean.
        """
        b, h, w = self.mean.shape
        z = torch.randn((b, n, h, w), generator=generator, dtype=torch.float64)
        coloured = torch.fft.fft2(z) * (self.variance.sqrt() / math.sqrt(h * w))
        noise = torch.fft.ifft2(coloured).real.to(device=self.mean.device, dtype=self.mean.dtype)
        return self.mean[:, None] + noise


def noise_spectrum(h: int, w: int, n_steps: int, dt: float, g: float) -> Tensor:
    """E|ê_k|² of the accumulated noise e = x_T − S_T(x_0): g² dt HW Σ_{j<n} exp(−2|k|² dt j)."""
    a2 = torch.exp(-2 * dt * wavenumbers_squared(h, w))
    powers = a2[None] ** torch.arange(n_steps, dtype=torch.float64)[:, None, None]
    return g**2 * dt * h * w * powers.sum(0)


def posterior(x_T: Tensor, prior: GaussianPrior, n_steps: int, dt: float, g: float) -> Posterior:
    """Exact p(x_0 | x_T) of the discrete chain, mode by mode.

    With λ_k = exp(−|k|² n dt), prior (μ̂, v_k) and accumulated noise σ²_k (`noise_spectrum`):

        m̂_k = μ̂_k + λ v (λ² v + σ²)⁻¹ (x̂_T − λ μ̂_k),   Var_k = v σ² (λ² v + σ²)⁻¹.

    Arguments:
        x_T: Observed end states, shape (B, H, W).

    Returns:
        The Gaussian posterior, mean in the dtype of x_T.
    """
    h, w = x_T.shape[-2:]
    lam = torch.exp(-n_steps * dt * wavenumbers_squared(h, w))
    v = prior.spectrum.to(torch.float64)
    sigma2 = noise_spectrum(h, w, n_steps, dt, g)
    denom = lam**2 * v + sigma2
    safe = denom > 0  # only k = 0 with g = 0: a mode that is known exactly
    gain = torch.where(safe, lam * v / torch.where(safe, denom, 1.0), 0.0)
    variance = torch.where(safe, v * sigma2 / torch.where(safe, denom, 1.0), 0.0)
    mu = torch.full((h, w), prior.mean, dtype=torch.float64)
    mu_hat = torch.fft.fft2(mu)
    x_hat = torch.fft.fft2(x_T.to(torch.float64).cpu())
    m_hat = mu_hat + gain * (x_hat - lam * mu_hat)
    mean = torch.fft.ifft2(m_hat).real.to(device=x_T.device, dtype=x_T.dtype)
    return Posterior(mean=mean, variance=variance)
