"""The N-body simulator against the Kepler solution and the invariants of Newtonian gravity."""

import math

import numpy as np
import torch

from simulators import nbody

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _kepler(t: float, m1: float, m2: float, a: float) -> torch.Tensor:
    """Two bodies on a circular orbit of separation a about their centre of mass (G = 1), at t."""
    total = m1 + m2
    omega = math.sqrt(total / a**3)
    c, s = math.cos(omega * t), math.sin(omega * t)
    rel = torch.tensor([a * c, a * s, -a * omega * s, a * omega * c], dtype=F64)
    return torch.stack([-m2 / total * rel, m1 / total * rel])  # (2, 4)


def _iterate(x: torch.Tensor, masses: torch.Tensor, n: int, dt: float,
             softening: float) -> torch.Tensor:
    """Noise-free trajectory including x, shape (B, n + 1, N, 4)."""
    states = [x]
    for _ in range(n):
        states.append(nbody.step(states[-1], masses, dt, softening))
    return torch.stack(states, dim=1)


def test_leapfrog_is_second_order_on_the_kepler_orbit() -> None:
    m1, m2, a, t_end = 1.0, 0.25, 1.0, 2.0
    masses = torch.tensor([m1, m2], dtype=F64)
    x0, exact = _kepler(0.0, m1, m2, a), _kepler(t_end, m1, m2, a)
    n_steps = [25, 50, 100, 200]
    errors = [(nbody.step(x0, masses, t_end, 0.0, substeps=n) - exact).abs().max().item()
              for n in n_steps]
    slope = np.polyfit(np.log([t_end / n for n in n_steps]), np.log(errors), 1)[0]
    assert 1.8 <= slope <= 2.2, (slope, errors)
    assert errors[-1] < 1e-4


def test_energy_error_is_bounded_and_does_not_drift() -> None:
    """Relative energy error over 2000 steps (T = 4, about 4 crossing times) stays below 1e-2,
    and its maximum over the last quarter of the run is no larger than over the first: a
    non-symplectic second-order method (explicit midpoint) grows 2.5-3x here."""
    gen = _gen(0)
    b, n, softening = 16, 5, 0.1
    masses = torch.rand(b, n, generator=gen, dtype=F64) + 0.5
    traj = _iterate(nbody.sample_prior(b, n, masses, gen), masses, 2000, 2e-3, softening)
    e = nbody.energy(traj, masses[:, None], softening)
    rel = ((e - e[:, :1]) / e[:, :1].abs()).abs()
    assert rel.max() < 1e-2, rel.max()
    quarters = rel[:, 1:].reshape(b, 4, 500).amax(dim=(0, 2))
    assert quarters[3] < 1.5 * quarters[0], quarters


def test_momentum_is_conserved_and_the_centre_of_mass_moves_uniformly() -> None:
    gen = _gen(1)
    b, n, dt, n_steps = 4, 5, 2e-3, 1000
    boost = torch.tensor([0.2, -0.1], dtype=F64)
    for masses in [torch.ones(n, dtype=F64), 0.1 + 2 * torch.rand(b, n, generator=gen, dtype=F64)]:
        x0 = nbody.sample_prior(b, n, masses, gen)
        x0[..., 2:] += boost
        traj = _iterate(x0, masses, n_steps, dt, 0.05)
        m = masses.expand(b, n)[:, None]  # (B, 1, N), broadcast over time
        p = nbody.momentum(traj, m)
        assert (p - p[:, :1]).abs().max() < 1e-12
        torch.testing.assert_close(p[:, 0], m.sum(-1) * boost, atol=1e-13, rtol=0)
        com = (m[..., None] * traj[..., :2]).sum(-2) / m.sum(-1)[..., None]
        t = dt * torch.arange(n_steps + 1, dtype=F64)[:, None]
        torch.testing.assert_close(com, (t * boost).expand_as(com), atol=1e-11, rtol=0)


