"""Score networks: nn.Modules whose output is the score ∇log p_t itself (docs/method.md §3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from physdiff.nets.blocks import FiLMBlock, TimeEmbedding
from physdiff.nets.circular import CircularConv2d
from physdiff.sde import expand_like

__all__ = ["PeriodicScoreNet"]


class PeriodicScoreNet(nn.Module):
    """Score of time-dependent fields on a periodic grid, s_θ(x, t) ≈ ∇log p_t(x).

    Two branches, summed:
    - a residual CNN with circular padding, FiLM-conditioned on t, with t / T also fed as an
      extra input channel (docs/method.md §3) for the non-linear part;
    - a spectral branch, a per-Fourier-mode complex multiplier produced from t (one Fourier layer,
      Li et al. 2021, arXiv:2010.08895). The score of a stationary Gaussian field is exactly such
      a multiplier, so linear-Gaussian physics is representable without a huge receptive field.

    The output is multiplied by a fixed `out_scale` (use 1 / (g √dt)): the score of a one-step
    reverse kernel is O(1 / (g √dt)), so the last layers stay O(1) (output preconditioning, as
    in Karras et al. 2022). The module's output is the score itself.

    Shapes: x (B, C, H, W), t (B,) -> (B, C, H, W). H and W are fixed at construction.

    On the CPU a large batch is evaluated `chunk` states at a time: the activations of 32
    states at 32² and width 16 (2 MiB a layer) stay in cache, which made the forward pass about
    3× faster at batch 512 on one thread (benchmarks/heat_sampler_speed.py). When the batch is
    a multiple of `chunk` (batch 512) the output is bit-identical to the whole batch at once; a
    smaller last chunk may round the time embedding's matrix products differently (~1e-7
    relative; tests/test_sampler_fast_paths.py). `chunk = None` evaluates the batch at once.
    """

    chunk: int | None = 32

    def __init__(self, channels: int, size: tuple[int, int], t_max: float, out_scale: float,
                 width: int = 32, depth: int = 4, emb: int = 64, spectral: bool = True) -> None:
        super().__init__()
        self.channels, self.size = channels, tuple(size)
        self.register_buffer("out_scale", torch.tensor(float(out_scale)))
        self.embed = TimeEmbedding(emb, t_max)
        self.t_max = t_max
        self.inp = CircularConv2d(channels + 1, width, 3, padding=1)
        self.blocks = nn.ModuleList(FiLMBlock(width, emb, "circular") for _ in range(depth))
        self.out = CircularConv2d(width, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.spectral = None
        if spectral:
            h, w = self.size
            self.spectral = nn.Linear(emb, 2 * channels * h * (w // 2 + 1))
            nn.init.zeros_(self.spectral.weight)
            nn.init.zeros_(self.spectral.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if x.shape[1:] != (self.channels, *self.size):
            raise ValueError(
                f"score network expects states of shape (B, {self.channels}, {self.size[0]}, "
                f"{self.size[1]}), got {tuple(x.shape)}"
            )
        if self.chunk is not None and x.device.type == "cpu" and x.shape[0] > self.chunk:
            return torch.cat([self._forward(xc, tc) for xc, tc in
                              zip(x.split(self.chunk), t.split(self.chunk), strict=True)])
        return self._forward(x, t)

    def _forward(self, x: Tensor, t: Tensor) -> Tensor:
        e = self.embed(t)
        h = self.inp(torch.cat([x, expand_like(t / self.t_max, x).expand_as(x[:, :1])], dim=1))
        for block in self.blocks:
            h = block(h, e)
        y = self.out(torch.nn.functional.silu(h))
        if self.spectral is not None:
            hh, ww = self.size
            weights = self.spectral(e).reshape(-1, self.channels, hh, ww // 2 + 1, 2)
            multiplier = torch.view_as_complex(weights.contiguous())
            x_hat = torch.fft.rfft2(x)
            y = y + torch.fft.irfft2(multiplier * x_hat, s=(hh, ww))
        return y * self.out_scale
