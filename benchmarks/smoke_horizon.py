#!/usr/bin/env python3
"""Smoke: how far back does the physics pay off? MSE against the truth at several reverse
horizons, physdiff (PhiFlow drift) beside the network alone, with the models benchmarks/smoke.py
trained (run that first; this script trains nothing).

For every test observation at T = 0.65, n reverse-SDE samples are drawn once and the states kept
at every requested time index, so each horizon is scored on the same paths. The smoke-64 preset
trains rollouts of at most 16 steps; benchmarks/smoke.py scores 30 steps back (t = 0.35).

Prints a table (smoke channel, MSE per sample and of the sample mean, their physdiff / network
ratio) and writes smoke_horizon.json beside smoke.json.

Examples:
    python benchmarks/smoke_horizon.py                        # smoke-64
    python benchmarks/smoke_horizon.py --config low-noise     # smoke-64 with g = 0.02
"""

from __future__ import annotations

import argparse
import json

import torch
from common import ROOT, print_table
from smoke import CONFIGS

from physdiff.data import read
from physdiff.io import write_text_atomic
from physdiff.model import load_model, sample_posterior
from physdiff.runtime import code_version, pick_device

KEEP = (35, 40, 45, 50, 55, 60, 63)  # forward time indices; t = index · dt


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", choices=sorted(CONFIGS), default="full")
    p.add_argument("--n-samples", type=int, default=8, help="samples per observation (8)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    return p


@torch.no_grad()
def horizon_errors(checkpoint: str, test: object, test_path: str, keep: tuple[int, ...], n: int, seed: int,
                   batch_size: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Smoke-channel MSE per sample and of the sample mean at each index of `keep`."""
    model = load_model(checkpoint, device)
    cond = model.system.condition(test.extras, test_path).to(device)
    gen = torch.Generator(device).manual_seed(seed)
    samples = sample_posterior(model, test.x[:, -1].to(device), n, gen, batch_size=batch_size,
                               condition=cond, keep=keep).cpu()  # (M, n, K, C, H, W)
    truth = test.x[:, list(keep)]
    per_sample = (samples - truth[:, None])[:, :, :, 0].square().mean((0, 1, 3, 4))
    of_mean = (samples.mean(1) - truth)[:, :, 0].square().mean((0, 2, 3))
    return per_sample.tolist(), of_mean.tolist()


def main() -> None:
    args = parser().parse_args()
    cfg = CONFIGS[args.config]
    out, data = ROOT / cfg["out"], ROOT / cfg["data"]
    device = pick_device(args.device)
    test = read(data / "test.h5", simulator="smoke")
    n_steps = test.x.shape[1] - 1
    errors = {physics: horizon_errors(str(out / physics / "checkpoint.pt"), test,
                                      str(data / "test.h5"), KEEP,
                                      args.n_samples, args.seed, args.batch_size, device)
              for physics in ("true", "none")}
    rows = {}
    for i, k in enumerate(KEEP):
        (ps_p, pm_p), (ps_n, pm_n) = ((e[0][i], e[1][i]) for e in errors.values())
        rows[f"{n_steps - k} steps back (t = {k * test.meta.dt:.2f})"] = {
            "steps_back": n_steps - k, "physdiff_per_sample": ps_p, "network_per_sample": ps_n,
            "ratio_per_sample": ps_p / ps_n, "physdiff_of_mean": pm_p, "network_of_mean": pm_n,
            "ratio_of_mean": pm_p / pm_n}
    print_table(rows, [("physdiff_per_sample", "physdiff/smp", "{:.5f}"),
                       ("network_per_sample", "network/smp", "{:.5f}"),
                       ("ratio_per_sample", "ratio", "{:.3f}"),
                       ("physdiff_of_mean", "physdiff mean", "{:.5f}"),
                       ("network_of_mean", "network mean", "{:.5f}"),
                       ("ratio_of_mean", "ratio", "{:.3f}")], name_width=28)
    command = "python benchmarks/smoke_horizon.py" + (
        "" if args.config == "full" else f" --config {args.config}")
    result = {"command": command, "version": code_version(), "config": cfg,
              "n_samples": args.n_samples, "seed": args.seed, "test_observations":
              int(test.x.shape[0]), "rows": rows}
    write_text_atomic(out / "smoke_horizon.json", json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'smoke_horizon.json'}")


if __name__ == "__main__":
    main()