def test_leapfrog_is_time_reversible_and_substeps_are_steps() -> None:
    gen = _gen(2)
    masses = torch.rand(3, 5, generator=gen, dtype=F64) + 0.5
    x0 = nbody.sample_prior(3, 5, masses, gen)
    acceleration = nbody.gravity(masses, 0.1)
    x = x0
    # 100 steps (T = 1): the dynamics is chaotic and amplifies round-off exponentially, so the
    # error is ~3e-14 here but ~1e-11 to 1e-10 after 200 steps and ~1e-6 after 400
    for dt in [0.01] * 100 + [-0.01] * 100:
        x = nbody.leapfrog(x, dt, acceleration)
    assert (x - x0).abs().max() < 1e-10
    assert (nbody.leapfrog(x0, 0.5, acceleration) - x0).abs().max() > 0.1  # it did move
    x = x0
    for _ in range(4):
        x = nbody.leapfrog(x, 0.01, acceleration)
    torch.testing.assert_close(nbody.leapfrog(x0, 0.04, acceleration, substeps=4), x,
                               atol=1e-14, rtol=0)


def test_step_gradcheck() -> None:
    gen = _gen(3)
    x = nbody.sample_prior(2, 3, torch.ones(3, dtype=F64), gen).requires_grad_()
    masses = (torch.rand(3, generator=gen, dtype=F64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, m: nbody.step(x, m, 0.05, 0.1, substeps=2),
                                    (x, masses))
    # without softening the masked diagonal (r_ii = 0) must not leak NaN into the gradient
    pos = x.detach()[..., :2].clone().requires_grad_()
    assert torch.autograd.gradcheck(nbody.gravity(masses.detach(), 0.0), (pos,))


def test_potential_is_the_potential_of_the_force() -> None:
    """−∇_{r_i} U = m_i a_i, which is what makes E = K + U an invariant of the dynamics."""
    gen = _gen(4)
    masses = torch.rand(2, 6, generator=gen, dtype=F64) + 0.2
    state = torch.randn(2, 6, 4, generator=gen, dtype=F64).requires_grad_()
    for softening in [0.0, 0.3]:
        (grad,) = torch.autograd.grad(nbody.potential_energy(state, masses, softening).sum(),
                                      state)
        force = masses[..., None] * nbody.gravity(masses, softening)(state.detach()[..., :2])
        torch.testing.assert_close(-grad[..., :2], force)
        assert (grad[..., 2:] == 0).all()
    # two bodies at distance r: U = −G m1 m2 / √(r² + ε²), plus the kinetic energy
    state = torch.tensor([[0.0, 0.0, 1.0, 0.0], [3.0, 4.0, 0.0, -2.0]], dtype=F64)
    m = torch.tensor([2.0, 0.5], dtype=F64)
    expected = -1.5 * 2.0 * 0.5 / math.sqrt(25 + 0.04) + 0.5 * (2.0 * 1 + 0.5 * 4)
    torch.testing.assert_close(nbody.energy(state, m, 0.2, G=1.5), torch.tensor(expected, dtype=F64))


def test_gravity_obeys_newtons_laws() -> None:
    gen = _gen(5)
    masses = 0.1 + 3 * torch.rand(3, 6, generator=gen, dtype=F64)
    pos = torch.randn(3, 6, 2, generator=gen, dtype=F64)
    for softening in [0.0, 0.1]:
        f = masses[..., None] * nbody.gravity(masses, softening, G=0.7)(pos)  # (B, N, 2)
        assert (f.sum(-2).abs() < 1e-14 * f.abs().sum(-2)).all()  # third law
    # the pull on one body from another at distance r is G m / r² along the line joining them
    m = torch.tensor([3.0, 0.5], dtype=F64)
    r, unit, big_g = 2.0, torch.tensor([0.6, 0.8], dtype=F64), 2.0
    pos = torch.stack([torch.zeros(2, dtype=F64), r * unit])
    a = nbody.gravity(m, 0.0, G=big_g)(pos)
    torch.testing.assert_close(a, torch.stack([big_g * m[1] / r**2 * unit,
                                               -big_g * m[0] / r**2 * unit]))
    eps = 0.5
    a = nbody.gravity(m, eps, G=big_g)(pos)
    torch.testing.assert_close(a[0], big_g * m[1] * r / (r**2 + eps**2) ** 1.5 * unit)
    # leading batch dims with per-system masses are independent systems
    masses = 0.1 + torch.rand(2, 3, 4, generator=gen, dtype=F64)
    pos = torch.randn(2, 3, 4, 2, generator=gen, dtype=F64)
    batched = nbody.gravity(masses, 0.1)(pos)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(batched[i, j], nbody.gravity(masses[i, j], 0.1)(pos[i, j]))


def test_sample_prior() -> None:
    n, n_bodies, radius, sigma = 4000, 5, 2.0, 0.3
    masses = torch.tensor([0.5, 1.0, 1.5, 2.0, 3.0], dtype=F64)
    x = nbody.sample_prior(n, n_bodies, masses, _gen(6), radius=radius, velocity_scale=sigma)
    assert x.shape == (n, n_bodies, 4) and x.dtype == F64
    m = masses[:, None]
    assert (m * x[..., :2]).sum(-2).abs().max() < 1e-13  # centre of mass at the origin
    assert nbody.momentum(x, masses).abs().max() < 1e-13
    # translation-invariant checks of the disk: all bodies within 2R of each other, and for iid
    # uniform points E|r_i − r_j|² = 2 E|r|² = R² (the sqrt-radius trick; a naive R·u gives 2R²/3)
    d2 = (x[:, :, None, :2] - x[:, None, :, :2]).square().sum(-1)
    assert d2.max() <= (2 * radius) ** 2
    assert (x[..., :2].norm(dim=-1) <= 2 * radius).all()  # shifted by at most R
    pairs = torch.triu_indices(n_bodies, n_bodies, 1)
    assert abs(d2[:, pairs[0], pairs[1]].mean() / radius**2 - 1) < 0.03
    dv2 = (x[:, :, None, 2:] - x[:, None, :, 2:]).square().sum(-1)
    assert abs(dv2[:, pairs[0], pairs[1]].mean() / (4 * sigma**2) - 1) < 0.03
    # reproducible, seed-dependent, dtype-converted
    torch.testing.assert_close(nbody.sample_prior(3, 4, 1.0, _gen(7)),
                               nbody.sample_prior(3, 4, 1.0, _gen(7)), atol=0, rtol=0)
    assert not torch.equal(nbody.sample_prior(3, 4, 1.0, _gen(7)),
                           nbody.sample_prior(3, 4, 1.0, _gen(8)))
    x32 = nbody.sample_prior(3, 4, 1.0, _gen(7), dtype=torch.float32)
    assert x32.dtype == torch.float32
    assert torch.equal(x32, nbody.sample_prior(3, 4, 1.0, _gen(7)).float())


def test_rollout_is_the_step_plus_velocity_noise() -> None:
    gen = _gen(9)
    b, n, n_steps, dt, g, softening = 64, 5, 10, 0.01, 0.5, 0.1
    masses = torch.rand(n, generator=gen, dtype=F64) + 0.5
    x0 = nbody.sample_prior(b, n, masses, gen)
    traj = nbody.rollout(x0, masses, n_steps, dt, 0.0, gen, softening, substeps=2)
    assert traj.shape == (b, n_steps + 1, n, 4)
    expected = [x0]
    for _ in range(n_steps):
        expected.append(nbody.step(expected[-1], masses, dt, softening, substeps=2))
    torch.testing.assert_close(traj, torch.stack(expected, 1), atol=0, rtol=0)

    traj = nbody.rollout(x0, masses, n_steps, dt, g, gen, softening, substeps=2)
    noise = torch.stack([traj[:, k + 1] - nbody.step(traj[:, k], masses, dt, softening, 2)
                         for k in range(n_steps)])
    assert (noise[..., :2] == 0).all()
    z = noise[..., 2:] / (g * math.sqrt(dt))
    # 6400 standard normals: the std has standard error 1/√(2·6400) ≈ 0.009, the mean 0.0125
    assert abs(z.std().item() - 1) < 0.05
    assert abs(z.mean().item()) < 0.05
    # the noise breaks momentum conservation on purpose: it is the SDE's, not projected
    assert nbody.momentum(traj[:, -1], masses).abs().max() > 1e-3
    torch.testing.assert_close(nbody.rollout(x0, masses, 3, dt, g, _gen(10), softening),
                               nbody.rollout(x0, masses, 3, dt, g, _gen(10), softening))
    x32 = nbody.rollout(x0.float(), masses, 3, dt, g, _gen(10), softening)
    assert x32.dtype == torch.float32
