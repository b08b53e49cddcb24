#!/usr/bin/env python3
"""smoke-64 from partial, noisy observations at t = 0.65: the state at t = 0.35 (issue 11,
item 5), with the models of benchmarks/smoke.py (run it first).

Cases (σ_y = 0.01, in the data's units):
  density  the smoke channel only (velocities unknown);
  cells    the smoke channel on 10 % of the cells (random, seeded).
Methods on the same observation: physdiff (x_T | y from physdiff/conditioning.py with the
system's defaults: draws of the training end states' per-coordinate Gaussian conditioned on y,
no Langevin steps; then the reverse SDE to t = 0.35), L-BFGS through the simulator on the
same misfit ‖A(S(x)) − y‖² from zeros, and the naive inverse (−dt simulator) of the observation
filled with zeros where it is missing; beside them physdiff from the full, noise-free x_T. Rows:
smoke MSE at t = 0.35, per sample and of the mean, re-simulation MSE, the pixel-wise 90 %
interval coverage of the truth by the samples, the chains' split-R̂, seconds per reconstruction.

Examples:
    python benchmarks/smoke_obs.py --limit 10            # smoke-64, first 10 test observations
    python benchmarks/smoke_obs.py --quick               # the smoke-demo models
    python benchmarks/smoke_obs.py --config lr5e-4       # the models of the preset before
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from common import ROOT, base_parser, print_table, print_targets, with_end_state
from smoke import CONFIGS, command
from smoke_trained import trained_checkpoints

from physdiff import metrics
from physdiff.conditioning import sample_posterior_observed
from physdiff.data import read
from physdiff.io import write_text_atomic
from physdiff.model import load_model, reconstruct, sample_posterior
from physdiff.observations import ChannelSubset, Mask, Operator
from physdiff.runtime import code_version, pick_device
from physdiff.systems import for_data
from physdiff.systems.smoke.system import mid_index

SIGMA = 0.01
COLUMNS = [("mse", "MSE t=.35", "{:.4g}"), ("mse_per_sample", "MSE/sample", "{:.4g}"),
           ("mse_of_mean", "MSE of mean", "{:.4g}"), ("resim_mse", "re-sim MSE", "{:.4g}"),
           ("coverage90_pixels", "cov90 pix", "{:.3f}"), ("max_rhat", "max R̂", "{:.3f}"),
           ("seconds", "s/recon", "{:.3g}")]


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__, n_samples=4, batch_size=32)
    p.set_defaults(limit=10)
    p.add_argument("--langevin-steps", type=int,
                   help="Langevin steps for x_T | y (default: the system's, 0 for smoke)")
    p.add_argument("--cases", default="density,cells")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", choices=["full", "lr5e-4", "quick"], default="full",
                   help="whose models (benchmarks/smoke.py --config): full, smoke-64 (default); "
                        "lr5e-4, the smoke-64 preset before; quick, the same as --quick")
    return p


def operator_for(case: str, shape: tuple[int, ...], gen: torch.Generator) -> Operator:
    if case == "density":
        return ChannelSubset([0])
    if case == "cells":
        keep = torch.zeros(shape)
        cells = shape[1] * shape[2]
        chosen = torch.randperm(cells, generator=gen)[: cells // 10]
        keep[0].view(-1)[chosen] = 1
        return Mask(keep)
    raise SystemExit(f"--cases: unknown case {case!r} (density, cells)")


def zero_filled(op: Operator, y: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The observation put back into a state, zeros where nothing was observed (Aᵀ y for these
    0/1 operators)."""
    x = torch.zeros((y.shape[0], *shape), dtype=y.dtype, requires_grad=True)
    with torch.enable_grad():
        (back,) = torch.autograd.grad(op(x), x, grad_outputs=y)
    return back


def main() -> None:
    args = parser().parse_args()
    config = "quick" if args.quick else args.config
    cfg = CONFIGS[config]
    device = pick_device(args.device)
    out, data = ROOT / cfg["out"], ROOT / cfg["data"]
    model = load_model(trained_checkpoints(config, 0)["true"], device)
    added = with_end_state(model, data)  # recorded in the JSON
    if args.langevin_steps is None:
        args.langevin_steps = model.system.default_langevin_steps
    test = read(data / "test.h5", simulator="smoke", limit=args.limit)
    system = for_data(test.meta, tuple(test.x.shape[2:]))
    cond = system.condition(test.extras, str(data / "test.h5"))
    result: dict[str, Any] = {"flags": {k: str(v) for k, v in vars(args).items()},
                              "command": command("smoke_obs.py", config, 0),
                              "version": code_version(),
                              "device": str(device), "torch_threads": torch.get_num_threads(),
                              "sigma_y": SIGMA, "end_state_from_data": added, "cases": {},
                              "targets": []}
    bench = Bench(args, model, system, test.x, cond, device)
    for case in args.cases.split(","):
        rows, targets = bench.case(case)
        result["cases"][case] = rows
        result["targets"] += targets
    print_targets(result["targets"])
    write_text_atomic(out / "smoke_obs.json", json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'smoke_obs.json'}")


