"""1D stochastic viscous Burgers on the 2π-periodic line, pure torch: prior, step, rollout.

    u_t + u u_x = ν u_xx,   written conservatively   u_t = −½ (u²)_x + ν u_xx,

on N points x_j = 2π j / N (j = 0..N−1), plus additive noise g √dt z after each step of length
dt. States are (..., N), batch first; every function is differentiable and has no hidden state.

Space: pseudo-spectral with integer wavenumbers k (`torch.fft.rfft`) and the 2/3 rule: the
quadratic term is formed from, and projected back onto, the modes |k| ≤ K = ⌊(N − 1)/3⌋, so it
is free of aliasing (3K < N), and the modes above K only diffuse. Mode k = 0 (the mean of u) has
a zero nonlinear term, so the mean is conserved to round-off.

Time: integrating-factor RK4 over `substeps` substeps of h = dt / substeps: the viscous term is
integrated exactly (factor e^{−ν k² h}), classical RK4 is applied to the nonlinear term in the
transformed variable e^{ν k² t} û. Fourth order in h.

Stability (CFL). Only advection is explicit. Frozen at a speed c, mode k has the eigenvalue
−i c k, and RK4 is stable on the imaginary axis up to |z| = 2√2, so a substep must satisfy

    C = h · max|u| · K ≤ 2√2 ≈ 2.83.

Accuracy wants a margin: the defaults of the plug-in (N = 64, K = 21, ν = 0.1, dt = 0.05,
4 substeps, h = 0.0125, prior max|u| ≲ 2) give C ≈ 0.5. The viscous term sets no limit.
Resolution: a viscous shock of jump Δu has width ~4ν/Δu, which must span a few grid spacings
2π/N; ν = 0.1 and |u| = O(1) are resolved at N = 64.

References:
    L. N. Trefethen (2000), Spectral Methods in MATLAB, SIAM: Program 27 (integrating-factor RK4
    for KdV) and the 2/3 rule.
    A.-K. Kassam, L. N. Trefethen (2005), Fourth-order time-stepping for stiff PDEs, SIAM J. Sci.
    Comput. 26(4), 1214-1233.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["RK4_LIMIT", "cfl_number", "max_wavenumber", "rollout", "sample_prior", "step"]

RK4_LIMIT = 2 * math.sqrt(2)  # stability limit of classical RK4 on the imaginary axis


def max_wavenumber(points: int) -> int:
    """K = ⌊(N − 1)/3⌋, the largest wavenumber the 2/3 rule keeps in the nonlinear term."""
    return (points - 1) // 3


def cfl_number(u_max: float, dt: float, points: int, substeps: int) -> float:
    """C = (dt / substeps) · max|u| · K; RK4 is stable for C ≤ 2√2 (module docstring)."""
    return dt / substeps * u_max * max_wavenumber(points)


def _nonlinear(u_hat: Tensor, ik: Tensor, keep: Tensor, points: int) -> Tensor:
    """Fourier coefficients of −½ (u²)_x, alias-free: u² of the kept modes, projected back."""
    u = torch.fft.irfft(u_hat * keep, n=points)
    return -0.5 * ik * keep * torch.fft.rfft(u * u)


def step(u: Tensor, dt: float, viscosity: float, substeps: int = 1) -> Tensor:
    """Advance u_t = −½ (u²)_x + ν u_xx by dt on the 2π-periodic line, noise-free: S_dt(u).

    Integrating-factor RK4 with `substeps` substeps h (Trefethen 2000, Program 27); with
    E = e^{−ν k² h / 2} and a, b, c, d = h N(E⁰ û), h N(E(û + a/2)), h N(E û + b/2),
    h N(E² û + E c):  û ← E² û + (E² a + 2E (b + c) + d) / 6.

    Arguments:
        u: Velocity on x_j = 2π j / N, shape (..., N).
        dt: Time step (> 0 forward; the step is not meant to run backwards: e^{+ν k² h} grows).
        viscosity: ν ≥ 0.
        substeps: RK4 substeps per step; keep h · max|u| · K ≤ 2√2 (module docstring).

    Returns:
        u at t + dt, shape (..., N), same dtype.
    """
    points = u.shape[-1]
    real = u.dtype
    k = torch.fft.rfftfreq(points, 1 / points, device=u.device, dtype=real)  # 0..N/2
    keep = (k <= max_wavenumber(points)).to(real)
    ik = 1j * k
    h = dt / substeps
    e_half = torch.exp(-viscosity * k * k * h / 2)
    e_full = e_half * e_half
    u_hat = torch.fft.rfft(u)
    for _ in range(substeps):
        a = h * _nonlinear(u_hat, ik, keep, points)
        b = h * _nonlinear(e_half * (u_hat + a / 2), ik, keep, points)
        c = h * _nonlinear(e_half * u_hat + b / 2, ik, keep, points)
        d = h * _nonlinear(e_full * u_hat + e_half * c, ik, keep, points)
        u_hat = e_full * u_hat + (e_full * a + 2 * e_half * (b + c) + d) / 6
    return torch.fft.irfft(u_hat, n=points)


def sample_prior(n: int, points: int, modes: int = 8, amplitude: float = 0.5,
                 generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Random smooth periodic initial conditions with zero mean:

        u_0(x) = Σ_{k=1..modes} σ_k (a_k cos kx + b_k sin kx),   a_k, b_k ~ N(0, 1),
        σ_k ∝ 1/k,  Σ_k σ_k² = amplitude²,

    so u_0(x) ~ N(0, amplitude²) at every x, the field is statistically invariant under
    translations and under u(x) -> −u(−x), and its energy spectrum decays as k^{-2}.

    Returns:
        Shape (n, points), `dtype`.
    """
    k = torch.arange(1, modes + 1, dtype=torch.float64)
    sigma = amplitude * (1 / k) / torch.sqrt((1 / k**2).sum())
    a = torch.randn(n, modes, generator=generator, dtype=torch.float64) * sigma
    b = torch.randn(n, modes, generator=generator, dtype=torch.float64) * sigma
    x = 2 * math.pi * torch.arange(points, dtype=torch.float64) / points
    phase = k[:, None] * x[None, :]  # (modes, points)
    return (a @ torch.cos(phase) + b @ torch.sin(phase)).to(dtype)


def rollout(u_0: Tensor, n_steps: int, dt: float, g: float, viscosity: float, substeps: int,
            generator: torch.Generator | None = None) -> Tensor:
    """Stochastic trajectories u_{k+1} = S_dt(u_k) + g √dt z_k, z_k ~ N(0, I).

    Arguments:
        u_0: Initial states, shape (B, *state) ending in N.

    Returns:
        Trajectories, shape (B, n_steps + 1, *state).
    """
    path = [u_0]
    u = u_0
    for _ in range(n_steps):
        z = torch.randn(u.shape, generator=generator, dtype=u.dtype, device=u.device)
        u = step(u, dt, viscosity, substeps) + g * math.sqrt(dt) * z
        path.append(u)
    return torch.stack(path, dim=1)
