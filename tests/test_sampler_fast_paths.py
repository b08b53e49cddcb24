"""The heat sampler's fast paths give the old results: the periodic score network evaluated in
chunks is bit-identical to the whole batch, and the half-plane spectral noise equals
Re ifft2(√S fft2(z) / √(HW)) to float rounding."""

from __future__ import annotations

import math

import torch

from physdiff.nets import PeriodicScoreNet
from physdiff.noise import spectral_noise


def _chunked_and_whole(batch: int, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    net = PeriodicScoreNet(1, (8, 8), t_max=1.0, out_scale=3.0, width=4, depth=1)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    x, t = torch.randn(batch, 1, 8, 8), torch.rand(batch)
    net.chunk = chunk
    chunked = net(x, t)
    net.chunk = None
    return chunked, net(x, t)


def test_periodic_net_in_chunks_is_bit_identical_for_whole_chunks() -> None:
    assert torch.equal(*_chunked_and_whole(16, 8))
    torch.testing.assert_close(*_chunked_and_whole(11, 4), rtol=1e-5, atol=1e-4)  # 4 + 4 + 3


def test_spectral_noise_equals_the_full_fft_formula() -> None:
    gen = torch.Generator().manual_seed(0)
    h, w, k = 6, 8, 3
    r = torch.randn(50, k, 1, h, w, generator=gen, dtype=torch.float64)
    spectra = torch.fft.fft2(r).abs().square().mean(0)  # (K, 1, H, W), symmetric up to rounding
    x = torch.zeros(4, 1, h, w)
    for i in range(k):
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        full = torch.fft.ifft2(spectra[k - 1 - i].sqrt() * torch.fft.fft2(z) / math.sqrt(h * w))
        got = spectral_noise(spectra)(x, i, torch.Generator().manual_seed(i))
        assert got.dtype == x.dtype
        torch.testing.assert_close(got, full.real.float(), rtol=1e-5, atol=1e-5)
