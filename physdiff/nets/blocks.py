"""Building blocks shared by the score networks: a time embedding and a FiLM residual block."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physdiff.nets.circular import CircularConv2d

__all__ = ["FiLMBlock", "TimeEmbedding"]


class TimeEmbedding(nn.Module):
    """t ∈ [0, T] -> (B, width): sinusoidal features of t / T followed by a small MLP."""

    def __init__(self, width: int, t_max: float, n_freq: int = 16) -> None:
        super().__init__()
        self.t_max = t_max
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(n_freq) / 4, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * n_freq + 1, width), nn.SiLU(),
                                 nn.Linear(width, width))

    def forward(self, t: Tensor) -> Tensor:
        tau = (t / self.t_max)[:, None]
        angles = tau * self.freqs.to(t)
        return self.mlp(torch.cat([tau, angles.sin(), angles.cos()], dim=1))


class FiLMBlock(nn.Module):
    """Residual block h + conv2(silu(conv1(silu(h)) · (1 + a) + b)), with (a, b) = FiLM(e).

    Two 3×3 convolutions; `padding_mode` 'circular' for periodic fields, 'zeros' for bounded
    grids (walls). Shapes: h (B, W, H', W'), e (B, emb) -> (B, W, H', W').
    """

    def __init__(self, width: int, emb: int, padding_mode: str = "zeros") -> None:
        super().__init__()
        def conv() -> nn.Conv2d:
            if padding_mode == "circular":  # same layer, leaner backward (nets/circular.py)
                return CircularConv2d(width, width, 3, padding=1)
            return nn.Conv2d(width, width, 3, padding=1, padding_mode=padding_mode)

        self.conv1, self.conv2 = conv(), conv()
        self.film = nn.Linear(emb, 2 * width)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        y = self.conv1(F.silu(h)) * (1 + scale) + shift
        return h + self.conv2(F.silu(y))
