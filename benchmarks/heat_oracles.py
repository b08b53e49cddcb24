#!/usr/bin/env python3
"""What a perfect network would score on a heat split: the closed-form reverse kernel as oracle.

Prints (and writes as JSON next to the split, `<split>.oracles.json`):
- the exact minimum of the one-step loss (the floor of train.py's validation loss);
- the MSE of the noise-free c = 1 path (= the exact posterior mean), of the discrete c = 1/2
  probability-flow step of docs/method.md §2, and of the exact continuous transport map, each over
  the exact posterior mean's MSE.

Example:
    python benchmarks/heat_oracles.py runs/demo/data/test.h5 --limit 64
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from physdiff.data import read
from physdiff.io import write_text_atomic
from simulators import heat


def oracles(split: Path, limit: int | None = None) -> dict[str, float | int | str]:
    """The oracle figures of a heat split (first `limit` trajectories), as the module says."""
    data = read(split, simulator="heat", limit=limit)
    m = data.meta
    size, dt, g, k_steps = data.x.shape[-1], m.dt, m.g, m.n_steps
    prior = heat.GaussianPrior.from_normalisation(size, size, float(m.params["exponent"]),
                                                  m.norm_mean, m.norm_std)
    a = torch.exp(-dt * heat.wavenumbers_squared(size, size))
    sigma2 = g * g * dt * size * size
    v = [prior.spectrum]
    for _ in range(k_steps):
        v.append(a * a * v[-1] + sigma2)
    mu = torch.fft.fft2(torch.full((size, size), prior.mean, dtype=torch.float64))
    x = data.x[:, :, 0].double()
    x_hat = torch.fft.fft2(x)

    def cond_mean(k: int, y_hat: torch.Tensor) -> torch.Tensor:
        """E[x̂_k | x̂_{k+1} = y_hat] (the prior mean lives in the k = 0 mode, where a = 1)."""
        return mu + a * v[k] / v[k + 1] * (y_hat - a * mu)

    floor = torch.stack([torch.fft.ifft2(x_hat[:, k] - cond_mean(k, x_hat[:, k + 1])).real
                         .square().mean() for k in range(k_steps)]).mean() / (g * g * dt)

    def path(c: float) -> torch.Tensor:
        y = x_hat[:, -1]
        for k in reversed(range(k_steps)):
            inverse = (2 - a) * y
            y = inverse + c * (cond_mean(k, y) - inverse)
        return torch.fft.ifft2(y).real

    x_0 = x[:, 0]
    bayes = (heat.posterior(x[:, -1], prior, k_steps, dt, g).mean - x_0).square().mean().item()
    transport = mu + torch.sqrt(v[0] / v[-1]) * (x_hat[:, -1] - a**k_steps * mu)
    return {
        "split": str(split), "trajectories": x.shape[0],
        "one_step_loss_minimum": floor.item(), "bayes_mse": bayes,
        "c1_path_over_bayes": (path(1.0) - x_0).square().mean().item() / bayes,
        "pf_step_c_half_over_bayes": (path(0.5) - x_0).square().mean().item() / bayes,
        "exact_transport_map_over_bayes":
            (torch.fft.ifft2(transport).real - x_0).square().mean().item() / bayes,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("split", type=Path, help="a heat dataset split (.h5)")
    p.add_argument("--limit", type=int, help="first N trajectories only")
    args = p.parse_args()
    result = oracles(args.split, args.limit)
    for key, value in result.items():
        print(f"{key:32s} {value:.4f}" if isinstance(value, float) else f"{key:32s} {value}")
    write_text_atomic(args.split.with_suffix(".oracles.json"), json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
