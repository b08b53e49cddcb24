"""Simulation-based calibration (SBC) and coverage of posterior samples that are flat vectors.

Symbols: M cases (truth, observation) drawn from the joint prior, n posterior samples per case,
D coordinates, r rank of a true coordinate among its n samples (0..n). For a calibrated sampler
the truth is one more exchangeable draw of the posterior, so r is uniform on 0..n whatever the
posterior (Talts et al. 2018). Too narrow samples give a U-shaped rank histogram, too wide ones
a ∩ shape, biased ones a skewed one.

References:
    Talts et al. (2018), Validating Bayesian Inference Algorithms with Simulation-Based
    Calibration, arXiv:1804.06788
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "chi2_sf",
    "chi2_uniformity",
    "kolmogorov_sf",
    "ks_uniformity",
    "rank_coverage",
    "rank_histogram",
    "sbc_ranks",
]


def sbc_ranks(samples: Tensor, truth: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Rank r = #{samples < truth} of each true coordinate among its n samples, r ∈ 0..n.

    Ties (samples exactly equal to the truth, e.g. from a sampler that collapses or a discrete
    posterior) would pile up at one rank; instead, with t tied samples, r gets a uniform random
    extra 0..t drawn with `generator`, as if the tied values had been perturbed infinitesimally.

    Arguments:
        samples: Posterior samples, shape (M, n, D).
        truth: True values, shape (M, D).
        generator: Randomness for the tie-breaking.

    Returns:
        Ranks, shape (M, D), int64.

    References:
        Talts et al. (2018), arXiv:1804.06788, Algorithm 1 and Theorem 1
    """
    if samples.ndim != 3 or truth.shape != (samples.shape[0], samples.shape[2]):
        raise ValueError(f"samples {tuple(samples.shape)} and truth {tuple(truth.shape)}: "
                         "expected (M, n, D) and (M, D)")
    below = (samples < truth[:, None]).sum(1)
    ties = (samples == truth[:, None]).sum(1)
    u = torch.rand(truth.shape, generator=generator, dtype=torch.float64, device=truth.device)
    return below + (u * (ties + 1)).long()  # uniform on 0..ties


def _check_ranks(ranks: Tensor, n_samples: int) -> None:
    if ranks.numel() == 0 or ranks.min() < 0 or ranks.max() > n_samples:
        raise ValueError(f"ranks must be non-empty and in 0..{n_samples}")


