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
    "DenseGaussian",
    "GaussianPrior",
    "Posterior",
    "circulant",
    "dense_chain",
    "end_state_prior",
    "inverse_step",
    "noise_spectrum",
    "observed_end_state_posterior",
    "observed_posterior",
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


# ------------------------------------------------------------------ partial, noisy observations
# docs/method.md §6: y = A x_T + σ_y ε with a linear A given as a dense matrix (m, H·W) acting on
# fields flattened row-major. Every matrix below is dense (H·W)²: 8² or 16² in tests, 32² = 1024²
# in float64 still takes well under a second.


@dataclass(frozen=True)
class DenseGaussian:
    """A Gaussian on fields (H, W), dense: mean (B, H, W) (or (H, W)) and covariance (HW, HW)
    shared by every row of the mean, in pixel units, float64."""

    mean: Tensor
    covariance: Tensor

    @property
    def variance(self) -> Tensor:
        """Per-pixel variance, shape (H, W)."""
        return self.covariance.diagonal().reshape(self.mean.shape[-2:])

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws per mean row, (B, n, H, W) (or (n, H, W) for a single mean (H, W)).

        The covariances here are singular (the prior gives the k = 0 mode of x_0 zero variance),
        so a plain Cholesky factor does not exist; the symmetric square root U √Λ Uᵀ from
        `eigh`, with round-off negative eigenvalues set to 0, is used instead.
        """
        evals, evecs = torch.linalg.eigh(self.covariance)
        root = evecs * evals.clamp_min(0).sqrt()
        h, w = self.mean.shape[-2:]
        lead = self.mean.shape[:-2]
        z = torch.randn((*lead, n, h * w), generator=generator, dtype=torch.float64)
        draws = (z @ root.T).reshape(*lead, n, h, w)
        return self.mean.unsqueeze(-3) + draws


def circulant(multiplier: Tensor) -> Tensor:
    """The dense matrix (HW, HW) of the periodic convolution u ↦ ifft2(m · fft2(u)) for a real,
    even Fourier multiplier m of shape (H, W) (m_k = m_−k, so the matrix is real and symmetric).

    Entry [p, q] is ifft2(m)[p − q mod (H, W)]. A covariance with spectrum D (E|û_k|² in fft2
    units) is the multiplier D / (HW): white noise of variance σ² has D = σ² HW and gives σ² I.
    """
    h, w = multiplier.shape
    kernel = torch.fft.ifft2(multiplier.to(torch.float64)).real
    iy, ix = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    iy, ix = iy.reshape(-1), ix.reshape(-1)
    return kernel[(iy[:, None] - iy[None, :]) % h, (ix[:, None] - ix[None, :]) % w]


def dense_chain(prior: GaussianPrior, n_steps: int, dt: float, g: float
                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The chain x_T = L x_0 + η as dense pixel-space matrices (docs/method.md §6).

    Returns:
        μ_0 (HW,), L = F* diag(λ^K) F, C_0 = F* diag(P / HW) F and V_η = F* diag(σ²_k / HW) F,
        each (HW, HW), float64; σ²_k is `noise_spectrum`.
    """
    h, w = prior.spectrum.shape
    lam = torch.exp(-n_steps * dt * wavenumbers_squared(h, w))
    mu_0 = torch.full((h * w,), prior.mean, dtype=torch.float64)
    c_0 = circulant(prior.spectrum.to(torch.float64) / (h * w))
    v_eta = circulant(noise_spectrum(h, w, n_steps, dt, g) / (h * w))
    return mu_0, circulant(lam), c_0, v_eta


def end_state_prior(prior: GaussianPrior, n_steps: int, dt: float, g: float) -> DenseGaussian:
    """p_T = N(m_T, Σ_T) with m_T = L μ_0 and Σ_T = L C_0 L + V_η; its score −Σ_T⁻¹ (x − m_T) is the
    exact ∇log p_T that a learned s_θ(·, T) approximates."""
    mu_0, lam, c_0, v_eta = dense_chain(prior, n_steps, dt, g)
    h, w = prior.spectrum.shape
    return DenseGaussian((lam @ mu_0).reshape(h, w), lam @ c_0 @ lam + v_eta)


