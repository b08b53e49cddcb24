"""A held-out calibration check of a trained model, needing no exact posterior: on validation
trajectories whose x_0 is known, draw n = 19 reverse-SDE samples from each x_T and ask whether
x_0 looks like one more draw (simulation-based calibration, docs/method.md §7).

With 19 samples the order-statistic intervals have exact nominal levels (ranks 5..14 of 0..19:
50 %, 1..18: 90 %). Coverage is pooled over every coordinate of every case: coordinates of one
field are correlated, so the pooled value is unbiased but noisier than its count suggests; the
verdict's tolerances (±0.05 at 90 %, ±0.08 at 50 %) allow for that. Too-narrow samples show as
coverage below nominal, too-wide ones above. The spread-skill ratio (mean squared error per
sample over that of the sample mean, 2n / (n + 1) in expectation for any calibrated posterior)
catches what pooled coverage misses when most coordinates are easy: on a 64² heat model whose
band variance ratios were 1.44 / 1.32 / 1.02 / 2.60, coverage90 was 0.94 (inside its tolerance)
while spread-skill was 18 % above nominal. Its tolerance is ±10 %, or three bootstrap standard
errors over the cases where that is larger (few cases of a small state: on N-body with 32 cases
of 20 coordinates the ratio itself scatters by several per cent).

The probability-flow ODE is checked on the same cases: a deterministic reconstruction whose
held-out MSE exceeds that of one posterior sample is worse than a random draw from the posterior
and is flagged unreliable (`ode_reliable`, `ode_verdict`). With exact scores it passes easily
(heat-32: the discrete c = 1/2 flow has about 0.65 × a sample's MSE); a flow whose score errors
compound (docs/method.md §9) fails it by orders of magnitude.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from physdiff import calibration, metrics
from physdiff.flow_correction import BLOW_UP
from physdiff.model import Model, reconstruct, sample_posterior

__all__ = ["N_SAMPLES", "held_out_check", "ode_verdict", "verdict"]

N_SAMPLES = 19
SKILL_TOLERANCE = 0.10  # on the spread-skill ratio over its nominal value
ODE_TOLERANCE = 1.0  # PF-ODE MSE over the MSE of one posterior sample


@torch.no_grad()
def held_out_check(model: Model, trajectories: Tensor, condition: Tensor | None,
                   generator: torch.Generator, batch_size: int = 512,
                   flow_choice: dict[str, Any] | None = None) -> dict[str, Any]:
    """Coverage, SBC and accuracy of the model's x_0 posterior on held-out trajectories
    (N, K + 1, *state) with their conditions (N, *) or None. Returns a JSON-able dict with a
    'calibrated' flag and a one-line 'verdict'. `flow_choice`: the training's choice of the
    flow correction on other validation cases (physdiff/flow_correction.py), whose count of
    cases where the flow blew up the ODE verdict repeats."""
    x_T, x_0 = trajectories[:, -1], trajectories[:, 0]
    samples = sample_posterior(model, x_T, N_SAMPLES, generator, batch_size=batch_size,
                               condition=condition).cpu()
    x_0 = x_0.cpu()
    ranks = calibration.sbc_ranks(samples.flatten(2).double(), x_0.flatten(1).double(),
                                  torch.Generator().manual_seed(0))
    cov50, _ = calibration.rank_coverage(ranks, N_SAMPLES, 0.5)
    cov90, _ = calibration.rank_coverage(ranks, N_SAMPLES, 0.9)
    _, p = calibration.chi2_uniformity(ranks, N_SAMPLES)
    naive = reconstruct(model, x_T, "naive", batch_size=batch_size, condition=condition).cpu()
    mse_naive = metrics.mse(naive, x_0)
    out: dict[str, Any] = {
        "cases": int(x_0.shape[0]), "n_samples": N_SAMPLES,
        "coverage50": cov50, "coverage90": cov90, "sbc_p_pooled": p,
        "mse_per_sample": metrics.mse(samples, x_0[:, None].expand_as(samples)),
        "mse_of_mean": metrics.mse(samples.mean(1), x_0),
        "mse_naive_inverse": mse_naive if math.isfinite(mse_naive) else None,
    }
    # spread-skill: for x_0 and the n samples exchangeable given x_T, E‖x̃ − x_0‖² = 2 tr Σ and
    # E‖mean − x_0‖² = (1 + 1/n) tr Σ, so their ratio is 2n / (n + 1) in expectation, whatever
    # the posterior; too wide a posterior raises it, too narrow (or biased) lowers it
    out["spread_skill"] = out["mse_per_sample"] / out["mse_of_mean"]
    out["spread_skill_nominal"] = 2 * N_SAMPLES / (N_SAMPLES + 1)
    skill = out["spread_skill"] / out["spread_skill_nominal"]
    # few cases of a small state make the ratio itself noisy: widen the tolerance to three
    # bootstrap standard errors (over cases) where that exceeds the fixed 10 %
    out["spread_skill_tolerance"] = max(SKILL_TOLERANCE, 3 * _bootstrap_se(samples, x_0)
                                        / out["spread_skill_nominal"])
    out["calibrated"] = (abs(cov90 - 0.9) <= 0.05 and abs(cov50 - 0.5) <= 0.08
                         and abs(skill - 1) <= out["spread_skill_tolerance"])
    out["verdict"] = verdict(out)
    ode = reconstruct(model, x_T, "ode", batch_size=batch_size, condition=condition).cpu()
    mse_ode = metrics.mse(ode, x_0)
    ratio = mse_ode / out["mse_per_sample"]
    finite = math.isfinite(ratio)
    out["mse_ode"] = mse_ode if math.isfinite(mse_ode) else None
    out["ode_over_sample"] = ratio if finite else None
    out["ode_reliable"] = finite and ratio <= ODE_TOLERANCE
    if flow_choice is not None:
        out["flow_choice"] = flow_choice
    out["ode_verdict"] = ode_verdict(out)
    return out


def ode_verdict(check: dict[str, Any]) -> str:
    """One plain line on the probability-flow ODE reconstruction."""
    ratio = check.get("ode_over_sample")
    if ratio is None:
        return "PF-ODE UNRELIABLE: not finite on held-out cases; use the mean path or samples"
    choice = check.get("flow_choice") or {}
    if check["ode_reliable"]:
        line = f"PF-ODE usable: held-out MSE {ratio:.2f} x one posterior sample's"
        if choice.get("blown_up"):
            line += (f", but it diverged on {choice['blown_up']} of {choice['cases']} other "
                     f"validation cases (MSE > {BLOW_UP:g} x the median case's): compare each "
                     "reconstruction with the mean path")
        return line
    return (f"PF-ODE UNRELIABLE: held-out MSE {ratio:.3g} x one posterior sample's (a random "
            "draw does better); use the mean path or the samples")


def _bootstrap_se(samples: Tensor, x_0: Tensor, draws: int = 200) -> float:
    """Standard error of the spread-skill ratio by resampling the held-out cases."""
    per_sample = (samples - x_0[:, None]).square().flatten(1).mean(1)
    of_mean = (samples.mean(1) - x_0).square().flatten(1).mean(1)
    return float(metrics.bootstrap_ratios(per_sample, of_mean, draws).std())


def verdict(check: dict[str, Any]) -> str:
    """One plain line: calibrated or not, and which way."""
    cov = (f"coverage50 {check['coverage50']:.2f} (nominal 0.50), coverage90 "
           f"{check['coverage90']:.2f} (0.90), spread-skill {check['spread_skill']:.2f} "
           f"({check['spread_skill_nominal']:.2f}) on {check['cases']} held-out cases")
    if check["calibrated"]:
        return f"calibrated: {cov}"
    skill = check["spread_skill"] / check["spread_skill_nominal"]
    tol = check.get("spread_skill_tolerance", SKILL_TOLERANCE)
    wide = skill > 1 + tol or (abs(skill - 1) <= tol and check["coverage90"] > 0.9)
    way = "too wide (under-confident)" if wide else "too narrow or biased (over-confident)"
    return f"NOT calibrated, posterior {way}: {cov}; do not trust its spread"
