#!/usr/bin/env python3
"""Smoke: where the re-simulation error comes from (issue 10, item 4: measure why the re-sim
target is missed), with the models benchmarks/smoke.py trained (run that first; this script
trains nothing).

The re-sim MSE simulates a t = 0.35 reconstruction forward to T = 0.65 with the true obstacles
and no noise and compares the smoke with the observation. The truth itself scores the data's
noise there (the floor), and so does an exact posterior sample on average (docs/method.md §7),
so what a model has above the floor is its own error. This script splits that excess by
re-simulating, for the same samples as benchmarks/smoke.py (16 per test observation, its
seeds):
  sample                          the reconstruction as it is (smoke.py's number);
  sample smoke, true velocity     only the smoke channel's error is left;
  true smoke, sample velocity     only the velocities' error is left;
  mean of the samples             the posterior mean, one state per observation (not a sample:
                                  a re-simulation of the mean is no posterior sample's score);
  mean smoke, sample velocity     each sample with its smoke replaced by the samples' mean
                                  smoke: what the smoke's scatter adds is the sample row's excess
                                  over this one;
  mean smoke + scatter |k| < K    that, with the smoke's scatter around the mean (sample − mean)
  mean smoke + scatter |k| >= K   added back in the Fourier modes below, or from, K (8 and 16
                                  cells per 64): at which scales the scatter costs re-sim error;
  truth + scatter                 the true state with each sample's smoke scatter added: what
                                  the scatter costs on its own;
  truth + white, scatter's bands  the same with white noise in the fluid cells filtered to the
                                  scatter's power in each band (|k| < 8, 8-16, >= 16): equal
                                  costs say the forward simulation treats the scatter as it
                                  treats unstructured noise;
  truth                           the floor.

Prints a table and writes smoke_resim.json beside smoke.json.

Examples:
    python benchmarks/smoke_resim.py                    # smoke-64's seed-0 models
    python benchmarks/smoke_resim.py --train-seed 2     # smoke.py --train-seed 2's models
"""

from __future__ import annotations

from typing import Any

import torch
from common import print_table
from smoke_trained import BANDS, SCALES, TrainedRun, trained_parser

from physdiff.data import read
from physdiff.metrics import band_pass, low_pass
from physdiff.model import load_model, sample_posterior
from physdiff.systems.smoke.system import mid_index

# the models, with benchmarks/smoke.py's sampling seeds (so that "sample" repeats its number)
MODELS = {"true": ("physdiff", 3), "none": ("network only", 4)}


def variants(samples: torch.Tensor, truth: torch.Tensor, fluid: torch.Tensor,
             generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The states to re-simulate, each (B, n, 3, H, W): the samples, each channel group swapped
    for the truth's, the sample mean (n = 1), the samples with their smoke replaced by the mean
    smoke plus the scatter at large or at small scales only (SCALES), and the truth plus the
    scatter or plus white noise with its power per band (fluid (B, 1, H, W): 1 outside
    obstacles)."""
    true_n = truth[:, None].expand_as(samples)
    mean = samples.mean(1, keepdim=True)
    mean_smoke = mean[:, :, :1]
    scatter = samples[:, :, :1] - mean_smoke

    def state(smoke: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
        """One state per sample from a smoke (broadcast over the samples) and velocities."""
        return torch.cat([smoke.expand_as(samples[:, :, :1]), velocity], 2)

    true_velocity, sample_velocity = true_n[:, :, 1:], samples[:, :, 1:]
    out = {"sample": samples,
           "sample smoke, true velocity": state(samples[:, :, :1], true_velocity),
           "true smoke, sample velocity": state(true_n[:, :, :1], sample_velocity),
           "mean of the samples": mean,
           "mean smoke, sample velocity": state(mean_smoke, sample_velocity)}
    for k in SCALES:
        low = low_pass(scatter, k)
        out[f"mean smoke + scatter |k| < {k:g}"] = state(mean_smoke + low, sample_velocity)
        out[f"mean smoke + scatter |k| >= {k:g}"] = state(mean_smoke + scatter - low,
                                                          sample_velocity)
    white = torch.randn(scatter.shape, generator=generator, device=scatter.device) * fluid[:, None]
    like = torch.zeros_like(scatter)
    for lo, hi in BANDS:  # white noise with the scatter's power in each band
        band = band_pass(white, lo, hi)
        like += (band * band_pass(scatter, lo, hi).square().mean().sqrt()
                 / band.square().mean().sqrt())
    out["truth + scatter"] = state(true_n[:, :, :1] + scatter, true_velocity)
    out["truth + white, scatter's bands"] = state(true_n[:, :, :1] + like, true_velocity)
    return out


@torch.no_grad()
def resim_rows(checkpoint: str, seed: int, test: Any, test_path: str, n: int, batch_size: int,
               device: torch.device) -> dict[str, float]:
    """The re-sim MSE of every variant of one model's samples at t = 0.35."""
    model = load_model(checkpoint, device)
    cond = model.system.condition(test.extras, test_path).to(device)
    mid = mid_index(model.meta)
    x_T, truth = test.x[:, -1].to(device), test.x[:, mid].to(device)
    gen = torch.Generator(device).manual_seed(seed)
    samples = sample_posterior(model, x_T, n, gen, batch_size=batch_size, condition=cond,
                               keep=(mid,), stop=mid)[:, :, 0]
    fluid = 1 - model.system.mask(cond).to(samples)
    states = variants(samples, truth, fluid, torch.Generator(device).manual_seed(seed))
    return {name: model.system.evaluate(truth, x_T, samples=x, condition=cond,
                                        index=mid)["resim_mse"]
            for name, x in {**states, "truth": truth[:, None]}.items()}


def main() -> None:
    args = trained_parser(__doc__, n_samples=16, seed=0).parse_args()
    run = TrainedRun.of(args)
    test = read(run.data / "test.h5", simulator="smoke")
    found = {physics: resim_rows(str(run.checkpoints[physics]), seed + args.seed, test,
                                 str(run.data / "test.h5"), args.n_samples, args.batch_size,
                                 run.device)
             for physics, (_, seed) in MODELS.items()}
    floor = found["true"]["truth"]
    rows = {}
    for variant in found["true"]:
        ours, theirs = found["true"][variant], found["none"][variant]
        rows[variant] = {"physdiff": ours, "network": theirs, "ratio": ours / theirs,
                         "physdiff_above_floor": ours - floor,
                         "network_above_floor": theirs - floor}
    print_table(rows, [("physdiff", "physdiff", "{:.5f}"), ("network", "network", "{:.5f}"),
                       ("ratio", "ratio", "{:.3f}"),
                       ("physdiff_above_floor", "phys - floor", "{:.5f}"),
                       ("network_above_floor", "net - floor", "{:.5f}")], name_width=36)
    print(f"smoke re-sim MSE at T from t = 0.35; {test.x.shape[0]} test observations, "
          f"{args.n_samples} samples each")
    run.write("smoke_resim", args, {"n_samples": args.n_samples, "seed_offset": args.seed,
                                    "test_observations": int(test.x.shape[0]), "rows": rows})


if __name__ == "__main__":
    main()
