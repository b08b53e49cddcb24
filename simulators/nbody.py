"""A 2D gravitational N-body toy system with Langevin noise on the velocities.

The system (docs/method.md §1), for bodies i = 1..N with positions r_i, velocities v_i, masses m_i:

    dr_i = v_i dt,   dv_i = a_i(r) dt + g dW_i,
    a_i(r) = G Σ_{j≠i} m_j (r_j − r_i) / (|r_j − r_i|² + ε²)^{3/2}     (Plummer softening ε),

noise only on the velocities. Data are simulated as x_{k+1} = S_dt(x_k) + g √dt z_k with S_dt the
kick-drift-kick leapfrog (symplectic, time-reversible, second order) and z_k zero on positions.

Conventions: states have shape (..., N, 4) with columns x, y, vx, vy; masses are positive and
broadcastable to (..., N). The integrator takes the acceleration as a callable pos (..., N, 2) ->
(..., N, 2), so a learned force can replace `gravity`. The noise kicks do not conserve momentum:
they are the SDE's noise, and are deliberately not projected.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "energy",
    "gravity",
    "leapfrog",
    "momentum",
    "potential_energy",
    "rollout",
    "sample_prior",
    "step",
]

Acceleration = Callable[[Tensor], Tensor]  # positions (..., N, 2) -> accelerations (..., N, 2)


def _pairs(pos: Tensor, softening: float) -> tuple[Tensor, Tensor, Tensor]:
    """Separations d_ij = r_j − r_i (..., N, N, 2), s_ij = |d_ij|² + ε² with s_ii = 1, and the
    off-diagonal mask (N, N).

    Setting s_ii = 1 (not 0) keeps powers of s and their gradients finite at ε = 0; callers zero
    the diagonal afterwards, so it never contributes.
    """
    d = pos.unsqueeze(-3) - pos.unsqueeze(-2)
    eye = torch.eye(pos.shape[-2], dtype=pos.dtype, device=pos.device)
    return d, d.square().sum(-1) + softening**2 + eye, 1 - eye


def gravity(masses: Tensor, softening: float, G: float = 1.0) -> Acceleration:
    """Plummer-softened Newtonian gravity as an acceleration callable.

    a_i = G Σ_{j≠i} m_j (r_j − r_i) / (|r_j − r_i|² + ε²)^{3/2}, the force of `potential_energy`.

    Arguments:
        masses: Positive masses, broadcastable to (..., N).
        softening: Plummer length ε ≥ 0; ε = 0 is exact Newtonian gravity.
        G: Gravitational constant.

    Returns:
        acceleration(pos): positions (..., N, 2) -> accelerations (..., N, 2), differentiable.

    References:
        Aarseth (2003), Gravitational N-Body Simulations, Cambridge University Press, §2
    """

    def acceleration(pos: Tensor) -> Tensor:
        d, s, off = _pairs(pos, softening)
        m = torch.as_tensor(masses).to(pos)
        weights = G * m.unsqueeze(-2) * s.pow(-1.5) * off  # (..., N_i, N_j)
        return (weights.unsqueeze(-1) * d).sum(-2)

    return acceleration


def leapfrog(state: Tensor, dt: float, acceleration: Acceleration, substeps: int = 1) -> Tensor:
    """Kick-drift-kick leapfrog (velocity Verlet) with `substeps` steps of h = dt / substeps.

    v ← v + (h/2) a(x),  x ← x + h v,  v ← v + (h/2) a(x), repeated. Symplectic and second order;
    a negative dt integrates backwards and leapfrog(leapfrog(s, dt, a), −dt, a) = s up to round-off.

    Arguments:
        state: States, shape (..., N, 4) with columns x, y, vx, vy.
        dt: Signed time step.
        acceleration: pos (..., N, 2) -> (..., N, 2), e.g. `gravity(...)` or a learned force.
        substeps: Number of leapfrog steps per call.

    Returns:
        The state after time dt, same shape and dtype.

    References:
        Hairer, Lubich & Wanner (2003), Geometric numerical integration illustrated by the
        Störmer-Verlet method, Acta Numerica 12:399-450
    """
    h = dt / substeps
    x, v = state[..., :2], state[..., 2:]
    a = acceleration(x)
    for _ in range(substeps):
        v = v + 0.5 * h * a
        x = x + h * v
        a = acceleration(x)  # reused by the next substep's first kick
        v = v + 0.5 * h * a
    return torch.cat([x, v], dim=-1)


def step(state: Tensor, masses: Tensor, dt: float, softening: float, substeps: int = 1,
         G: float = 1.0) -> Tensor:
    """The noise-free simulator S_dt: `leapfrog` under `gravity(masses, softening, G)`.

    Arguments:
        state: States, shape (..., N, 4).
        masses: Positive masses, broadcastable to (..., N).

    Returns:
        S_dt(state), shape (..., N, 4).
    """
    return leapfrog(state, dt, gravity(masses, softening, G), substeps)


def potential_energy(state: Tensor, masses: Tensor, softening: float, G: float = 1.0) -> Tensor:
    """U = −G Σ_{i<j} m_i m_j / √(|r_i − r_j|² + ε²), whose force −∇_i U is m_i a_i of `gravity`.

    Arguments:
        state: States, shape (..., N, 4) (only the positions are used).
        masses: Positive masses, broadcastable to (..., N).

    Returns:
        Potential energy, shape (...,).
    """
    _, s, off = _pairs(state[..., :2], softening)
    m = torch.as_tensor(masses).to(state)
    pair = m.unsqueeze(-1) * m.unsqueeze(-2) * s.rsqrt() * off
    return -0.5 * G * pair.sum((-2, -1))  # each pair appears twice in the full matrix


def energy(state: Tensor, masses: Tensor, softening: float, G: float = 1.0) -> Tensor:
    """Total energy E = Σ_i ½ m_i |v_i|² + U (`potential_energy`), shape (...,)."""
    m = torch.as_tensor(masses).to(state)
    kinetic = 0.5 * (m * state[..., 2:].square().sum(-1)).sum(-1)
    return kinetic + potential_energy(state, masses, softening, G)


def momentum(state: Tensor, masses: Tensor) -> Tensor:
    """Total momentum P = Σ_i m_i v_i: states (..., N, 4), masses (..., N) -> (..., 2)."""
    m = torch.as_tensor(masses).to(state)
    return (m.unsqueeze(-1) * state[..., 2:]).sum(-2)


def sample_prior(n: int, n_bodies: int, masses: Tensor, generator: torch.Generator,
                 radius: float = 1.0, velocity_scale: float = 0.3,
                 dtype: torch.dtype = torch.float64) -> Tensor:
    """Draw n initial states in the centre-of-mass frame.

    Positions r = R √u (cos 2πw, sin 2πw), u, w ~ U(0, 1) (uniform in the disk of radius R),
    shifted so that Σ m_i r_i = 0; velocities v ~ N(0, σ²) per component minus the
    mass-weighted mean, so that Σ m_i v_i = 0. Drawn on the CPU in float64.

    Arguments:
        masses: Positive masses, broadcastable to (n, n_bodies).
        generator: A CPU generator; every draw goes through it.

    Returns:
        States, shape (n, n_bodies, 4), on the CPU in `dtype`.
    """
    shape = (n, n_bodies)
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    w = torch.rand(shape, generator=generator, dtype=torch.float64)
    v = velocity_scale * torch.randn((*shape, 2), generator=generator, dtype=torch.float64)
    r = radius * u.sqrt()
    pos = torch.stack([r * torch.cos(2 * math.pi * w), r * torch.sin(2 * math.pi * w)], dim=-1)
    m = torch.as_tensor(masses).to(dtype=torch.float64, device="cpu").expand(shape).unsqueeze(-1)

    def centred(y: Tensor) -> Tensor:
        return y - (m * y).sum(-2, keepdim=True) / m.sum(-2, keepdim=True)

    return torch.cat([centred(pos), centred(v)], dim=-1).to(dtype)


def rollout(x0: Tensor, masses: Tensor, n_steps: int, dt: float, g: float,
            generator: torch.Generator, softening: float, substeps: int = 1,
            G: float = 1.0) -> Tensor:
    """Simulate x_{k+1} = S_dt(x_k) + g √dt (0, 0, z_x, z_y) for n_steps steps.

    z ~ N(0, 1) per body and velocity component, drawn with `generator` on the CPU in float64
    and moved to x0's device and dtype; positions receive no noise.

    Arguments:
        x0: Initial states, shape (B, ..., N, 4).
        masses: Positive masses, broadcastable to (B, ..., N).
        generator: A CPU generator.

    Returns:
        Trajectories including x0, shape (B, n_steps + 1, ..., N, 4).
    """
    acceleration = gravity(masses, softening, G)
    scale = g * math.sqrt(abs(dt))
    states = [x0]
    for _ in range(n_steps):
        x = leapfrog(states[-1], dt, acceleration, substeps)
        z = torch.randn((*x0.shape[:-1], 2), generator=generator, dtype=torch.float64)
        noise = scale * z.to(device=x0.device, dtype=x0.dtype)
        states.append(torch.cat([x[..., :2], x[..., 2:] + noise], dim=-1))
    return torch.stack(states, dim=1)
