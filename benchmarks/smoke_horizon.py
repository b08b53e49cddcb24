#!/usr/bin/env python3
"""Smoke: how far back does the physics pay off? MSE against the truth at several reverse
horizons, physdiff (PhiFlow drift) beside the network alone, with the models benchmarks/smoke.py
trained (run that first; this script trains nothing).

For every test observation at T = 0.65, n reverse-SDE samples are drawn once and the states kept
at every requested time index, so each horizon is scored on the same paths. The smoke-64 preset
trains rollouts of up to 48 steps (the preset before, smoke-64-lr5e-4, 32; each model's
curriculum is in the JSON); benchmarks/smoke.py scores 30 steps back (t = 0.35).

Prints a table (smoke channel, MSE per sample and of the sample mean by `System.evaluate`, their
physdiff / network ratio, and the share of each model's MSE per sample in the Fourier modes
|k| >= 16, wavelengths of 4 cells and less on 64²) and writes smoke_horizon.json beside
smoke.json.

Examples:
    python benchmarks/smoke_horizon.py                        # smoke-64
    python benchmarks/smoke_horizon.py --config lr5e-4        # the preset before
    python benchmarks/smoke_horizon.py --config low-noise     # that with g = 0.02
    python benchmarks/smoke_horizon.py --train-seed 1         # smoke.py --train-seed 1's models
"""

from __future__ import annotations

from typing import Any

import torch
from common import print_table
from smoke_trained import SCALES, TrainedRun, trained_parser

from physdiff.data import read
from physdiff.metrics import band_pass
from physdiff.model import load_model, sample_posterior

KEEP = (35, 40, 45, 50, 55, 60, 63)  # forward time indices; t = index · dt
FINE = SCALES[-1]  # |k| from which the smoke's error counts as fine-scale


def scored(system: Any, truth: torch.Tensor, x_T: torch.Tensor, samples: torch.Tensor,
           cond: torch.Tensor, index: int) -> dict[str, Any]:
    """`System.evaluate`'s metrics of samples (B, n, C, H, W) at time `index`, and the share of
    the smoke's MSE per sample in the modes |k| >= FINE."""
    out = system.evaluate(truth, x_T, samples=samples, condition=cond, index=index)
    error = samples[:, :, 0] - truth[:, None, 0]
    fine = band_pass(error, FINE)
    out["fine_share"] = fine.double().square().mean().item() / out["mse_per_sample"]
    return out


@torch.no_grad()
def horizon_errors(checkpoint: str, test: Any, test_path: str, keep: tuple[int, ...], n: int,
                   seed: int, batch_size: int, device: torch.device
                   ) -> tuple[str, list[dict[str, Any]]]:
    """The model's curriculum, and the system's metrics (`System.evaluate`, as
    benchmarks/smoke.py scores t = 0.35) of the same n samples per observation at each time
    index of `keep`."""
    model = load_model(checkpoint, device)
    cond = model.system.condition(test.extras, test_path).to(device)
    gen = torch.Generator(device).manual_seed(seed)
    x_T = test.x[:, -1].to(device)
    samples = sample_posterior(model, x_T, n, gen, batch_size=batch_size, condition=cond,
                               keep=keep)  # (M, n, K, C, H, W)
    return model.config["stages"], [
        scored(model.system, test.x[:, k].to(device), x_T, samples[:, :, i], cond, k)
        for i, k in enumerate(keep)]


def main() -> None:
    args = trained_parser(__doc__, n_samples=8, seed=0).parse_args()
    run = TrainedRun.of(args)
    test = read(run.data / "test.h5", simulator="smoke")
    n_steps = test.x.shape[1] - 1
    runs = {physics: horizon_errors(str(run.checkpoints[physics]), test,
                                    str(run.data / "test.h5"), KEEP, args.n_samples, args.seed,
                                    args.batch_size, run.device)
            for physics in ("true", "none")}
    stages = {physics: r[0] for physics, r in runs.items()}
    errors = {physics: r[1] for physics, r in runs.items()}
    rows = {}
    for i, k in enumerate(KEEP):
        ours, theirs = errors["true"][i], errors["none"][i]
        rows[f"{n_steps - k} steps back (t = {k * test.meta.dt:.2f})"] = {
            "steps_back": n_steps - k,
            "physdiff_per_sample": ours["mse_per_sample"],
            "network_per_sample": theirs["mse_per_sample"],
            "ratio_per_sample": ours["mse_per_sample"] / theirs["mse_per_sample"],
            "physdiff_of_mean": ours["mse_of_mean"], "network_of_mean": theirs["mse_of_mean"],
            "ratio_of_mean": ours["mse_of_mean"] / theirs["mse_of_mean"],
            "physdiff_fine_share": ours["fine_share"], "network_fine_share": theirs["fine_share"]}
    print_table(rows, [("physdiff_per_sample", "physdiff/smp", "{:.5f}"),
                       ("network_per_sample", "network/smp", "{:.5f}"),
                       ("ratio_per_sample", "ratio", "{:.3f}"),
                       ("physdiff_of_mean", "physdiff mean", "{:.5f}"),
                       ("network_of_mean", "network mean", "{:.5f}"),
                       ("ratio_of_mean", "ratio", "{:.3f}"),
                       ("physdiff_fine_share", "phys fine", "{:.2f}"),
                       ("network_fine_share", "net fine", "{:.2f}")], name_width=28)
    run.write("smoke_horizon", args, {"stages": stages, "n_samples": args.n_samples,
                                      "seed": args.seed,
                                      "test_observations": int(test.x.shape[0]), "rows": rows})

if __name__ == "__main__":
    main()
