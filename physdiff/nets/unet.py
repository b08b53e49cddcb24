"""A score network for fields on a bounded (non-periodic) grid, with conditioning channels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physdiff.nets.blocks import FiLMBlock, TimeEmbedding
from physdiff.sde import expand_like

__all__ = ["GridScoreNet"]


class GridScoreNet(nn.Module):
    """Score s_θ(x, t; c) of fields on a bounded grid, given per-sample condition fields c.

    A three-level U-Net (full, ½ and ¼ resolution; zero padding, so walls are walls) whose input
    is the state, the condition channels (e.g. the obstacle mask) and t / T as an extra channel
    (docs/method.md §3); every block is FiLM-conditioned on an embedding of t. The output is
    multiplied by a fixed `out_scale` (use 1 / (g √dt), as in `PeriodicScoreNet`) and, when the
    condition's first channel is a solid mask, by (1 − mask): no score inside obstacles, where
    the state carries no noise.

    Shapes: x (B, C, H, W), t (B,), condition (B, C_c, H, W) -> (B, C, H, W); H and W divisible
    by 4.
    """

    def __init__(self, channels: int, cond_channels: int, size: tuple[int, int], t_max: float,
                 out_scale: float, width: int = 32, depth: int = 1, emb: int = 64,
                 mask_output: bool = True) -> None:
        super().__init__()
        if size[0] % 4 or size[1] % 4:
            raise ValueError(f"GridScoreNet: grid {size} must be divisible by 4")
        self.channels, self.cond_channels, self.size = channels, cond_channels, tuple(size)
        self.t_max, self.mask_output = t_max, mask_output
        self.register_buffer("out_scale", torch.tensor(float(out_scale)))
        self.embed = TimeEmbedding(emb, t_max)
        w1, w2 = width, 2 * width
        self.inp = nn.Conv2d(channels + cond_channels + 1, w1, 3, padding=1)
        self.enc1 = FiLMBlock(w1, emb)
        self.down1 = nn.Conv2d(w1, w2, 3, stride=2, padding=1)
        self.enc2 = FiLMBlock(w2, emb)
        self.down2 = nn.Conv2d(w2, w2, 3, stride=2, padding=1)
        self.mid = nn.ModuleList(FiLMBlock(w2, emb) for _ in range(depth))
        self.up2 = nn.Conv2d(2 * w2, w2, 3, padding=1)
        self.dec2 = FiLMBlock(w2, emb)
        self.up1 = nn.Conv2d(w2 + w1, w1, 3, padding=1)
        self.dec1 = FiLMBlock(w1, emb)
        self.out = nn.Conv2d(w1, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor, t: Tensor, condition: Tensor) -> Tensor:
        expected = (self.channels, *self.size)
        if x.shape[1:] != expected or condition.shape != (x.shape[0], self.cond_channels,
                                                          *self.size):
            raise ValueError(f"score network expects states (B, {', '.join(map(str, expected))})"
                             f" and conditions (B, {self.cond_channels}, {self.size[0]}, "
                             f"{self.size[1]}), got {tuple(x.shape)} and "
                             f"{tuple(condition.shape)}")
        e = self.embed(t)
        tau = expand_like(t / self.t_max, x).expand_as(x[:, :1])
        h1 = self.enc1(self.inp(torch.cat([x, condition.to(x), tau], dim=1)), e)
        h2 = self.enc2(self.down1(F.silu(h1)), e)
        h = self.down2(F.silu(h2))
        for block in self.mid:
            h = block(h, e)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.dec2(self.up2(torch.cat([h, h2], dim=1)), e)
        h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        h = self.dec1(self.up1(torch.cat([h, h1], dim=1)), e)
        y = self.out(F.silu(h)) * self.out_scale
        if self.mask_output:
            y = y * (1 - condition[:, :1].to(y))
        return y
