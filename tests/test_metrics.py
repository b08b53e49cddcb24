"""Accuracy and calibration metrics, against hand-computed values and exact Gaussians."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from physdiff.metrics import (
    BANDS,
    band_masks,
    band_pass,
    band_variance_ratio,
    distance_over_spread,
    fourier_components,
    interval_coverage,
    low_pass,
    mse,
    radial_amplitude,
    spectral_error,
)
from simulators.heat import Posterior


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _signed(i: int, n: int) -> int:
    """Integer wavenumber of FFT index i on n points (fftfreq convention: n/2 is negative)."""
    return i if i < (n + 1) // 2 else i - n


def _k2(h: int, w: int) -> list[list[int]]:
    """|k|² as exact integers, indexed like fft2 output."""
    return [[_signed(i, h) ** 2 + _signed(j, w) ** 2 for j in range(w)] for i in range(h)]


def _cosine(n: int, ky: int, kx: int) -> Tensor:
    """cos(2π (ky y + kx x) / n) on an n × n grid, float64."""
    y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float64)] * 2, indexing="ij")
    return torch.cos(2 * math.pi * (ky * y + kx * x) / n)


def _spectrum(n: int) -> Tensor:
    """A smooth, Hermitian-symmetric test variance spectrum (n, n), zero at k = 0."""
    k2 = torch.tensor(_k2(n, n), dtype=torch.float64)
    return torch.where(k2 > 0, n * n * (1 + k2) ** -1.5, 0.0)


# --- mse --------------------------------------------------------------------------------------


def test_mse_values() -> None:
    """Mean (not sum) of squared differences over every element, as a Python float."""
    x = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    y = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    assert mse(x, y) == pytest.approx((9 + 16 + 0 + 4) / 4, rel=1e-15)
    assert mse(y, x) == mse(x, y)
    assert mse(x, x) == 0.0
    assert isinstance(mse(x, y), float)
    # computed in float64: a float32 difference of 1e-4 is not lost
    assert mse(torch.tensor([1.0 + 2**-13]), torch.tensor([1.0])) == 2.0**-26


# --- radial_amplitude -------------------------------------------------------------------------


@pytest.mark.parametrize(("ky", "kx", "r"), [(0, 1, 1), (1, 1, 1), (3, 4, 5), (2, -7, 7)])
def test_radial_amplitude_of_a_single_cosine(ky: int, kx: int, r: int) -> None:
    """cos has |x̂| = N²/2 at ±k and 0 elsewhere, so bin r = round(|k|) holds N²/count(r)."""
    n, n_bins = 32, 12
    count = sum(round(math.sqrt(k2)) == r for row in _k2(n, n) for k2 in row)
    expected = torch.zeros(n_bins, dtype=torch.float64)
    expected[r] = 2 * (n * n / 2) / count
    amplitude = radial_amplitude(_cosine(n, ky, kx), n_bins)
    assert amplitude.shape == (n_bins,) and amplitude.dtype == torch.float64
    torch.testing.assert_close(amplitude, expected, atol=1e-9, rtol=1e-12)


def test_radial_amplitude_bin_counts() -> None:
    """Hand-counted bins on 32×32: r = 1 holds |k|² ∈ {1, 2} (8 modes), r = 5 holds {25, 26, 29}
    (12 + 8 + 8 modes), r = 0 only k = 0."""
    n = 32
    assert radial_amplitude(_cosine(n, 1, 1), 6)[1].item() == pytest.approx(n * n / 8)
    assert radial_amplitude(_cosine(n, 0, 5), 6)[5].item() == pytest.approx(n * n / 28)
    constant = torch.full((n, n), 3.0, dtype=torch.float64)
    torch.testing.assert_close(radial_amplitude(constant, 3),
                               torch.tensor([3.0 * n * n, 0.0, 0.0], dtype=torch.float64))


def test_radial_amplitude_drops_modes_beyond_the_last_bin() -> None:
    """A mode with round(|k|) ≥ n_bins contributes to no bin."""
    assert radial_amplitude(_cosine(32, 3, 4), 5).abs().max().item() < 1e-9


def test_radial_amplitude_scales_with_abs_c_and_keeps_batch_shape() -> None:
    """A(c x) = |c| A(x) bin by bin, for batched (..., H, W) fields."""
    x = torch.randn(2, 3, 16, 16, generator=_gen(0), dtype=torch.float64)
    a = radial_amplitude(x, 9)
    assert a.shape == (2, 3, 9)
    for c in (-2.5, 0.3, 4.0):
        torch.testing.assert_close(radial_amplitude(c * x, 9), abs(c) * a, rtol=1e-12, atol=0)
    torch.testing.assert_close(a[1, 2], radial_amplitude(x[1, 2], 9))


# --- spectral_error ---------------------------------------------------------------------------


def test_spectral_error_is_zero_on_itself_and_symmetric() -> None:
    """E(x, x) = 0 and E(x, y) = E(y, x) > 0."""
    x = torch.randn(3, 32, 32, generator=_gen(1), dtype=torch.float64)
    y = torch.randn(3, 32, 32, generator=_gen(2), dtype=torch.float64)
    assert spectral_error(x, x) == 0.0
    assert spectral_error(x, y) == spectral_error(y, x)
    assert spectral_error(x, y) > 0.01


@pytest.mark.parametrize("c", [1e-3, 0.5, 2.0, 7.3])
def test_spectral_error_of_a_scaled_field_is_abs_log_c(c: float) -> None:
    """Scaling by c shifts every log amplitude by log c: E(c x, x) = |log c|."""
    x = torch.randn(2, 32, 32, generator=_gen(3), dtype=torch.float64)
    assert spectral_error(c * x, x) == pytest.approx(abs(math.log(c)), rel=1e-12, abs=1e-12)
    assert spectral_error(x, c * x) == pytest.approx(abs(math.log(c)), rel=1e-12, abs=1e-12)


def test_spectral_error_averages_over_the_bins() -> None:
    """One mode per bin r = 1..10 (k = (0, r)); doubling mode 3 changes one bin of ten by log 2."""
    x = sum(_cosine(32, 0, r) for r in range(1, 11))
    y = x + _cosine(32, 0, 3)
    assert spectral_error(y, x) == pytest.approx(math.log(2) / 10, rel=1e-9)
    assert spectral_error(y, x, bins=range(1, 5)) == pytest.approx(math.log(2) / 4, rel=1e-9)
    assert spectral_error(y, x, bins=range(4, 11)) == pytest.approx(0.0, abs=1e-9)


def test_spectral_error_broadcasts_the_reference() -> None:
    """A single reference (H, W) is compared with every field of a batch."""
    x = torch.randn(2, 16, 16, generator=_gen(4), dtype=torch.float64)
    expected = (spectral_error(x[0], x[0]) + spectral_error(x[1], x[0])) / 2
    assert spectral_error(x, x[0]) == pytest.approx(expected, rel=1e-12)


# --- band_masks -------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w"), [(32, 32), (24, 40), (17, 32)])
def test_band_masks_follow_the_definition(h: int, w: int) -> None:
    """Mode k is in band i iff lo_i ≤ |k| < hi_i (≤ for the last band) and k ≠ 0 (exact ints)."""
    masks = band_masks(h, w)
    assert len(masks) == len(BANDS)
    k2 = _k2(h, w)
    for i, (mask, (lo, hi)) in enumerate(zip(masks, BANDS, strict=True)):
        assert mask.shape == (h, w) and mask.dtype == torch.bool
        last = i == len(BANDS) - 1
        expected = [[0 < k and lo**2 <= k and (k <= hi**2 if last else k < hi**2) for k in row]
                    for row in k2]
        assert mask.tolist() == expected


def test_band_masks_partition_the_modes_up_to_16() -> None:
    """On 32×32 the bands are disjoint, exclude k = 0, cover every 0 < |k| ≤ 16, and the last
    includes |k| = 16 itself."""
    masks = torch.stack(band_masks(32, 32))
    assert masks.sum(0).max().item() == 1  # disjoint
    assert not masks[:, 0, 0].any()
    k2 = torch.tensor(_k2(32, 32))
    torch.testing.assert_close(masks.any(0), (k2 > 0) & (k2 <= 256))
    assert masks[-1, 0, 16] and masks[-1, 16, 0]  # (0, ±16), (±16, 0): |k| = 16 exactly
    assert masks[1, 0, 2] and not masks[0, 0, 2]  # |k| = 2 opens the second band


# --- band_variance_ratio ----------------------------------------------------------------------


def _posterior_samples(n: int, seed: int, size: int = 32, b: int = 4) -> tuple[Tensor, Tensor]:
    """Samples (b, n, size, size) of a known per-mode Gaussian, and its variance spectrum."""
    variance = _spectrum(size)
    mean = torch.randn(b, size, size, generator=_gen(seed), dtype=torch.float64)
    return Posterior(mean, variance).sample(n, generator=_gen(seed + 1)), variance


def test_band_variance_ratio_is_one_for_exact_samples() -> None:
    """Samples of the exact Gaussian give a ratio of 1 within a few percent in every band."""
    samples, variance = _posterior_samples(400, seed=10)
    for mask in band_masks(32, 32):
        assert band_variance_ratio(samples, variance, mask) == pytest.approx(1.0, abs=0.05)


def test_band_variance_ratio_scales_quadratically_and_ignores_the_mean() -> None:
    """Deviations × 2 give 4 (exactly 4 × the unscaled ratio); shifting each observation's
    samples by a constant field changes nothing."""
    samples, variance = _posterior_samples(250, seed=20)
    centre = samples.mean(1, keepdim=True)
    wide = centre + 2 * (samples - centre)
    shifted = samples + torch.randn(4, 1, 32, 32, generator=_gen(21), dtype=torch.float64)
    for mask in band_masks(32, 32):
        ratio = band_variance_ratio(samples, variance, mask)
        wide_ratio = band_variance_ratio(wide, variance, mask)
        assert wide_ratio == pytest.approx(4 * ratio, rel=1e-9)
        assert wide_ratio == pytest.approx(4.0, rel=0.06)
        assert band_variance_ratio(shifted, variance, mask) == pytest.approx(ratio, rel=1e-9)


def test_band_variance_ratio_sees_a_wrong_band() -> None:
    """Samples with 3× the variance in band 2 only: ratio ≈ 3 there, ≈ 1 elsewhere."""
    masks = band_masks(32, 32)
    variance = _spectrum(32)
    mean = torch.zeros(4, 32, 32, dtype=torch.float64)
    samples = Posterior(mean, torch.where(masks[2], 3 * variance, variance)).sample(400, _gen(30))
    ratios = [band_variance_ratio(samples, variance, mask) for mask in masks]
    assert ratios == pytest.approx([1.0, 1.0, 3.0, 1.0], rel=0.05)


# --- fourier_components -----------------------------------------------------------------------


def _self_conjugate(h: int, w: int) -> Tensor:
    """Modes with k ≡ −k (mod grid), found by brute force."""
    return torch.tensor([[(-i) % h == i and (-j) % w == j for j in range(w)] for i in range(h)])


@pytest.mark.parametrize(("h", "w"), [(32, 32), (8, 6), (7, 5), (6, 9)])
def test_fourier_components_are_real_then_imaginary_parts(h: int, w: int) -> None:
    """D = |mask| real parts + imaginary parts of the masked modes that are not self-conjugate,
    in that order; the self-conjugate imaginary parts left out are zero for real fields."""
    x = torch.randn(3, h, w, generator=_gen(40), dtype=torch.float64)
    x_hat = torch.fft.fft2(x)
    conj = _self_conjugate(h, w)
    assert conj.sum().item() == (2 - h % 2) * (2 - w % 2)
    assert x_hat.imag[..., conj].abs().max().item() < 1e-12
    for mask in [*band_masks(h, w), torch.ones(h, w, dtype=torch.bool)]:
        components = fourier_components(x, mask)
        n_real, n_imag = int(mask.sum()), int((mask & ~conj).sum())
        assert components.shape == (3, n_real + n_imag) and components.dtype == torch.float64
        torch.testing.assert_close(components[:, :n_real], x_hat.real[:, mask])
        torch.testing.assert_close(components[:, n_real:], x_hat.imag[:, mask & ~conj])


def test_fourier_components_are_independent_on_a_half_plane() -> None:
    """On a mask holding one mode of each conjugate pair (plus the self-conjugate modes but
    k = 0), the number of components equals the real degrees of freedom, H·W − 1: none is zero
    or redundant."""
    h = w = 8
    mask = torch.zeros(h, w, dtype=torch.bool)
    for i in range(h):
        for j in range(w):
            mask[i, j] = not mask[(-i) % h, (-j) % w]  # keep k unless −k is already kept
    mask[0, 0] = False
    conj = _self_conjugate(h, w)
    assert int((mask & ~conj).sum()) == (h * w - 4) // 2 and int((mask & conj).sum()) == 3
    x = torch.randn(400, h, w, generator=_gen(41), dtype=torch.float64)
    components = fourier_components(x, mask)
    assert components.shape[-1] == h * w - 1
    assert torch.linalg.matrix_rank(components).item() == h * w - 1


# --- interval_coverage ------------------------------------------------------------------------


def test_interval_coverage_exact_quantiles_are_inclusive() -> None:
    """Samples 0..100: the central 90 % interval is [5, 95], endpoints included."""
    samples = torch.arange(101, dtype=torch.float64).repeat(1, 6, 1).transpose(1, 2)  # (1, n, 6)
    truth = torch.tensor([[5.0, 95.0, 50.0, 4.99, 95.01, -1.0]], dtype=torch.float64)
    assert interval_coverage(samples, truth, 0.9) == pytest.approx(3 / 6)
    truth = torch.tensor([[25.0, 75.0, 24.5, 75.5, 30.0, 70.0]], dtype=torch.float64)
    assert interval_coverage(samples, truth, 0.5) == pytest.approx(4 / 6)


@pytest.mark.parametrize("level", [0.9, 0.5])
def test_interval_coverage_of_a_calibrated_gaussian(level: float) -> None:
    """Truth and 200 samples from one Gaussian: coverage ≈ level (order-statistics bias ~1 %)."""
    samples = torch.randn(4, 200, 1000, generator=_gen(50), dtype=torch.float64)
    truth = torch.randn(4, 1000, generator=_gen(51), dtype=torch.float64)
    assert interval_coverage(samples, truth, level) == pytest.approx(level, abs=0.03)


@pytest.mark.parametrize("level", [0.9, 0.5])
def test_interval_coverage_of_exact_posterior_fourier_components(level: float) -> None:
    """End to end: the truth is one more independent draw of the exact posterior; Fourier
    components of all modes 0 < |k| ≤ 16 are covered at the nominal level."""
    draws, _ = _posterior_samples(201, seed=60)
    truth, samples = draws[:, 0], draws[:, 1:]
    mask = torch.stack(band_masks(32, 32)).any(0)
    coverage = interval_coverage(fourier_components(samples, mask),
                                 fourier_components(truth, mask), level)
    assert coverage == pytest.approx(level, abs=0.03)


def test_interval_coverage_detects_miscalibrated_samplers() -> None:
    """Samples shrunk to 0.3× around the true mean cover far less than 90 %, 3× far more."""
    b, size = 4, 32
    variance = _spectrum(size)
    mean = torch.randn(b, size, size, generator=_gen(70), dtype=torch.float64)
    posterior = Posterior(mean, variance)
    truth = posterior.sample(1, generator=_gen(71))[:, 0]
    samples = posterior.sample(200, generator=_gen(72))
    mask = torch.stack(band_masks(size, size)).any(0)

    def coverage(scale: float) -> float:
        scaled = mean[:, None] + scale * (samples - mean[:, None])
        return interval_coverage(fourier_components(scaled, mask),
                                 fourier_components(truth, mask), 0.9)

    assert coverage(1.0) == pytest.approx(0.9, abs=0.03)
    assert coverage(0.3) < 0.5  # expected P(|Z| < 0.3 · 1.645) ≈ 0.38
    assert coverage(3.0) > 0.99


def test_distance_over_spread_of_a_posterior_draw_is_one_plus_one_over_n() -> None:
    """A point drawn from the samples' own distribution (isotropic Gaussian, σ = 3) lies at its
    exact expected ratio; one shifted by 30 standard deviations per coordinate of a correlated
    Gaussian is flagged far above the divergence threshold; fewer than 2 samples refuse."""
    gen = torch.Generator().manual_seed(3)
    m, n, d = 8000, 8, 6
    draws = 3 * torch.randn(m, n + 1, d, generator=gen, dtype=torch.float64)
    ratio = distance_over_spread(draws[:, 0], draws[:, 1:])
    # (1 + 1/n) σ² χ²_d over an independent σ² χ²_{d(n−1)} / (n − 1): mean
    # (1 + 1/n) · d(n − 1) / (d(n − 1) − 2); its standard error over m cases is 0.009 here
    expected = (1 + 1 / n) * d * (n - 1) / (d * (n - 1) - 2)
    assert abs(ratio.mean().item() - expected) < 0.05, (ratio.mean().item(), expected)
    scale = torch.randn(d, d, generator=gen, dtype=torch.float64)
    correlated = draws @ scale.T
    far = correlated[:, 0] + 30 * 3 * scale.square().sum(1).sqrt()
    assert (distance_over_spread(far, correlated[:, 1:]) > 100).float().mean() > 0.99
    with pytest.raises(ValueError, match="at least 2"):
        distance_over_spread(draws[:, 0], draws[:, 1:2])


def test_low_pass_keeps_the_modes_below_k_max_and_splits_a_field_exactly() -> None:
    """cos(2π·3x/W) + cos(2π·10y/H) + 0.5: k_max 5 keeps the mean and the |k| = 3 wave and drops
    the |k| = 10 one exactly; on noise the low and high parts are orthogonal."""
    h, w = 32, 24
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64),
                          torch.arange(w, dtype=torch.float64), indexing="ij")
    slow, fast = torch.cos(2 * math.pi * 3 * x / w), torch.cos(2 * math.pi * 10 * y / h)
    field = (slow + fast + 0.5)[None, None]
    torch.testing.assert_close(low_pass(field, 5.0)[0, 0], slow + 0.5, atol=1e-12, rtol=0)
    torch.testing.assert_close(low_pass(field, 3.0)[0, 0], torch.full_like(slow, 0.5), atol=1e-12,
                               rtol=0)  # |k| = 3 is not below 3
    noise = torch.randn(2, 3, h, w, generator=_gen(5), dtype=torch.float64)
    assert (low_pass(noise, 7.5) * (noise - low_pass(noise, 7.5))).sum((-2, -1)).abs().max() < 1e-9


def test_band_pass_picks_one_wave_and_the_bands_add_up_to_the_field() -> None:
    """Waves at |k| = 3, 10 and 20 on 64²: the band [8, 16) holds the |k| = 10 wave alone, [16,
    none) the |k| = 20 one; bands [0, 8), [8, 16), [16, none) of noise sum to the noise."""
    n = 64
    y, x = torch.meshgrid(torch.arange(n, dtype=torch.float64),
                          torch.arange(n, dtype=torch.float64), indexing="ij")
    waves = [torch.cos(2 * math.pi * k * x / n) for k in (3, 10)] + [
        torch.sin(2 * math.pi * 20 * y / n)]
    field = sum(waves)[None]
    torch.testing.assert_close(band_pass(field, 8, 16)[0], waves[1], atol=1e-12, rtol=0)
    torch.testing.assert_close(band_pass(field, 16)[0], waves[2], atol=1e-12, rtol=0)
    noise = torch.randn(3, n, n, generator=_gen(6), dtype=torch.float64)
    total = band_pass(noise, 0, 8) + band_pass(noise, 8, 16) + band_pass(noise, 16)
    torch.testing.assert_close(total, noise, atol=1e-12, rtol=0)
