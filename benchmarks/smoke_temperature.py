#!/usr/bin/env python3
"""Smoke: what a colder sampler does to the scores. The reverse noise of the trained models is
scaled by s (s = 1 is the per-step covariance their training calibrated) and each model is
scored at t = 0.35 on the validation split, with the models benchmarks/smoke.py trained (run
that first; this script trains nothing).

Why: the MSE per sample and the re-simulation MSE both fall as the samples narrow, so a tuned
temperature could meet a target while the posterior gets worse (docs/method.md §7). The
spread-skill ratio (MSE per sample over MSE of the sample mean, all three channels) is
2n / (n + 1) in expectation for a calibrated posterior; this table shows it beside the scores.
benchmarks/smoke.py scores at s = 1 only.

Prints a table and writes smoke_temperature.json beside smoke.json.

Examples:
    python benchmarks/smoke_temperature.py --train-seed 3    # the seed-3 smoke-64 models
    python benchmarks/smoke_temperature.py --scales 1,0.9    # other noise scales
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import torch
from common import print_table
from smoke_trained import BANDS, TrainedRun, trained_parser

from physdiff import metrics
from physdiff.checks import comma_list, positive
from physdiff.data import read
from physdiff.model import load_model, sample_posterior
from physdiff.systems.smoke.system import mid_index

MODELS = {"true": "physdiff", "none": "network only"}


def parser() -> argparse.ArgumentParser:
    p = trained_parser(__doc__, n_samples=16, seed=3)
    p.add_argument("--scales", type=comma_list(positive(float)), default="1,0.8,0.6",
                   help="comma-separated factors on the reverse noise's standard deviation")
    p.add_argument("--limit", type=positive(int), default=20, help="validation cases (20)")
    return p


@torch.no_grad()
def scored(model: Any, valid: Any, cond: torch.Tensor, scale: float, args: argparse.Namespace,
           device: torch.device) -> dict[str, Any]:
    """The system's metrics at t = 0.35 of n samples per case drawn with the reverse noise's
    standard deviation times `scale`, and the all-channel spread-skill ratio."""
    cold = dataclasses.replace(model, noise_spectra=model.noise_spectra * scale**2)
    mid = mid_index(model.meta)
    x_T, truth = valid.x[:, -1].to(device), valid.x[:, mid].to(device)
    gen = torch.Generator(device).manual_seed(args.seed)
    samples = sample_posterior(cold, x_T, args.n_samples, gen, batch_size=args.batch_size,
                               condition=cond, keep=(mid,), stop=mid)[:, :, 0]
    row = model.system.evaluate(truth, x_T, samples=samples, condition=cond, index=mid)
    per_sample = metrics.mse(samples, truth[:, None].expand_as(samples))
    row["spread_skill_all_channels"] = per_sample / metrics.mse(samples.mean(1), truth)
    return row | band_spread_skill(samples[:, :, 0], truth[:, 0])


def band_spread_skill(samples: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """The smoke's spread-skill ratio in each band of Fourier modes (BANDS), with the samples'
    power there over the truth's: where a posterior too narrow or too wide in total is so.
    samples (B, n, H, W), truth (B, H, W)."""
    out = {}
    for lo, hi in BANDS:
        s, t = metrics.band_pass(samples, lo, hi), metrics.band_pass(truth, lo, hi)
        name = _band_name(lo, hi)
        out[f"spread_skill_smoke_{name}"] = (metrics.mse(s, t[:, None].expand_as(s))
                                             / metrics.mse(s.mean(1), t))
        out[f"power_ratio_smoke_{name}"] = float(s.square().mean() / t.square().mean())
    return out


def _band_name(lo: int, hi: int | None) -> str:
    return f"k{lo}-{hi}" if hi is not None else f"k{lo}+"


def main() -> None:
    args = parser().parse_args()
    run = TrainedRun.of(args)
    device = run.device
    valid = read(run.data / "valid.h5", simulator="smoke", limit=args.limit)
    rows: dict[str, dict[str, Any]] = {}
    for physics, name in MODELS.items():
        model = load_model(run.checkpoints[physics], device)
        cond = model.system.condition(valid.extras, str(run.data / "valid.h5")).to(device)
        for s in args.scales:
            rows[f"{name}, noise x {s:g}"] = {"scale": s, **scored(model, valid, cond, s, args,
                                                                  device)}
    nominal = 2 * args.n_samples / (args.n_samples + 1)
    print_table(rows, [("mse_per_sample", "MSE/sample", "{:.5f}"),
                       ("velocity_mse_per_sample", "vel MSE/smp", "{:.5f}"),
                       ("resim_mse", "re-sim MSE", "{:.5f}"),
                       ("spread_skill_all_channels", "spread-skill", "{:.3f}"),
                       *[(f"spread_skill_smoke_{_band_name(lo, hi)}",
                          f"s-s {_band_name(lo, hi)}", "{:.3f}") for lo, hi in BANDS]],
                name_width=28)
    print(f"validation cases: {valid.x.shape[0]}; t = 0.35; spread-skill nominal "
          f"2n/(n+1) = {nominal:.3f}")
    run.write("smoke_temperature", args, {
        "n_samples": args.n_samples, "seed": args.seed,
        "validation_cases": int(valid.x.shape[0]), "spread_skill_nominal": nominal,
        "rows": rows})

if __name__ == "__main__":
    main()
