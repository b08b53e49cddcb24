"""Networks for sets of bodies: the symmetries and conservation laws they must have by construction."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from physdiff.nets import PairwiseForce, SetScoreNet

MASSES = torch.tensor([1.0, 0.3, 2.5, 0.7, 1.6], dtype=torch.float64)
PERM = torch.tensor([3, 0, 4, 2, 1])


def _randomise(net: nn.Module, seed: int = 0, std: float = 0.3) -> nn.Module:
    """Every weight random: the zero-initialised heads would make symmetry tests pass trivially."""
    torch.manual_seed(seed)
    for p in net.parameters():
        nn.init.normal_(p, std=std)
    return net


def _score_net(masses: Tensor = MASSES, out_mask: Tensor | None = None) -> SetScoreNet:
    net = SetScoreNet(4, masses, t_max=1.0, out_scale=5.0, out_mask=out_mask, width=16, depth=2,
                      heads=4).double()
    return _randomise(net)


def _states(batch: int = 3, n: int = 5, seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, 4, dtype=torch.float64, generator=gen)
    return x, torch.rand(batch, dtype=torch.float64, generator=gen)


def _with_masses(net: nn.Module, masses: Tensor) -> nn.Module:
    net.masses.copy_(masses)
    return net


def test_score_is_permutation_equivariant_over_bodies() -> None:
    """s(x[π], t; m[π]) = s(x, t; m)[π]: bodies are a set, and each mass stays with its body."""
    net = _score_net()
    x, t = _states()
    out = net(x, t)
    assert out.abs().max() > 1e-2
    permuted = _with_masses(_score_net(), MASSES[PERM])
    torch.testing.assert_close(permuted(x[:, PERM], t), out[:, PERM], rtol=0, atol=1e-10)
    # the masses are features: permuting the bodies but not their masses changes the output
    assert (net(x[:, PERM], t) - out[:, PERM]).abs().max() > 1e-4


def test_fresh_score_is_zero_and_mask_zeroes_components_exactly() -> None:
    x, t = _states()
    fresh = SetScoreNet(4, MASSES, t_max=1.0, out_scale=10.0, width=16).double()
    assert fresh(x, t).abs().max() == 0
    # noise on velocities only: zero score on positions, whatever the weights
    out = _score_net(out_mask=torch.tensor([0.0, 0.0, 1.0, 1.0]))(x, t)
    assert (out[..., :2] == 0).all()
    assert (out[..., 2:].abs() > 0).all()


def test_score_depends_on_time() -> None:
    net = _score_net()
    x, _ = _states()
    early = net(x, torch.full((3,), 0.1, dtype=torch.float64))
    late = net(x, torch.full((3,), 0.9, dtype=torch.float64))
    assert (early - late).abs().max() > 1e-3 * early.abs().max()


def test_score_wrong_number_of_bodies_is_a_clear_error() -> None:
    net = SetScoreNet(4, MASSES, t_max=1.0, out_scale=1.0, width=8, depth=1, heads=2)
    with pytest.raises(ValueError, match=r"\(B, 5, 4\) \(5 bodies\), got \(2, 4, 4\)"):
        net(torch.zeros(2, 4, 4), torch.zeros(2))


def _force(masses: Tensor = MASSES, random: bool = True) -> PairwiseForce:
    net = PairwiseForce(masses, width=16, depth=2, softening_init=0.1).double()
    return _randomise(net, std=0.2) if random else net


def _positions(*batch: int, n: int = 5, seed: int = 2) -> Tensor:
    return torch.randn(*batch, n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_force_conserves_momentum_with_unequal_masses() -> None:
    """Pair forces m_i m_j φ(r_ij)(r_j − r_i) cancel in pairs: Σ_i m_i a_i = 0 (Newton's third law)."""
    force = _force()
    a = force(_positions(3))
    momentum = (MASSES[:, None] * a).sum(dim=-2)
    scale = (MASSES[:, None] * a).abs().sum(dim=-2)
    assert scale.min() > 1e-2
    assert (momentum.abs() <= 1e-12 * scale).all()


def test_force_symmetries() -> None:
    """Permutation- and rotation-equivariant, translation-invariant, for any leading batch shape."""
    force = _force()
    pos = _positions(2, 3)
    a = force(pos)
    assert a.abs().max() > 1e-2
    permuted = _with_masses(_force(), MASSES[PERM])
    torch.testing.assert_close(permuted(pos[..., PERM, :]), a[..., PERM, :], rtol=0, atol=1e-10)
    theta = 0.7
    rot = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]],
                       dtype=torch.float64)
    torch.testing.assert_close(force(pos @ rot.T), a @ rot.T, rtol=0, atol=1e-10)
    shift = torch.tensor([3.0, -1.5], dtype=torch.float64)
    torch.testing.assert_close(force(pos + shift), a, rtol=0, atol=1e-10)


def test_fresh_force_is_softened_gravity() -> None:
    """At initialisation a_i = Σ_{j≠i} m_j (r_j − r_i) / (|r_j − r_i|² + ε²)^{3/2}, G = 1."""
    eps = 0.1
    pos = _positions(4)
    ref = torch.zeros_like(pos)
    for i in range(5):
        for j in range(5):
            if i != j:
                d = pos[:, j] - pos[:, i]
                ref[:, i] += MASSES[j] * d / (d.square().sum(-1, keepdim=True) + eps**2) ** 1.5
    torch.testing.assert_close(_force(random=False)(pos), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(_force(random=False).float()(pos.float()), ref.float(), rtol=1e-6,
                               atol=1e-6)


def test_force_gradients_are_finite_even_for_coincident_bodies() -> None:
    """The i = j diagonal, and two bodies at one point, give no NaN in forward or backward."""
    force = _force()
    pos = _positions(2)
    pos[:, 1] = pos[:, 0]
    pos.requires_grad_(True)
    a = force(pos)
    a.square().sum().backward()
    assert torch.isfinite(a).all()
    assert torch.isfinite(pos.grad).all() and pos.grad.abs().max() > 0
    assert all(torch.isfinite(p.grad).all() for p in force.parameters())


def test_force_gradcheck() -> None:
    force = _force(MASSES[:3])
    pos = _positions(2, n=3).requires_grad_(True)
    assert torch.autograd.gradcheck(force, (pos,))


def test_state_dict_round_trip_restores_outputs_and_buffers() -> None:
    """Masses, out_mask and out_scale are persistent buffers: a checkpoint carries the system."""
    x, t = _states()
    net = _score_net(out_mask=torch.tensor([0.0, 0.0, 1.0, 1.0]))
    other = SetScoreNet(4, torch.ones(5), t_max=1.0, out_scale=1.0, width=16).double()
    other.load_state_dict(net.state_dict())
    torch.testing.assert_close(other(x, t), net(x, t), rtol=0, atol=0)

    force, pos = _force(), _positions(3)
    other_force = PairwiseForce(torch.ones(5), width=16, depth=2).double()
    other_force.load_state_dict(force.state_dict())
    torch.testing.assert_close(other_force(pos), force(pos), rtol=0, atol=0)