class Bench:
    """The test observations, the model and the full-observation reference row."""

    def __init__(self, args: argparse.Namespace, model: Any, system: Any, x: torch.Tensor,
                 cond: torch.Tensor, device: torch.device) -> None:
        self.args, self.model, self.system, self.cond, self.device = (args, model, system,
                                                                      cond, device)
        self.mid = mid_index(system.meta)
        self.x_T, self.truth = x[:, -1], x[:, self.mid]
        self.n = args.n_samples
        gen = torch.Generator(device).manual_seed(args.seed)
        t0 = time.perf_counter()
        full = sample_posterior(model, self.x_T.to(device), self.n, gen,
                                batch_size=args.batch_size, condition=cond.to(device),
                                keep=(self.mid,), stop=self.mid)[:, :, 0]
        self.full_cost = (time.perf_counter() - t0) / (self.x_T.shape[0] * self.n)
        self.full_row = self.samples_row(full, self.full_cost)

    def samples_row(self, samples: torch.Tensor, seconds: float) -> dict[str, Any]:
        row = self.system.evaluate(self.truth, self.x_T, samples=samples.cpu(),
                                   condition=self.cond, index=self.mid)
        row["coverage90_pixels"] = metrics.interval_coverage(
            samples[:, :, 0].flatten(2).double().cpu(), self.truth[:, 0].flatten(1).double(),
            0.9)
        row["seconds"] = seconds
        return row

    def case(self, case: str) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        args, dev, cond, mid = self.args, self.device, self.cond, self.mid
        m, shape = self.x_T.shape[0], tuple(self.x_T.shape[1:])
        gen = torch.Generator().manual_seed(args.seed)
        op = operator_for(case, shape, gen)
        y = op(self.x_T) + SIGMA * torch.randn(op(self.x_T).shape, generator=gen)
        rows = {"physdiff, full noise-free x_T": self.full_row}
        t0 = time.perf_counter()
        samples, _, diag = sample_posterior_observed(
            self.model, op, y.to(dev), SIGMA, self.n, torch.Generator(dev).manual_seed(args.seed),
            steps=args.langevin_steps, condition=cond.to(dev), batch_size=args.batch_size,
            keep=(mid,), step_factor=1.0)
        cost = (time.perf_counter() - t0) / (m * self.n)
        rows["physdiff"] = self.samples_row(samples[:, :, 0], cost) | {"max_rhat": diag.max_rhat}
        t0 = time.perf_counter()
        lbfgs = self.system.lbfgs_reconstruct(y, cond, mid * self.system.meta.dt, operator=op)
        rows["L-BFGS, same misfit"] = self.system.evaluate(self.truth, self.x_T, point=lbfgs,
                                                           condition=cond, index=mid)
        rows["L-BFGS, same misfit"]["seconds"] = (time.perf_counter() - t0) / m
        naive = reconstruct(self.model, zero_filled(op, y, shape).to(dev), "naive",
                            condition=cond.to(dev), keep=(mid,), stop=mid)[:, 0]
        rows["naive inverse of zero-filled y"] = self.system.evaluate(
            self.truth, self.x_T, point=naive.cpu(), condition=cond, index=mid)
        print(f"\n{case}: {m} observations, {self.n} samples each")
        print_table(rows, COLUMNS, 34, 12)
        ours = rows["physdiff"]
        items = [(f"{case}: MSE per sample / L-BFGS's MSE", ours["mse_per_sample"]
                  / rows["L-BFGS, same misfit"]["mse"], "< 1"),
                 (f"{case}: MSE per sample / naive zero-filled inverse's", ours["mse_per_sample"]
                  / rows["naive inverse of zero-filled y"]["mse"], "< 1"),
                 (f"{case}: cost per sample / full observation's", cost / self.full_cost,
                  "<= 5")]
        targets = [{"name": a, "value": v, "target": t, "met": bool(v < 1 if t == "< 1"
                                                                    else v <= 5)}
                   for a, v, t in items]
        targets.append({"name": f"{case}: pixel-wise coverage90 of the truth",
                        "value": ours["coverage90_pixels"], "target": "reported", "met": True})
        return rows, targets


if __name__ == "__main__":
    main()
