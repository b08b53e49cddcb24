#!/usr/bin/env python3
"""heat from partial, noisy observations y = A x_T + σ_y ε against the exact posterior
(docs/method.md §6; issue 11).

Cases, in normalised units, on the test end states of the heat benchmark model:
  sensors  25 % of the pixels (random, seeded), σ_y = 0.05;
  hole     every pixel but a hidden 12 × 12 square in the middle, σ_y = 0.01;
  pooled   4 × 4 average pooling (a coarse sensor), σ_y = 0.02;
and, for the side-by-side cost, samples from the full noise-free end state (today's sampler).
physdiff: x_T | y drawn by Matheron's rule under the training end states' stationary Gaussian
(physdiff/gaussian_start.py), then `--langevin-steps` preconditioned Langevin steps on the learned
score s_θ(·, T) plus the likelihood score (physdiff/conditioning.py), then the reverse SDE from
every draw. Exact: the dense Gaussian posterior p(x_0 | y) (simulators/heat.py). Rows per case:
MSE per sample, MSE of the sample mean, per-band variance ratios against the exact posterior,
pixel-wise 90 % interval coverage (of n samples: physdiff and n exact samples, side by side),
split-R̂ of the Langevin chains, seconds per sample. Prints a table, writes JSON with targets.

Examples:
    python benchmarks/heat_obs.py --quick      # the heat-quick model (run benchmarks/heat.py --quick first)
    python benchmarks/heat_obs.py              # the heat-32 benchmark model
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import torch
from common import ROOT, base_parser, print_targets, targets_of

from physdiff import metrics
from physdiff.conditioning import fourier_preconditioner, sample_posterior_observed
from physdiff.data import read
from physdiff.gaussian_start import end_state_spectrum, gaussian_conditional_draws
from physdiff.io import write_text_atomic
from physdiff.model import load_model, sample_posterior
from physdiff.observations import AvgPool, Mask, Operator, dense_matrix
from physdiff.runtime import code_version, pick_device
from physdiff.systems.heat import mode_variance
from simulators import heat

CONFIGS = {
    "full": {"data": "datasets/heat-32", "model": "benchmarks/results/heat-32/model",
             "out": "benchmarks/results/heat-32-obs"},
    "quick": {"data": "runs/bench-quick/data", "model": "benchmarks/results/heat-quick/model",
              "out": "benchmarks/results/heat-quick-obs"},
}


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__, n_samples=16, batch_size=512)
    p.set_defaults(limit=32)
    p.add_argument("--langevin-steps", type=int, default=64,
                   help="Langevin steps per chain after the Gaussian start (64; 0: the start "
                   "draws alone, then the reverse SDE)")
    p.add_argument("--power-iterations", type=int, default=10)
    p.add_argument("--cases", default="sensors,hole,pooled")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="run folder of the model (default: the benchmark model)")
    p.add_argument("--out", help="results folder (default benchmarks/results/...)")
    return p


def operator_for(case: str, size: int, gen: torch.Generator) -> tuple[Operator, float]:
    if case == "sensors":
        keep = torch.zeros(size * size)
        keep[torch.randperm(size * size, generator=gen)[: size * size // 4]] = 1
        return Mask(keep.reshape(1, size, size)), 0.05
    if case == "hole":
        keep = torch.ones(1, size, size)
        lo = (size - 12) // 2
        keep[:, lo:lo + 12, lo:lo + 12] = 0
        return Mask(keep), 0.01
    if case == "pooled":
        return AvgPool(4), 0.02
    raise SystemExit(f"--cases: unknown case {case!r} (sensors, hole, pooled)")


def sample_rows(samples: torch.Tensor, x_0: torch.Tensor, variance: torch.Tensor
                ) -> dict[str, float]:
    """Metrics of samples (M, n, 1, H, W) of x_0 (M, 1, H, W) against the exact Fourier
    variance (H, W)."""
    truth = x_0[:, None].expand_as(samples)
    out = {"mse_per_sample": metrics.mse(samples, truth),
           "mse_of_mean": metrics.mse(samples.mean(1), x_0),
           "coverage90 pixels": metrics.interval_coverage(samples.flatten(2).double(),
                                                          x_0.flatten(1).double(), 0.9)}
    size = x_0.shape[-1]
    for (lo, hi), mask in zip(metrics.BANDS, metrics.band_masks(size, size), strict=True):
        if mask.any():
            out[f"var_ratio [{lo:g},{hi:g})"] = metrics.band_variance_ratio(
                samples[:, :, 0], variance, mask)
    return out


def run_case(args: argparse.Namespace, case: str, model: Any, test: Any, start: tuple,
             device: torch.device) -> dict[str, dict[str, Any]]:
    """The exact and physdiff rows of one observation case."""
    meta, x_0, x_T = test.meta, test.x[:, 0], test.x[:, -1]
    size, n = x_0.shape[-1], args.n_samples
    gen = torch.Generator().manual_seed(args.seed)
    op, sigma = operator_for(case, size, gen)
    y = op(x_T) + sigma * torch.randn(op(x_T).shape, generator=gen)
    a = dense_matrix(op, (1, size, size))
    rows_obs = a.abs().sum(1) > 0  # a mask's zeroed pixels are not observations
    prior = heat.GaussianPrior.from_normalisation(size, size, float(meta.params["exponent"]),
                                                  meta.norm_mean, meta.norm_std)
    exact = heat.observed_posterior(y.flatten(1)[:, rows_obs].double(), a[rows_obs], sigma,
                                    prior, meta.n_steps, meta.dt, meta.g)
    variance = mode_variance(exact.covariance, size, size)
    exact_samples = exact.sample(n, torch.Generator().manual_seed(1))[:, :, None].float()
    out = {"exact posterior samples": sample_rows(exact_samples, x_0, variance)}
    out["exact posterior mean"] = {"mse": metrics.mse(exact.mean[:, None].float(), x_0)}

    mean_T, spectrum = start
    rho = float(rows_obs.double().mean())
    precondition = fourier_preconditioner(size * size / (size * size / spectrum
                                                         + rho / sigma**2))
    gen = torch.Generator(device).manual_seed(args.seed + 1)
    y_dev = y.to(device)
    t0 = time.perf_counter()
    init, cg = gaussian_conditional_draws(mean_T.to(device), spectrum.to(device), op, y_dev,
                                          sigma, n, gen)
    x0_start = sample_posterior(model, init.reshape(-1, 1, size, size), 1, gen,
                                batch_size=args.batch_size).reshape(-1, n, 1, size, size)
    t_start = time.perf_counter() - t0
    out["physdiff: Gaussian start only"] = sample_rows(x0_start.cpu(), x_0, variance)
    out["physdiff: Gaussian start only"]["seconds_per_sample"] = t_start / (x_0.shape[0] * n)
    if args.langevin_steps == 0:
        row = dict(out["physdiff: Gaussian start only"], cg_iterations=cg)
    else:
        t0 = time.perf_counter()
        samples, _, diag = sample_posterior_observed(
            model, op, y_dev, sigma, n, gen, steps=args.langevin_steps,
            batch_size=args.batch_size, init=init, init_scale=0.0, precondition=precondition,
            step_factor=1.0, power_iterations=args.power_iterations)
        seconds = t_start + time.perf_counter() - t0
        row = sample_rows(samples.cpu(), x_0, variance)
        row |= {"seconds_per_sample": seconds / (x_0.shape[0] * n), "max_rhat": diag.max_rhat,
                "cg_iterations": cg, "step_size": float(diag.step_size.median())}
    out["physdiff"] = row
    return out


def full_observation_cost(args: argparse.Namespace, model: Any, x_T: torch.Tensor,
                          device: torch.device) -> float:
    """Seconds per posterior sample from the full, noise-free end state (same run)."""
    gen = torch.Generator(device).manual_seed(args.seed)
    t0 = time.perf_counter()
    sample_posterior(model, x_T.to(device), args.n_samples, gen, batch_size=args.batch_size)
    return (time.perf_counter() - t0) / (x_T.shape[0] * args.n_samples)


def targets(case: str, rows: dict[str, dict[str, Any]], full_cost: float) -> list[dict]:
    ours, ex = rows["physdiff"], rows["exact posterior samples"]
    ratios = [v for k, v in ours.items() if k.startswith("var_ratio")]
    worst = max(ratios, key=lambda r: max(r / 1.25, 0.8 / r))
    items = [
        (f"{case}: SDE MSE per sample / exact samples'", ours["mse_per_sample"] / ex["mse_per_sample"],
         "<= 1.10", ours["mse_per_sample"] / ex["mse_per_sample"] <= 1.10),
        (f"{case}: variance ratio, worst band", worst, "in [0.8, 1.25]",
         all(0.8 <= r <= 1.25 for r in ratios)),
        (f"{case}: coverage90 - exact samples'", ours["coverage90 pixels"] - ex["coverage90 pixels"],
         "within 0.03", abs(ours["coverage90 pixels"] - ex["coverage90 pixels"]) <= 0.03),
        (f"{case}: MSE of the mean / exact samples' mean's", ours["mse_of_mean"] / ex["mse_of_mean"],
         "<= 1.05", ours["mse_of_mean"] / ex["mse_of_mean"] <= 1.05),
        (f"{case}: cost per sample / full observation's", ours["seconds_per_sample"] / full_cost,
         "<= 5", ours["seconds_per_sample"] / full_cost <= 5),
    ]
    return targets_of(items)


def main() -> None:
    args = parser().parse_args()
    cfg = CONFIGS["quick" if args.quick else "full"]
    device = pick_device(args.device)
    model = load_model(ROOT / (args.model or cfg["model"]) / "checkpoint.pt", device)
    data = ROOT / cfg["data"]
    test = read(data / "test.h5", simulator="heat", limit=args.limit)
    train = read(data / "train.h5", simulator="heat")
    mean_T, spectrum = end_state_spectrum(train.x[:, -1].double())
    full_cost = full_observation_cost(args, model, test.x[:, -1], device)
    result: dict[str, Any] = {"config": cfg, "flags": {k: str(v) for k, v in vars(args).items()},
                              "command": "python benchmarks/heat_obs.py"
                              + (" --quick" if args.quick else "")
                              + f" --langevin-steps {args.langevin_steps}",
                              "version": code_version(), "device": str(device),
                              "torch_threads": torch.get_num_threads(),
                              "full_observation_seconds_per_sample": full_cost, "cases": {},
                              "targets": []}
    for case in args.cases.split(","):
        rows = run_case(args, case, model, test, (mean_T, spectrum), device)
        result["cases"][case] = rows
        result["targets"] += targets(case, rows, full_cost)
        print_case(case, rows, full_cost)
    out = ROOT / (args.out or cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    name = "heat_obs.json" if args.langevin_steps else "heat_obs_start_only.json"
    write_text_atomic(out / name, json.dumps(result, indent=2) + "\n")
    print_targets(result["targets"])
    print(f"wrote {out / name}")


def print_case(case: str, rows: dict[str, dict[str, Any]], full_cost: float) -> None:
    keys = [k for k in rows["physdiff"] if k not in ("cg_iterations", "step_size")]
    print(f"\n{case:32s}" + "".join(f"{k:>18s}" for k in keys))
    for name, row in rows.items():
        cells = [f"{row[k]:18.4g}" if k in row and math.isfinite(row[k]) else f"{'':18s}"
                 for k in keys]
        print(f"{name:32s}" + "".join(cells))
    print(f"  full observation: {full_cost * 1e3:.2f} ms per sample; physdiff CG iterations "
          f"{rows['physdiff'].get('cg_iterations')}")


if __name__ == "__main__":
    main()