def _observation_noise(sigma_y: float | Tensor, m: int) -> Tensor:
    """σ_y² as a vector (m,): a scalar or one value per observed component, all > 0."""
    sigma = torch.as_tensor(sigma_y, dtype=torch.float64)
    if sigma.ndim > 1 or (sigma.ndim == 1 and sigma.shape[0] != m):
        raise ValueError(f"sigma_y has shape {tuple(sigma.shape)}, expected a scalar or ({m},)")
    if not (sigma > 0).all():
        raise ValueError("sigma_y must be > 0 (a noise-free partial observation is degenerate)")
    return sigma.expand(m).square()


def _conditional(y: Tensor, a: Tensor, sigma_y: float | Tensor, end: DenseGaussian,
                 mu: Tensor, cov: Tensor, cross: Tensor) -> DenseGaussian:
    """Condition u, jointly Gaussian with y = A x_T + σ_y ε, on y.

    With x_T ~ N(m_T, Σ_T) (`end`), u ~ N(μ, cov) and cross = Cov(u, x_T), (HW, HW):
    S = A Σ_T Aᵀ + σ_y² I (Cholesky), E[u | y] = μ + cross Aᵀ S⁻¹ (y − A m_T) and
    Cov[u | y] = cov − cross Aᵀ S⁻¹ A crossᵀ.
    """
    h, w = end.mean.shape[-2:]
    if a.ndim != 2 or a.shape[1] != h * w:
        raise ValueError(f"A has shape {tuple(a.shape)}, expected (m, {h * w}) for {h}x{w} fields")
    if y.ndim != 2 or y.shape[1] != a.shape[0]:
        raise ValueError(f"y has shape {tuple(y.shape)}, expected (B, {a.shape[0]})")
    a = a.to(torch.float64)
    s = a @ end.covariance @ a.T + torch.diag(_observation_noise(sigma_y, a.shape[0]))
    chol = torch.linalg.cholesky(s)
    gain_t = torch.cholesky_solve(a @ cross.T, chol)  # S⁻¹ A crossᵀ, (m, HW)
    innovation = y.to(torch.float64).cpu() - end.mean.reshape(-1) @ a.T  # (B, m)
    mean = mu + innovation @ gain_t  # (B, HW)
    covariance = cov - cross @ a.T @ gain_t
    covariance = 0.5 * (covariance + covariance.T)  # symmetric up to round-off
    return DenseGaussian(mean.reshape(-1, h, w), covariance)


def observed_posterior(y: Tensor, a: Tensor, sigma_y: float | Tensor, prior: GaussianPrior,
                       n_steps: int, dt: float, g: float) -> DenseGaussian:
    """Exact p(x_0 | y) for y = A x_T + σ_y ε (docs/method.md §6).

    x_0 ~ N(μ_0, C_0), x_T = L x_0 + η, Σ_T = L C_0 L + V_η, S = A Σ_T Aᵀ + σ_y² I:

        E[x_0 | y]   = μ_0 + C_0 L Aᵀ S⁻¹ (y − A L μ_0),
        Cov[x_0 | y] = C_0 − C_0 L Aᵀ S⁻¹ A L C_0.

    Arguments:
        y: Observations, shape (B, m).
        a: The linear observation operator as a dense matrix (m, H·W) on row-major fields.
        sigma_y: Observation noise std, > 0: a scalar or one per component, (m,).

    Returns:
        Mean (B, H, W) and covariance (HW, HW), float64.
    """
    mu_0, lam, c_0, _ = dense_chain(prior, n_steps, dt, g)
    end = end_state_prior(prior, n_steps, dt, g)
    return _conditional(y, a, sigma_y, end, mu_0, c_0, c_0 @ lam)


def observed_end_state_posterior(y: Tensor, a: Tensor, sigma_y: float | Tensor,
                                 prior: GaussianPrior, n_steps: int, dt: float, g: float
                                 ) -> DenseGaussian:
    """Exact p(x_T | y) ∝ p(y | x_T) p_T(x_T), arguments as in `observed_posterior`:

        E[x_T | y]   = m_T + Σ_T Aᵀ S⁻¹ (y − A m_T),
        Cov[x_T | y] = Σ_T − Σ_T Aᵀ S⁻¹ A Σ_T.
    """
    end = end_state_prior(prior, n_steps, dt, g)
    return _conditional(y, a, sigma_y, end, end.mean.reshape(-1), end.covariance,
                        end.covariance)