def rank_histogram(ranks: Tensor, n_samples: int, n_bins: int) -> Tensor:
    """Counts of ranks in n_bins equal bins of the n + 1 rank values 0..n.

    Each bin holds (n + 1) / n_bins rank values, so a calibrated sampler gives a flat histogram
    with expectation ranks.numel() / n_bins in every bin.

    Arguments:
        ranks: Ranks in 0..n_samples, any shape (all entries counted).
        n_samples: n, the number of posterior samples per case.
        n_bins: Number of bins, a divisor of n_samples + 1 (ValueError otherwise).

    Returns:
        Counts, shape (n_bins,), int64.

    References:
        Talts et al. (2018), arXiv:1804.06788, Section 4
    """
    if n_bins < 1 or (n_samples + 1) % n_bins:
        raise ValueError(f"n_bins = {n_bins} does not divide n_samples + 1 = {n_samples + 1}")
    _check_ranks(ranks, n_samples)
    width = (n_samples + 1) // n_bins
    return torch.bincount(ranks.flatten().long() // width, minlength=n_bins)


def chi2_sf(x: float, dof: int) -> float:
    """χ² survival function P(X ≥ x) = Q(dof / 2, x / 2), the regularised upper incomplete Γ."""
    a, z = torch.tensor([dof / 2, x / 2], dtype=torch.float64)
    return torch.special.gammaincc(a, z).item()


def chi2_uniformity(ranks: Tensor, n_samples: int, n_bins: int | None = None
                    ) -> tuple[float, float]:
    """Pearson χ² = Σ_b (c_b − e)² / e of the rank histogram c against the flat e = m / n_bins,
    m = ranks.numel(), and its p-value with n_bins − 1 degrees of freedom.

    The p-value assumes the m ranks are independent. The D coordinates of one case share the
    observation (and usually the posterior's correlations), so their ranks are correlated and
    pooling them overstates the effective sample size: pass one coordinate (or one scalar
    summary) per case, or read the pooled p-value as conservative (too small, i.e. it rejects a
    calibrated sampler too often).

    Arguments:
        ranks: Ranks in 0..n_samples, any shape, e.g. (M,) or (M, D).
        n_samples: n, the number of posterior samples per case.
        n_bins: A divisor of n_samples + 1, at least 2. Default: the largest divisor that is
            ≤ max(2, m / 5) and ≤ 20, so every expected count is ≥ 5 where possible.

    Returns:
        (statistic, p-value).

    References:
        Talts et al. (2018), arXiv:1804.06788, Section 4.1
    """
    m = ranks.numel()
    if n_bins is None:
        cap = min(20, max(2, m // 5))
        n_bins = max(d for d in range(1, cap + 1) if (n_samples + 1) % d == 0)
        if n_bins < 2:
            raise ValueError(f"n_samples + 1 = {n_samples + 1} has no divisor in 2..{cap}; "
                             "pass n_bins or choose n_samples = 19, 99, ...")
    if n_bins < 2:
        raise ValueError("n_bins must be at least 2")
    counts = rank_histogram(ranks, n_samples, n_bins).double()
    expected = m / n_bins
    statistic = ((counts - expected).square() / expected).sum().item()
    return statistic, chi2_sf(statistic, n_bins - 1)


def kolmogorov_sf(lam: float) -> float:
    """Kolmogorov survival function P(K > λ) = 2 Σ_{k≥1} (−1)^{k−1} exp(−2 k² λ²).

    For λ < 0.2 it returns 1: there P(K ≤ λ) < 1e-12 while the series converges slowly.

    References:
        Press et al. (2007), Numerical Recipes, 3rd ed., §14.3.3
    """
    if lam < 0.2:
        return 1.0
    k = torch.arange(1, 101, dtype=torch.float64)  # the terms fall below e^-800 by k = 100
    series = 2 * ((-1) ** (k - 1) * torch.exp(-2 * k**2 * lam**2)).sum()
    return series.clamp(0.0, 1.0).item()


def ks_uniformity(ranks: Tensor, n_samples: int, generator: torch.Generator | None = None
                  ) -> tuple[float, float]:
    """Kolmogorov–Smirnov distance of the randomised PIT values u = (r + U(0, 1)) / (n + 1) from
    U(0, 1), and its asymptotic p-value P(K > (√m + 0.12 + 0.11 / √m) · D_KS) for m = ranks.numel().

    If r is uniform on 0..n, u is exactly U(0, 1), so the continuous KS test applies to the
    discrete ranks. The independence caveat of `chi2_uniformity` holds here too.

    Arguments:
        ranks: Ranks in 0..n_samples, any shape.
        n_samples: n, the number of posterior samples per case.
        generator: Randomness for U(0, 1).

    Returns:
        (D_KS, p-value).

    References:
        Czado, Gneiting & Held (2009), Predictive Model Assessment for Count Data, Biometrics 65
        Press et al. (2007), Numerical Recipes, 3rd ed., §14.3.3 (λ correction of Stephens 1970)
    """
    _check_ranks(ranks, n_samples)
    m = ranks.numel()
    jitter = torch.rand(m, generator=generator, dtype=torch.float64, device=ranks.device)
    u = ((ranks.flatten().double() + jitter) / (n_samples + 1)).sort().values
    i = torch.arange(1, m + 1, dtype=torch.float64, device=ranks.device)
    d = torch.maximum(i / m - u, u - (i - 1) / m).max().item()
    return d, kolmogorov_sf((m**0.5 + 0.12 + 0.11 / m**0.5) * d)


def rank_coverage(ranks: Tensor, n_samples: int, level: float) -> tuple[float, float]:
    """Coverage of the order-statistic interval whose nominal level is exact: (coverage, nominal).

    The truth lies between order statistics x_(r) and x_(r+1) when its rank is r, and for a
    calibrated sampler every r in 0..n has probability 1 / (n + 1). The central set of
    k = round(level (n + 1)) ranks, lo..lo + k − 1 with lo = (n + 1 − k) // 2, is the interval
    [x_(lo), x_(lo+k)], and its nominal coverage is exactly k / (n + 1) (0.9 and 0.5 for n = 19).

    Arguments:
        ranks: SBC ranks (`sbc_ranks`), any shape, values in 0..n_samples.
    """
    _check_ranks(ranks, n_samples)
    k = round(level * (n_samples + 1))
    lo = (n_samples + 1 - k) // 2
    inside = (ranks >= lo) & (ranks < lo + k)
    return inside.double().mean().item(), k / (n_samples + 1)
