"""The periodic score network: symmetries it must have, and its input checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from physdiff.nets import PeriodicScoreNet


def _random_net(spectral: bool = True) -> PeriodicScoreNet:
    """A network with every weight random (the zero-initialised output layers would make any
    symmetry test pass trivially)."""
    torch.manual_seed(0)
    net = PeriodicScoreNet(1, (12, 12), t_max=1.0, out_scale=3.0, width=8, depth=2, emb=16,
                           spectral=spectral).double()
    for p in net.parameters():
        nn.init.normal_(p, std=0.3)
    return net


def test_output_is_translation_equivariant_on_the_torus() -> None:
    """Circular padding and Fourier multipliers commute with periodic shifts: s(roll x) = roll s(x)."""
    for spectral in (False, True):
        net = _random_net(spectral)
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(3, 1, 12, 12, dtype=torch.float64, generator=gen)
        t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
        out = net(x, t)
        assert out.abs().max() > 1e-2
        shifted = net(torch.roll(x, (5, -3), dims=(-2, -1)), t)
        torch.testing.assert_close(shifted, torch.roll(out, (5, -3), dims=(-2, -1)))


def test_output_depends_on_time_and_is_scaled() -> None:
    net = _random_net()
    x = torch.randn(2, 1, 12, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    early, late = net(x, torch.full((2,), 0.1, dtype=torch.float64)), net(
        x, torch.full((2,), 0.9, dtype=torch.float64))
    assert (early - late).abs().max() > 1e-3 * early.abs().max()
    # out_scale multiplies the whole output (the preconditioning 1 / (g √dt))
    net.out_scale.fill_(6.0)
    torch.testing.assert_close(net(x, torch.full((2,), 0.1, dtype=torch.float64)), 2 * early)


def test_fresh_network_outputs_zero_score() -> None:
    """Zero-initialised output layers: training starts from the physics-only reverse drift."""
    net = PeriodicScoreNet(1, (8, 8), t_max=1.0, out_scale=10.0, width=4, depth=1)
    assert net(torch.randn(2, 1, 8, 8), torch.rand(2)).abs().max() == 0


def test_wrong_state_shape_is_a_clear_error() -> None:
    net = PeriodicScoreNet(1, (8, 8), t_max=1.0, out_scale=1.0, width=4, depth=1)
    with pytest.raises(ValueError, match=r"expects states of shape \(B, 1, 8, 8\), got \(2, 1, 16, 16\)"):
        net(torch.zeros(2, 1, 16, 16), torch.zeros(2))
