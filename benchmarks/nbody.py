#!/usr/bin/env python3
"""nbody-5: posterior of the initial bodies, with the true simulator, a learned physics drift, no
physics, and the naive reverse integration, calibrated by simulation-based calibration.

Generates the recipe (kept when up to date), trains three models with the same preset and
curriculum (resumable: rerun the same command after an interruption): --physics true, learned
(P_φ trained jointly from the trajectories alone), none (the network alone); then draws n
posterior samples per test end state (n = 19: the order-statistic intervals of ranks then have
nominal levels of exactly 50 % and 90 %). Prints a table and writes it as JSON.

Examples:
    python benchmarks/nbody.py            # nbody-5: about 12 minutes on 2 CPU cores
    python benchmarks/nbody.py --quick    # a small recipe and short training: minutes
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from common import ROOT, base_parser, print_table, script, train_model

from physdiff.data import read
from physdiff.io import write_text_atomic
from physdiff.model import Model, load_model, reconstruct, sample_posterior, timed
from physdiff.runtime import code_version, pick_device
from physdiff.samplers import euler_maruyama
from physdiff.systems.nbody import NBodySystem

CONFIGS = {
    "full": {"recipe": "datasets/nbody-5.json", "data": "datasets/nbody-5", "preset": "nbody",
             "stages": NBodySystem.presets["nbody"]["stages"], "out": "benchmarks/results/nbody-5",
             "generate": []},
    "quick": {"recipe": "datasets/nbody-5.json", "data": "runs/bench-nbody-quick/data",
              "preset": "nbody", "stages": "1:400,4:100", "out": "benchmarks/results/nbody-quick",
              "generate": ["--n-train", "200", "--n-valid", "20", "--n-test", "40"]},
}
MODELS = {"true simulator": "true", "learned physics": "learned", "network only": "none"}
COLUMNS = [("mse_pos", "pos MSE", "{:.4g}"), ("mse_pos_per_sample", "pos MSE/smp", "{:.4g}"), ("mse_pos_of_mean", "pos MSE mean", "{:.4g}"),
           ("coverage50", "cov50", "{:.3f}"), ("coverage90", "cov90", "{:.3f}"),
           ("sbc_p", "SBC χ² p", "{:.2g}"), ("sbc_p_per_coord_bonferroni", "SBC p/coord", "{:.2g}"),
           ("sbc_ks_p", "SBC KS p", "{:.2g}"),
           ("resim_dist", "resim dist", "{:.4f}"), ("energy_change", "|ΔE| path", "{:.4f}"),
           ("momentum_change", "|ΔP| path", "{:.4f}"), ("force_error", "force err", "{:.3f}"),
           ("train_minutes", "train min", "{:.1f}"), ("seconds_per_sample", "s/sample", "{:.4f}")]


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__, n_samples=19, batch_size=1000)
    p.add_argument("--jobs", type=int, default=2,
                   help="models trained at once, each with --threads threads (small tensors: "
                   "one thread per process beats several threads on one model)")
    p.add_argument("--threads", type=int, default=1)
    return p


@torch.no_grad()
def naive_reverse(model: Model, x_T: torch.Tensor) -> torch.Tensor:
    """Leapfrog backwards from x_T with the true forces: no score, no noise."""
    drift = model.system.physics_drift("true")
    ts = model.times(x_T.device).double()
    return euler_maruyama(drift, x_T.double(), ts, model.meta.g,
                          noise=lambda x, i, gen: torch.zeros_like(x), return_path=True)


@torch.no_grad()
def force_error(model: Model, states: torch.Tensor) -> float:
    """‖a_φ − a‖ / ‖a‖ of the learned acceleration over held-out states (..., N, 4)."""
    pos = states[..., :2].float()
    true = model.system.gravity(pos)(pos)
    return ((model.physics_net(pos) - true).norm() / true.norm()).item()


def evaluate_model(model: Model, x_0: torch.Tensor, x_T: torch.Tensor, n: int,
                   batch_size: int) -> dict[str, dict[str, Any]]:
    gen = torch.Generator(x_T.device).manual_seed(2)
    (samples, paths), seconds = timed(lambda: sample_posterior(
        model, x_T, n, gen, "calibrated", 0.0, batch_size, return_paths=True))
    sde = model.system.evaluate(x_0, x_T.cpu(), samples=samples.cpu(),
                   paths=paths.cpu().flatten(0, 1))
    sde["seconds_per_sample"] = seconds / (x_T.shape[0] * n)
    mean = model.system.evaluate(x_0, x_T.cpu(),
                    point=reconstruct(model, x_T, "mean", batch_size=batch_size).cpu())
    ode = model.system.evaluate(x_0, x_T.cpu(),
                                point=reconstruct(model, x_T, "ode", batch_size=batch_size).cpu())
    return {"SDE": sde, "mean path": mean, "PF-ODE": ode}


def main() -> None:
    args = parser().parse_args()
    cfg = CONFIGS["quick" if args.quick else "full"]
    out, data = ROOT / cfg["out"], ROOT / cfg["data"]
    device = pick_device(args.device)
    script("generate.py", "--recipe", cfg["recipe"], "--out", str(data), *cfg["generate"])
    def fit(physics: str) -> float:
        return train_model(data, out / physics, ["--preset", cfg["preset"], "--stages",
                                                 cfg["stages"], "--physics", physics],
                           args.device, args.threads) / 60

    with ThreadPoolExecutor(args.jobs) as pool:  # separate processes; the threads only wait
        minutes = dict(zip(MODELS, pool.map(fit, MODELS.values()), strict=True))
    test = read(data / "test.h5", simulator="nbody", limit=args.limit)
    x_0, x_T = test.x[:, 0], test.x[:, -1]
    print(f"evaluating on {data / 'test.h5'} ({x_T.shape[0]} states, {args.n_samples} samples)")
    rows: dict[str, dict[str, Any]] = {}
    for name, physics in MODELS.items():
        model = load_model(out / physics / "checkpoint.pt", device)
        for kind, row in evaluate_model(model, x_0, x_T.to(device), args.n_samples,
                                        args.batch_size).items():
            row["train_minutes"] = minutes[name]
            if physics == "learned":
                row["force_error"] = force_error(model, test.x)
            rows[f"{name}: {kind}"] = row
    path = naive_reverse(model, x_T.to(device)).flip(0).transpose(0, 1).cpu()
    rows["naive reverse (no score)"] = model.system.evaluate(x_0, x_T, point=path[:, 0].float(),
                                                paths=path)
    rows["data trajectories (reference)"] = model.system.evaluate(x_0, x_T, point=x_0,
                                                     paths=test.x)
    print_table(rows, COLUMNS)
    print_notes()
    result = {"config": cfg, "flags": {k: str(v) for k, v in vars(args).items()},
              "command": "python benchmarks/nbody.py" + (" --quick" if args.quick else ""),
              "version": code_version(), "device": str(device),
              "torch_threads": torch.get_num_threads(), "rows": rows,
              "targets": nbody_targets(rows)}
    write_text_atomic(out / "nbody.json", json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'nbody.json'}")


def print_notes() -> None:
    print("train min: wall time of each model, trained two at a time with one thread each; "
          "pos MSE: initial positions; cov50/cov90: order-statistic intervals of 19 samples, "
          "nominal 0.5 / 0.9; SBC χ² p pools every coordinate (conservative), p/coord: per "
          "coordinate, Bonferroni-corrected.")


def nbody_targets(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The N-body targets (issue 4): calibration of the true-simulator model, and the learned
    physics' position MSE per sample against the true simulator's."""
    true, learned = rows["true simulator: SDE"], rows["learned physics: SDE"]
    p = true.get("sbc_p_per_coord_bonferroni", float("nan"))
    ratio = learned["mse_pos_per_sample"] / true["mse_pos_per_sample"]
    return [{"name": "SBC chi2 p per coordinate (Bonferroni), true simulator", "value": p,
             "target": "> 0.01", "met": bool(p > 0.01)},
            {"name": "coverage90, true simulator", "value": true["coverage90"],
             "target": "in [0.85, 0.95]", "met": bool(0.85 <= true["coverage90"] <= 0.95)},
            {"name": "learned physics pos MSE per sample / true simulator's", "value": ratio,
             "target": "<= 1.25", "met": bool(ratio <= 1.25)}]


if __name__ == "__main__":
    main()
