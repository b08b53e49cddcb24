"""The score network of the Burgers plug-in: a small periodic 1D CNN, FiLM-conditioned on t, plus
an optional per-Fourier-mode multiplier (the 1D analogue of physdiff.nets.PeriodicScoreNet)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from physdiff.nets import CircularConv1d, TimeEmbedding
from physdiff.sde import expand_like
from torch import Tensor, nn

__all__ = ["FiLMBlock1d", "PeriodicScoreNet1d"]


class FiLMBlock1d(nn.Module):
    """Residual block h + conv2(silu(conv1(silu(h)) · (1 + a) + b)), (a, b) = FiLM(e), with
    circular padding (physdiff's CircularConv1d: nn.Conv1d's values, a leaner backward).
    Shapes: h (B, W, N), e (B, emb) -> (B, W, N)."""

    def __init__(self, width: int, emb: int, kernel: int = 5) -> None:
        super().__init__()
        pad = kernel // 2
        self.conv1 = CircularConv1d(width, width, kernel, padding=pad)
        self.conv2 = CircularConv1d(width, width, kernel, padding=pad)
        self.film = nn.Linear(emb, 2 * width)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        scale, shift = self.film(e)[:, :, None].chunk(2, dim=1)
        y = self.conv1(F.silu(h)) * (1 + scale) + shift
        return h + self.conv2(F.silu(y))


class PeriodicScoreNet1d(nn.Module):
    """Score of time-dependent fields on a periodic 1D grid, s_θ(x, t) ≈ ∇log p_t(x).

    Two branches, summed, then multiplied by a fixed `out_scale` (use 1 / (g √dt), the size of a
    one-step score; docs/method.md §3):
    - a residual CNN (kernel 5, circular padding) that sees x and t / T as an extra channel and
      is FiLM-conditioned on a time embedding: the non-linear part (advection);
    - with `spectral`, a complex multiplier per Fourier mode produced from the time embedding:
      the linear part. The physics drift 2x − S(x) multiplies high modes by up to 2 per reverse
      step; the score must undo that, and a per-mode multiplier does it without a wide
      receptive field.
    Both output layers start at zero, so the untrained score is 0.

    Shapes: x (B, C, N), t (B,) -> (B, C, N); C and N are fixed at construction.
    """

    def __init__(self, channels: int, points: int, t_max: float, out_scale: float,
                 width: int = 32, depth: int = 2, emb: int = 64, spectral: bool = True,
                 kernel: int = 5) -> None:
        super().__init__()
        self.channels, self.points, self.t_max = channels, points, t_max
        self.register_buffer("out_scale", torch.tensor(float(out_scale)))
        pad = kernel // 2
        self.embed = TimeEmbedding(emb, t_max)
        self.inp = CircularConv1d(channels + 1, width, kernel, padding=pad)
        self.blocks = nn.ModuleList(FiLMBlock1d(width, emb, kernel) for _ in range(depth))
        self.out = CircularConv1d(width, channels, kernel, padding=pad)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.spectral = None
        if spectral:
            self.spectral = nn.Linear(emb, 2 * channels * (points // 2 + 1))
            nn.init.zeros_(self.spectral.weight)
            nn.init.zeros_(self.spectral.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.shape[1:] != (self.channels, self.points):
            raise ValueError(f"score network expects states of shape (B, {self.channels}, "
                             f"{self.points}), got {tuple(x.shape)}")
        e = self.embed(t)
        tau = expand_like(t / self.t_max, x).expand_as(x[:, :1])
        h = self.inp(torch.cat([x, tau], dim=1))
        for block in self.blocks:
            h = block(h, e)
        y = self.out(F.silu(h))
        if self.spectral is not None:
            weights = self.spectral(e).reshape(-1, self.channels, self.points // 2 + 1, 2)
            multiplier = torch.view_as_complex(weights.contiguous())
            y = y + torch.fft.irfft(multiplier * torch.fft.rfft(x), n=self.points)
        return y * self.out_scale
