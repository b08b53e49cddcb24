"""The periodic score network: symmetries it must have, and its input checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from physdiff.nets import PeriodicScoreNet
from physdiff.nets.circular import CircularConv1d, CircularConv2d, circular_pad1d, circular_pad2d


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
    """Circular padding and Fourier multipliers commute with periodic shifts:
    s(roll x) = roll s(x)."""
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
    with pytest.raises(ValueError,
                       match=r"expects states of shape \(B, 1, 8, 8\), got \(2, 1, 16, 16\)"):
        net(torch.zeros(2, 1, 16, 16), torch.zeros(2))


def test_circular_pad_is_torch_padding_and_its_backward_is_the_exact_adjoint() -> None:
    """The lean backward (a fold of the wrapped strips) against finite differences, second
    derivatives included, and its values against F.pad's circular mode, at paddings that wrap
    rows, columns and corners (and more than half a short side)."""
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0),
                    requires_grad=True)
    for ph, pw in ((1, 1), (1, 0), (0, 2), (3, 4)):
        padded = circular_pad2d(x, ph, pw)
        assert torch.equal(padded, F.pad(x, (pw, pw, ph, ph), mode="circular"))
        assert torch.autograd.gradcheck(lambda v, a=ph, b=pw: circular_pad2d(v, a, b), (x,))
        assert torch.autograd.gradgradcheck(
            lambda v, a=ph, b=pw: circular_pad2d(v, a, b).square(), (x,))
    with pytest.raises(ValueError, match="exceeds the grid"):
        circular_pad2d(x, 6, 1)
    line = x[:, :, 0].detach().clone().requires_grad_(True)  # (B, C, N): the 1D padding
    for p in (1, 2, 6):
        assert torch.equal(circular_pad1d(line, p), F.pad(line, (p, p), mode="circular"))
        assert torch.autograd.gradgradcheck(
            lambda v, a=p: circular_pad1d(v, a).square(), (line,))


@pytest.mark.parametrize(("ours_type", "theirs_type", "shape", "kernel"),
                         [(CircularConv2d, nn.Conv2d, (8, 3, 16, 12), 3),
                          (CircularConv1d, nn.Conv1d, (8, 3, 20), 5)])
def test_circular_conv_equals_torch_circular_conv(ours_type: type, theirs_type: type,
                                                  shape: tuple[int, ...], kernel: int) -> None:
    """CircularConv2d and CircularConv1d are drop-ins for nn.Conv2d / nn.Conv1d with
    padding_mode='circular': the same state_dict, bit-identical outputs, and input and weight
    gradients equal to float rounding."""
    torch.manual_seed(0)
    ours = ours_type(3, 4, kernel, padding=kernel // 2)
    theirs = theirs_type(3, 4, kernel, padding=kernel // 2, padding_mode="circular")
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(*shape, requires_grad=True)
    a, b = ours(x), theirs(x)
    assert torch.equal(a, b)
    ga = torch.autograd.grad(a.square().sum(), [x, ours.weight])
    gb = torch.autograd.grad(b.square().sum(), [x, theirs.weight])
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)
