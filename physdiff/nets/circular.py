"""Periodic (circular) padding with a lean backward pass, and the 1D and 2D convolutions that
use it.

`F.pad(x, mode="circular")` is cheap forward, but its backward goes through one slice-backward
per wrapped strip, each of which fills a zero tensor of the padded size and copies into it:
profiling a heat-32 training update (width 16, batch 16, one thread) put about a fifth of its
time in those fills and copies. The adjoint of circular padding is a fold: the interior of the
incoming gradient plus its wrapped strips added onto the opposite edges, which costs one copy of
the interior and a few small additions (`_fold`).

The backward is written in differentiable torch operations, so second derivatives (create_graph)
work too. `CircularConv2d` is a drop-in for `nn.Conv2d(..., padding_mode="circular")`, and
`CircularConv1d` for `nn.Conv1d(...)` likewise (its padding is the 2D one on a grid of one row):
same constructor, same parameters and state_dict keys, bit-identical outputs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CircularConv1d", "CircularConv2d", "circular_pad1d", "circular_pad2d"]


def _fold(grad: Tensor, ph: int, pw: int) -> Tensor:
    """The adjoint of circular padding by (ph, pw) over the last two dims."""
    h, w = grad.shape[-2] - 2 * ph, grad.shape[-1] - 2 * pw
    out = grad[..., ph:ph + h, pw:pw + w].clone()
    if ph:
        out[..., h - ph:, :] += grad[..., :ph, pw:pw + w]
        out[..., :ph, :] += grad[..., ph + h:, pw:pw + w]
    if pw:
        out[..., :, w - pw:] += grad[..., ph:ph + h, :pw]
        out[..., :, :pw] += grad[..., ph:ph + h, pw + w:]
    if ph and pw:  # the corners wrap in both directions
        out[..., h - ph:, w - pw:] += grad[..., :ph, :pw]
        out[..., h - ph:, :pw] += grad[..., :ph, pw + w:]
        out[..., :ph, w - pw:] += grad[..., ph + h:, :pw]
        out[..., :ph, :pw] += grad[..., ph + h:, pw + w:]
    return out


class _CircularPad2d(torch.autograd.Function):
    @staticmethod
    def forward(x: Tensor, ph: int, pw: int) -> Tensor:  # type: ignore[override]
        return F.pad(x, (pw, pw, ph, ph), mode="circular")

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        ctx.ph, ctx.pw = inputs[1], inputs[2]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        return _fold(grad, ctx.ph, ctx.pw), None, None


def circular_pad2d(x: Tensor, ph: int, pw: int) -> Tensor:
    """Periodic padding of the last two dims of x (B, C, H, W) by ph rows and pw columns on each
    side; the same values as F.pad(x, (pw, pw, ph, ph), mode='circular')."""
    if not 0 <= ph <= x.shape[-2] or not 0 <= pw <= x.shape[-1]:
        raise ValueError(f"circular padding ({ph}, {pw}) exceeds the grid {tuple(x.shape[-2:])}")
    return _CircularPad2d.apply(x, ph, pw)


def circular_pad1d(x: Tensor, p: int) -> Tensor:
    """Periodic padding of the last dim of x (B, C, N) by p on each side; the same values as
    F.pad(x, (p, p), mode='circular')."""
    return circular_pad2d(x.unsqueeze(-2), 0, p).squeeze(-2)


class _CircularConv:
    """What the periodic convolutions share: padding_mode 'circular' implied (so nn.ConvNd's
    own checks, repr and state stay), and the padding done by `_pad` before a padding-free
    `_conv`."""

    _pad: Callable[..., Tensor]
    _conv: Callable[..., Tensor]

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 **kwargs: Any) -> None:
        super().__init__(in_channels, out_channels, kernel_size,  # type: ignore[call-arg]
                         padding=padding, padding_mode="circular", **kwargs)

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        c: Any = self  # an nn.ConvNd
        return self._conv(self._pad(x, *c.padding), weight, bias, c.stride, 0, c.dilation,
                          c.groups)


class CircularConv2d(_CircularConv, nn.Conv2d):
    """nn.Conv2d with periodic padding (padding_mode 'circular' is implied), whose backward
    folds the gradient instead of filling padded-size zero tensors (`circular_pad2d`)."""

    _pad = staticmethod(circular_pad2d)
    _conv = staticmethod(F.conv2d)


class CircularConv1d(_CircularConv, nn.Conv1d):
    """nn.Conv1d with periodic padding (padding_mode 'circular' is implied), whose backward
    folds the gradient instead of filling padded-size zero tensors (`circular_pad1d`)."""

    _pad = staticmethod(circular_pad1d)
    _conv = staticmethod(F.conv1d)
