"""SBC ranks, uniformity tests and coverage, on a Gaussian toy with an exact posterior."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from physdiff.calibration import (
    chi2_sf,
    chi2_uniformity,
    kolmogorov_sf,
    ks_uniformity,
    rank_coverage,
    rank_histogram,
    sbc_ranks,
)

M, N, D = 2000, 19, 3  # cases, posterior samples per case, coordinates


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _toy(scale: float = 1.0, shift: float = 0.0, seed: int = 0, sigma: float = 0.5
         ) -> tuple[Tensor, Tensor]:
    """θ ~ N(0, I_D), y = θ + σ ε; the posterior is N(y / (1 + σ²), σ² / (1 + σ²)) per
    coordinate. Returns samples (M, N, D) of that posterior with its std × scale and its mean
    + shift · std, and the truth θ (M, D)."""
    g = _gen(seed)
    theta = torch.randn(M, D, generator=g, dtype=torch.float64)
    y = theta + sigma * torch.randn(M, D, generator=g, dtype=torch.float64)
    mean, std = y / (1 + sigma**2), sigma / math.sqrt(1 + sigma**2)
    z = torch.randn(M, N, D, generator=g, dtype=torch.float64)
    return mean[:, None] + std * (shift + scale * z), theta


def _ranks(scale: float = 1.0, shift: float = 0.0) -> Tensor:
    return sbc_ranks(*_toy(scale, shift), generator=_gen(1))


# --- sbc_ranks --------------------------------------------------------------------------------


def test_sbc_ranks_count_the_samples_below() -> None:
    """Hand-counted ranks, per coordinate; a shape mismatch is rejected."""
    samples = torch.tensor([[[1.0, 5.0], [3.0, 4.0], [2.0, 6.0]]])  # (1, 3, 2)
    truth = torch.tensor([[2.5, 7.0]])
    assert sbc_ranks(samples, truth).tolist() == [[2, 3]]
    assert sbc_ranks(samples, torch.tensor([[0.0, 4.5]])).tolist() == [[0, 1]]
    with pytest.raises(ValueError):
        sbc_ranks(samples, truth[:, :1])


def test_sbc_ranks_break_ties_uniformly() -> None:
    """Samples equal to the truth: ranks spread uniformly over 0..n, not all 0; with one sample
    below and two tied (n = 4), ranks 1, 2, 3 are equally likely."""
    truth = torch.randn(M, 1, generator=_gen(2), dtype=torch.float64)
    ranks = sbc_ranks(truth[:, None].expand(M, N, 1), truth, generator=_gen(3))
    assert ranks.min().item() == 0 and ranks.max().item() == N
    assert chi2_uniformity(ranks, N)[1] > 1e-3
    samples = torch.tensor([-1.0, 0.0, 0.0, 1.0]).expand(3000, 4)[..., None]
    ranks = sbc_ranks(samples, torch.zeros(3000, 1), generator=_gen(4))
    fractions = torch.bincount(ranks.flatten(), minlength=5).double() / 3000
    torch.testing.assert_close(fractions, torch.tensor([0, 1 / 3, 1 / 3, 1 / 3, 0],
                                                       dtype=torch.float64), atol=0.03, rtol=0)


# --- uniformity of the exact posterior and of miscalibrated ones -------------------------------


def test_exact_posterior_ranks_are_uniform() -> None:
    """The coordinates of the toy are independent, so pooling them is legitimate here."""
    ranks = _ranks()
    assert ranks.min().item() == 0 and ranks.max().item() == N
    assert ranks.double().mean().item() == pytest.approx(N / 2, abs=0.25)  # sd of mean ≈ 0.07
    assert chi2_uniformity(ranks, N)[1] > 1e-3
    assert ks_uniformity(ranks, N, generator=_gen(5))[1] > 1e-3
    for j in range(D):  # one coordinate per case: the independent-ranks setting
        assert chi2_uniformity(ranks[:, j], N)[1] > 1e-3


def test_overconfident_posterior_is_u_shaped() -> None:
    """std × 0.5: the truth often falls outside all samples, so the end bins fill up."""
    ranks = _ranks(scale=0.5)
    assert chi2_uniformity(ranks, N)[1] < 1e-6
    assert ks_uniformity(ranks, N, generator=_gen(5))[1] < 1e-6
    h = rank_histogram(ranks, N, 5)
    assert min(h[0], h[-1]) > 2 * max(h[1:-1])


def test_underconfident_posterior_is_cap_shaped() -> None:
    """std × 2: the truth sits among the central samples."""
    ranks = _ranks(scale=2.0)
    assert chi2_uniformity(ranks, N)[1] < 1e-6
    h = rank_histogram(ranks, N, 5)
    assert h[2] > 2 * max(h[0], h[-1])
    assert min(h[1], h[3]) > max(h[0], h[-1])


def test_biased_posterior_is_skewed() -> None:
    """Mean + 0.5 std: the samples sit above the truth, so low ranks dominate."""
    ranks = _ranks(shift=0.5)
    assert chi2_uniformity(ranks, N)[1] < 1e-6
    assert ks_uniformity(ranks, N, generator=_gen(5))[1] < 1e-6
    low, high = rank_histogram(ranks, N, 2).tolist()
    assert low > 1.5 * high  # about 0.64 / 0.36
    low, high = rank_histogram(_ranks(shift=-0.5), N, 2).tolist()
    assert high > 1.5 * low  # and the mirror image


# --- rank_histogram and chi2_uniformity -------------------------------------------------------


def test_rank_histogram_counts_and_rejects_uneven_bins() -> None:
    """n = 5: six rank values, 3 bins of two; 4 bins do not divide 6."""
    ranks = torch.tensor([0, 1, 1, 2, 5, 5, 5, 3])
    assert rank_histogram(ranks, 5, 3).tolist() == [3, 2, 3]
    assert rank_histogram(ranks, 5, 6).tolist() == [1, 2, 1, 1, 0, 3]
    with pytest.raises(ValueError):
        rank_histogram(ranks, 5, 4)
    with pytest.raises(ValueError):
        rank_histogram(torch.tensor([6]), 5, 3)  # a rank above n


def test_chi2_of_a_flat_histogram_is_zero() -> None:
    ranks = torch.arange(N + 1).repeat(10)
    assert chi2_uniformity(ranks, N) == (0.0, 1.0)
    assert chi2_uniformity(ranks, N, n_bins=4) == (0.0, 1.0)


def test_chi2_statistic_by_hand_and_default_bins() -> None:
    """40 ranks, n = 19: default bins = largest divisor of 20 that is ≤ 40 / 5 = 8, i.e. 5;
    counts (16, 8, 8, 4, 4) against 8 give χ² = (64 + 0 + 0 + 16 + 16) / 8 = 12, 4 dof."""
    ranks = torch.cat([torch.full((c,), 4 * b) for b, c in enumerate([16, 8, 8, 4, 4])])
    statistic, p = chi2_uniformity(ranks, N)
    assert statistic == pytest.approx(12.0)
    assert p == pytest.approx(chi2_sf(12.0, 4)) and p == pytest.approx(0.0174, abs=1e-4)
    assert chi2_uniformity(ranks, N) == chi2_uniformity(ranks, N, n_bins=5)
    with pytest.raises(ValueError):  # 23 is prime: no divisor in 2..20
        chi2_uniformity(torch.arange(23).repeat(10), 22)


@pytest.mark.parametrize(("x", "dof", "p"), [(3.841, 1, 0.05), (18.307, 10, 0.05),
                                             (6.635, 1, 0.01), (2.0, 2, math.exp(-1))])
def test_chi2_sf_matches_tables(x: float, dof: int, p: float) -> None:
    assert chi2_sf(x, dof) == pytest.approx(p, abs=1e-4)


# --- ks_uniformity ----------------------------------------------------------------------------


@pytest.mark.parametrize(("lam", "p"), [(1.358, 0.05), (1.628, 0.01), (1.224, 0.10)])
def test_kolmogorov_sf_matches_tables(lam: float, p: float) -> None:
    assert kolmogorov_sf(lam) == pytest.approx(p, abs=1e-3)


def test_kolmogorov_sf_limits() -> None:
    assert kolmogorov_sf(0.1) == 1.0
    assert kolmogorov_sf(0.3) == pytest.approx(1.0, abs=1e-5)
    assert kolmogorov_sf(3.0) == pytest.approx(2 * math.exp(-18), rel=1e-6)


def test_ks_of_constant_ranks() -> None:
    """All ranks 0 (n = 19): u < 1 / 20, so D_KS > 0.95."""
    d, p = ks_uniformity(torch.zeros(100, dtype=torch.long), N, generator=_gen(6))
    assert d > 0.95 and p < 1e-6


# --- coverage ---------------------------------------------------------------------------------


def test_rank_coverage_is_exact_for_calibrated_and_low_for_overconfident() -> None:
    gen = torch.Generator().manual_seed(7)
    m, n = 4000, 19
    # calibrated: truth and samples exchangeable draws of one law
    exact = torch.randn(m, n, 2, generator=gen, dtype=torch.float64)
    truth = torch.randn(m, 2, generator=gen, dtype=torch.float64)
    ranks = sbc_ranks(exact, truth, gen)
    for level in (0.5, 0.9):
        cov, nominal = rank_coverage(ranks, n, level)
        assert nominal == level
        se = (level * (1 - level) / ranks.numel()) ** 0.5
        assert abs(cov - level) < 4 * se
    narrow = sbc_ranks(0.5 * exact, truth, gen)
    assert rank_coverage(narrow, n, 0.9)[0] < 0.8
