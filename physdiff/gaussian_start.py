"""Exact draws of x_T | y under a stationary Gaussian approximation of p_T, to start the Langevin
chains of physdiff/conditioning.py at (or near) their target (docs/method.md §6).

For fields on a periodic grid, p_T is approximated by N(μ, Σ) with Σ diagonal in Fourier space:
the spectrum S_k = E|x̂_T − μ̂|² of the training end states (`end_state_spectrum`). For a linear
operator A and y = A x_T + σ_y ε, the conditional of that Gaussian is sampled exactly by
Matheron's rule ("perturb and correct"):

    x' ~ N(μ, Σ),  ε' ~ N(0, I),  x = x' + Σ Aᵀ (A Σ Aᵀ + σ_y² I)⁻¹ (y − A x' − σ_y ε'),

where the solve in observation space runs by conjugate gradients with Σ applied by FFT, so no
matrix is formed and each iteration costs two FFTs and one application of A and Aᵀ (no network
call). Where p_T is Gaussian and stationary (heat), these are exact draws of p(x_T | y) and the
Langevin chains only keep them there; where it is not, they are an over-dispersed-enough start
that the learned score then corrects.

References:
    G. Matheron (1963); J. Wilson et al. (2020), Efficiently sampling functions from Gaussian
    process posteriors, ICML (the pathwise update used here).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from physdiff.samplers import randn_like, repeat_samples
from physdiff.sde import expand_like

__all__ = ["diagonal_conditional_draws", "end_state_spectrum", "fourier_multiplier",
           "gaussian_conditional_draws"]

Linear = Callable[[Tensor], Tensor]


def end_state_spectrum(x_T: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean (C, 1, 1) and Fourier power spectrum S (C, H, W) (unnormalised fft2
    units, E|x̂ − μ̂|²) of end states (N, C, H, W), assuming stationarity on the periodic grid."""
    x = x_T.to(torch.float64)
    mean = x.mean(dim=(0, 2, 3))[:, None, None]
    spectrum = torch.fft.fft2(x - mean).abs().square().mean(0)
    return mean.to(x_T.dtype), spectrum


def fourier_multiplier(spectrum: Tensor, power: float) -> Linear:
    """v ↦ Re ifft2((S / HW)^power · fft2(v)) over the last two dims, in v's dtype: power 1 is
    the stationary covariance with spectrum S (fft2 units), power ½ its square root."""
    h, w = spectrum.shape[-2:]
    multiplier = (spectrum.to(torch.float64) / (h * w)).pow(power)

    def apply(v: Tensor) -> Tensor:
        m = multiplier.to(device=v.device)
        return torch.fft.ifft2(m * torch.fft.fft2(v)).real.to(v.dtype)

    return apply


def _adjoint(operator: Linear, state: Tensor) -> Linear:
    """Aᵀ of a linear operator by one vector-Jacobian product (exact for linear A)."""
    def apply(u: Tensor) -> Tensor:
        with torch.enable_grad():
            x = torch.zeros_like(state, requires_grad=True)
            (grad,) = torch.autograd.grad(operator(x), x, grad_outputs=u)
        return grad

    return apply


def _cg(matvec: Linear, rhs: Tensor, tol: float, max_iter: int) -> tuple[Tensor, int]:
    """Batched conjugate gradients for a symmetric positive definite matvec, row by row
    (rows stop changing once converged: ‖r‖ ≤ tol ‖rhs‖)."""
    def dot(a: Tensor, b: Tensor) -> Tensor:
        return (a * b).flatten(1).sum(1)

    x = torch.zeros_like(rhs)
    r = rhs.clone()
    p = r.clone()
    rr = dot(r, r)
    stop = tol**2 * dot(rhs, rhs)
    for it in range(max_iter):
        active = rr > stop
        if not active.any():
            return x, it
        ap = matvec(p)
        alpha = torch.where(active, rr / dot(p, ap).clamp_min(1e-300), torch.zeros_like(rr))
        x = x + expand_like(alpha, x) * p
        r = r - expand_like(alpha, r) * ap
        rr_new = dot(r, r)
        beta = torch.where(active, rr_new / rr.clamp_min(1e-300), torch.zeros_like(rr))
        p = r + expand_like(beta, p) * p
        rr = rr_new
    return x, max_iter


@torch.no_grad()
def gaussian_conditional_draws(mean: Tensor, spectrum: Tensor, operator: Linear, y: Tensor,
                               sigma: Tensor | float, n: int,
                               generator: torch.Generator | None = None, tol: float = 1e-6,
                               max_iter: int = 1000) -> tuple[Tensor, int]:
    """n draws per observation of x_T | y under p_T ≈ N(mean, Σ(spectrum)), by Matheron's rule.

    Arguments:
        mean: The Gaussian's mean, broadcasting against one state (C, H, W).
        spectrum: Its Fourier power spectrum (C, H, W), `end_state_spectrum`.
        operator: A linear A, (B, C, H, W) -> (B, *obs).
        y: Observations (M, *obs); sigma: σ_y > 0, broadcasting against (B, *obs).

    Returns:
        Draws (M, n, C, H, W) in y's dtype (float64 inside) and the CG iterations used.
    """
    return _matheron(mean, fourier_multiplier(spectrum, 0.5), fourier_multiplier(spectrum, 1.0),
                     tuple(spectrum.shape), operator, y, sigma, n, generator, tol, max_iter)


@torch.no_grad()
def diagonal_conditional_draws(mean: Tensor, variance: Tensor, operator: Linear, y: Tensor,
                               sigma: Tensor | float, n: int,
                               generator: torch.Generator | None = None, spread: float = 1.0,
                               tol: float = 1e-6, max_iter: int = 1000) -> tuple[Tensor, int]:
    """As `gaussian_conditional_draws` for p_T ≈ N(mean, diag(variance)) (any state shape),
    with the prior draw's deviation scaled by `spread`: 1 gives exact draws of that Gaussian's
    conditional; below 1 keeps the unobserved coordinates near the mean (a start for chains
    whose learned score has only seen physical states, not independent per-pixel noise)."""
    var = variance.to(torch.float64)
    return _matheron(mean, lambda v: spread * var.to(v.device).sqrt() * v,
                     lambda v: var.to(v.device) * v, tuple(variance.shape), operator, y, sigma,
                     n, generator, tol, max_iter)


def _matheron(mean: Tensor, root: Linear, cov: Linear, state_shape: tuple[int, ...],
              operator: Linear, y: Tensor, sigma: Tensor | float, n: int,
              generator: torch.Generator | None, tol: float, max_iter: int
              ) -> tuple[Tensor, int]:
    """x = x' + Σ Aᵀ (A Σ Aᵀ + σ_y² I)⁻¹ (y − A x' − σ_y ε'), x' = mean + root(z)."""
    m = y.shape[0]
    shape = (m * n, *state_shape)
    z = randn_like(torch.zeros(shape, dtype=torch.float64, device=y.device), generator)
    x_prior = mean.to(device=y.device, dtype=torch.float64) + root(z)
    y_rep = repeat_samples(y.to(torch.float64), n)
    sig = torch.as_tensor(sigma, dtype=torch.float64, device=y.device)
    eps = randn_like(y_rep, generator)
    adjoint = _adjoint(operator, x_prior[:1].expand(shape))

    def matvec(u: Tensor) -> Tensor:
        return operator(cov(adjoint(u))) + sig.square() * u

    u, iterations = _cg(matvec, y_rep - operator(x_prior) - sig * eps, tol, max_iter)
    draws = x_prior + cov(adjoint(u))
    return draws.reshape(m, n, *state_shape).to(y.dtype), iterations
