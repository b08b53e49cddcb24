"""Accuracy and calibration metrics for posterior samples of fields (docs/method.md §7, §8).

Spectral quantities use integer wavenumbers of the unnormalised `torch.fft.fft2`; radial bin r
holds the modes with round(|k|) = r.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "BANDS",
    "band_masks",
    "band_pass",
    "band_variance_ratio",
    "bootstrap_ratios",
    "distance_over_spread",
    "fourier_components",
    "interval_coverage",
    "low_pass",
    "mse",
    "radial_amplitude",
    "spectral_error",
]

BANDS = ((0.0, 2.0), (2.0, 4.0), (4.0, 8.0), (8.0, 16.0))  # the last band includes |k| = 16


def mse(x: Tensor, y: Tensor) -> float:
    """Mean squared error over every element."""
    return (x.double() - y.double()).square().mean().item()


def _abs_k(h: int, w: int, device: torch.device | None = None) -> Tensor:
    ky = torch.fft.fftfreq(h, 1 / h, dtype=torch.float64, device=device)
    kx = torch.fft.fftfreq(w, 1 / w, dtype=torch.float64, device=device)
    return torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)


def radial_amplitude(x: Tensor, n_bins: int) -> Tensor:
    """Radially averaged |x̂| in bins r = 0..n_bins−1 (round(|k|) = r).

    Arguments:
        x: Fields, shape (..., H, W).

    Returns:
        Shape (..., n_bins), float64.
    """
    h, w = x.shape[-2:]
    r = _abs_k(h, w, x.device).round().long().flatten()
    amp = torch.fft.fft2(x.double()).abs().flatten(-2)
    keep = r < n_bins
    sums = amp.new_zeros((*amp.shape[:-1], n_bins))
    sums.index_add_(-1, r[keep], amp[..., keep])
    counts = torch.bincount(r[keep], minlength=n_bins).clamp_min(1)
    return sums / counts


def spectral_error(x: Tensor, reference: Tensor, bins: range = range(1, 11)) -> float:
    """Mean |log A_x(r) − log A_ref(r)| over radial bins r (default 1..10) and the batch, with A
    the radially averaged |FFT| (`radial_amplitude`). x and reference broadcast, (..., H, W)."""
    a = radial_amplitude(x, bins.stop)[..., bins.start:]
    b = radial_amplitude(reference, bins.stop)[..., bins.start:]
    return (a.clamp_min(1e-30).log() - b.clamp_min(1e-30).log()).abs().mean().item()


def low_pass(x: Tensor, k_max: float) -> Tensor:
    """The part of fields x (..., H, W) in the Fourier modes with |k| < k_max (the mean, k = 0,
    included); x − low_pass(x, k_max) is the rest. Periodic in both axes, as the FFT is."""
    h, w = x.shape[-2:]
    keep = _abs_k(h, w, x.device) < k_max
    return torch.fft.ifft2(torch.fft.fft2(x.double()) * keep).real.to(x.dtype)


def band_pass(x: Tensor, lo: float, hi: float | None = None) -> Tensor:
    """The part of fields x (..., H, W) in the Fourier modes with lo ≤ |k| < hi (no upper bound
    for hi None); bands that meet at their bounds add up to x."""
    upper = x if hi is None else low_pass(x, hi)
    return upper - low_pass(x, lo)


def band_masks(h: int, w: int, bands: tuple[tuple[float, float], ...] = BANDS) -> list[Tensor]:
    """Boolean masks (H, W) of the modes with lo ≤ |k| < hi (≤ hi for the last band), k ≠ 0."""
    k = _abs_k(h, w)
    masks = []
    for i, (lo, hi) in enumerate(bands):
        upper = k <= hi if i == len(bands) - 1 else k < hi
        masks.append((k >= lo) & upper & (k > 0))
    return masks


def band_variance_ratio(samples: Tensor, variance: Tensor, mask: Tensor) -> float:
    """Σ_band sample variance of x̂ / Σ_band exact variance, pooled over observations.

    Arguments:
        samples: Posterior samples, shape (B, n, H, W), n ≥ 2.
        variance: Exact posterior E|x̂ − m̂|², shape (H, W).
        mask: Band, shape (H, W).
    """
    x_hat = torch.fft.fft2(samples.double())
    sample_var = (x_hat - x_hat.mean(1, keepdim=True)).abs().square().sum(1) / (samples.shape[1] - 1)
    return (sample_var[:, mask].sum() / (samples.shape[0] * variance[mask].sum())).item()


def fourier_components(x: Tensor, mask: Tensor) -> Tensor:
    """Real and imaginary parts of x̂ on the modes of `mask` (imaginary parts of self-conjugate
    modes, always zero, left out): (..., H, W) -> (..., D)."""
    h, w = x.shape[-2:]
    x_hat = torch.fft.fft2(x.double())
    ky = torch.arange(h, device=x.device)[:, None]
    kx = torch.arange(w, device=x.device)[None, :]
    self_conjugate = ((2 * ky) % h == 0) & ((2 * kx) % w == 0)
    mask = mask.to(x.device)
    return torch.cat([x_hat.real[..., mask], x_hat.imag[..., mask & ~self_conjugate]], dim=-1)


def interval_coverage(samples: Tensor, truth: Tensor, level: float = 0.9) -> float:
    """Fraction of true components inside the central `level` interval of the samples
    (empirical quantiles, linear interpolation).

    Arguments:
        samples: Shape (B, n, D).
        truth: Shape (B, D).
    """
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=samples.dtype,
                     device=samples.device)
    lo, hi = torch.quantile(samples, q, dim=1)
    return ((truth >= lo) & (truth <= hi)).double().mean().item()


def distance_over_spread(point: Tensor, samples: Tensor) -> Tensor:
    """Per case, how far a reconstruction lies from the posterior samples:
    ‖point − x̄‖² over the samples' spread Σ_j ‖x_j − x̄‖² / (n − 1), x̄ their mean.

    For a point drawn from the same posterior as the n samples its expectation is 1 + 1/n
    (the spread estimates tr Σ without bias, and E‖x − x̄‖² = (1 + 1/n) tr Σ); a reconstruction
    between the samples is of that order, one that diverged is orders of magnitude above.

    Arguments:
        point: Shape (M, *state).
        samples: Shape (M, n, *state), n >= 2.

    Returns:
        Shape (M,), float64.
    """
    n = samples.shape[1]
    if n < 2:
        raise ValueError(f"distance_over_spread needs at least 2 samples per case, got {n}")
    s = samples.flatten(2).double()
    mean = s.mean(1)
    spread = (s - mean[:, None]).square().sum((1, 2)) / (n - 1)
    return (point.flatten(1).double() - mean).square().sum(1) / spread


def bootstrap_ratios(a: Tensor, b: Tensor, draws: int, seed: int = 0) -> Tensor:
    """Σ a / Σ b over `draws` resamplings (with replacement) of the cases, paired: one draw of
    case indices serves both. a, b: one number per case, shape (N,); returns (draws,) float64,
    whose spread or quantiles tell how much the ratio of means depends on which cases came."""
    a, b = a.double(), b.double()
    idx = torch.randint(0, a.shape[0], (draws, a.shape[0]),
                        generator=torch.Generator().manual_seed(seed))
    return a[idx].sum(1) / b[idx].sum(1)
