#!/usr/bin/env python3
"""nbody-5 from positions only (velocities unobserved), y = positions(x_T) + σ_y ε with
σ_y = 0.01, calibrated by simulation-based calibration (issue 11, item 6).

Uses the true-simulator model of benchmarks/nbody.py (trained here if missing; resumable). For
every test end state: 19 posterior samples of x_0 through p(x_T | y) (Langevin chains started at
draws of the training end states' per-coordinate Gaussian, diagonal preconditioner, prior score
s_θ(·, T); physdiff/conditioning.py), then the reverse SDE; side by side with 19 samples from the
full, noise-free x_T. Rows: position MSE per sample, coverage, SBC over every coordinate
(pooled and per coordinate with Bonferroni), the chains' split-R̂, seconds per sample.

Examples:
    python benchmarks/nbody_obs.py           # nbody-5, 200 test states
    python benchmarks/nbody_obs.py --quick   # the quick recipe of benchmarks/nbody.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from common import (
    ROOT,
    base_parser,
    print_table,
    print_targets,
    script,
    targets_of,
    train_model,
    with_end_state,
)

from physdiff.conditioning import sample_end_states, sample_posterior_observed
from physdiff.data import read
from physdiff.io import write_text_atomic
from physdiff.model import load_model, sample_posterior
from physdiff.observations import Mask
from physdiff.runtime import code_version, pick_device
from physdiff.systems.nbody import NBodySystem

CONFIGS = {
    "full": {"recipe": "datasets/nbody-5.json", "data": "datasets/nbody-5",
             "stages": NBodySystem.presets["nbody"]["stages"], "out": "benchmarks/results/nbody-5",
             "generate": []},
    "quick": {"recipe": "datasets/nbody-5.json", "data": "runs/bench-nbody-quick/data",
              "stages": "1:400,4:100", "out": "benchmarks/results/nbody-quick",
              "generate": ["--n-train", "200", "--n-valid", "20", "--n-test", "40"]},
}
SIGMA = 0.01
COLUMNS = [("mse_pos_per_sample", "pos MSE/smp", "{:.4g}"),
           ("mse_pos_of_mean", "pos MSE mean", "{:.4g}"), ("coverage50", "cov50", "{:.3f}"),
           ("coverage90", "cov90", "{:.3f}"), ("sbc_p", "SBC χ² p", "{:.2g}"),
           ("sbc_p_per_coord_bonferroni", "SBC p/coord", "{:.2g}"),
           ("max_rhat", "max R̂", "{:.3f}"), ("seconds_per_sample", "s/sample", "{:.4f}")]


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__, n_samples=19, batch_size=4000)
    p.add_argument("--langevin-steps", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stein-only", action="store_true",
                   help="only the Stein check of the end-state velocity score (seconds)")
    p.add_argument("--drift-check", action="store_true",
                   help="only run chains from the true x_T and measure how far they drift "
                        "(writes nbody_obs_drift.json; minutes)")
    return p


DRIFT_STEPS = (0, 50, 200, 800)


@torch.no_grad()
def drift_check(model: Any, op: Mask, x_0: torch.Tensor, x_T: torch.Tensor, n: int, seed: int,
                batch_size: int) -> list[dict[str, float]]:
    """Chains on p(x_T | y) started at the true x_T, an exact draw of that target (up to the
    position noise): a correct prior score keeps them there, so the reverse SDE from where they
    are after S steps must give x_0 samples as spread as from the truth itself, and within the
    prior's variance on average (the posterior's mean variance cannot exceed the prior's). Per S:
    the squared distance of the chains' velocities from the true v_T, and the x_0 samples'
    velocity spread and squared error."""
    m = x_T.shape[0]
    score = model.system.end_state_score(model)
    t_end = model.meta.times()[-1].float()
    precondition = model.system.end_state_preconditioner(model, op, torch.tensor(SIGMA))
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for steps in DRIFT_STEPS:
        if steps == 0:
            draws = x_T[:, None].expand(m, n, *x_T.shape[1:]).clone()
        else:
            draws, _ = sample_end_states(lambda x: score(x, t_end.expand(x.shape[0])), op,
                                         op(x_T), SIGMA, n, gen, steps, init=x_T, init_scale=0.0,
                                         precondition=precondition, step_factor=1.0)
        x0 = sample_posterior(model, draws.reshape(-1, *x_T.shape[1:]), 1, gen,
                              batch_size=batch_size).reshape(m, n, *x_T.shape[1:])
        rows.append({"steps": steps,
                     "v_T_distance": float((draws - x_T[:, None])[..., 2:].square().mean()),
                     "x0_velocity_spread": float(x0[..., 2:].var(1).mean()),
                     "x0_velocity_error": float((x0 - x_0[:, None])[..., 2:].square().mean()),
                     "x0_position_error": float((x0 - x_0[:, None])[..., :2].square().mean())})
        print("  ".join(f"{k} {v:.4g}" for k, v in rows[-1].items()), flush=True)
    return rows


@torch.no_grad()
def stein_check(model: Any, x_T: torch.Tensor) -> dict[str, float]:
    """E[s_v(x) (v − v̄)] over end states x (N, bodies, 4), per velocity coordinate averaged:
    −1 for the true ∇_v log p_T (Stein's identity); for s_θ(·, T) and the Tweedie score."""
    t = model.meta.times()[-1].float().expand(x_T.shape[0])
    centred = x_T - x_T.mean(0)
    out = {}
    for name, score in (("s_theta", model.score), ("tweedie", model.system.end_state_score(model))):
        out[name] = float((score(x_T, t) * centred)[..., 2:].mean(0).mean())
    return out


def write_drift_check(args: argparse.Namespace, model: Any, op: Mask, x_0: torch.Tensor,
                      x_T: torch.Tensor, out: Path) -> None:
    """--drift-check: the drift diagnostic's rows in nbody_obs_drift.json."""
    prior_variance = float(x_0[..., 2:].var(0).mean())
    print(f"prior variance of x_0's velocities: {prior_variance:.4g}")
    rows = drift_check(model, op, x_0, x_T, args.n_samples, args.seed, args.batch_size)
    write_text_atomic(out / "nbody_obs_drift.json", json.dumps({
        "command": "python benchmarks/nbody_obs.py --drift-check"
                   + (f" --limit {args.limit}" if args.limit else ""),
        "version": code_version(), "sigma_y": SIGMA, "test_states": x_T.shape[0],
        "chains": args.n_samples, "x0_velocity_prior_variance": prior_variance, "rows": rows},
        indent=2) + "\n")


def observed_targets(row: dict[str, Any], cost_ratio: float, max_rhat: float,
                     langevin_steps: int) -> list[dict[str, Any]]:
    """The targets of the positions-only posterior (`row`: its metrics)."""
    items = [("positions only: SBC χ² p per coordinate (Bonferroni)",
              row["sbc_p_per_coord_bonferroni"], "> 0.01", row["sbc_p_per_coord_bonferroni"] > 0.01),
             ("positions only: coverage90", row["coverage90"], "in [0.85, 0.95]",
              0.85 <= row["coverage90"] <= 0.95),
             ("positions only: cost per sample / full observation's", cost_ratio, "<= 5",
              cost_ratio <= 5)]
    if langevin_steps > 0:  # with no steps there are no chains to diagnose
        items.append(("positions only: largest split-R̂ of the end-state chains",
                      max_rhat, "<= 1.05 (diagnostic)", max_rhat <= 1.05))
    return targets_of(items)


def main() -> None:
    args = parser().parse_args()
    cfg = CONFIGS["quick" if args.quick else "full"]
    device = pick_device(args.device)
    data, out = ROOT / cfg["data"], ROOT / cfg["out"]
    script("generate.py", "--recipe", cfg["recipe"], "--out", str(data), *cfg["generate"])
    train_model(data, out / "true", ["--preset", "nbody", "--stages", cfg["stages"],
                                     "--physics", "true"], args.device, threads=1)
    model = load_model(out / "true" / "checkpoint.pt", device)
    added = with_end_state(model, data)  # recorded in the JSON
    stein = stein_check(model, read(data / "train.h5", simulator="nbody").x[:, -1].to(device))
    print("Stein check of the end-state velocity score, E[s_v (v - mean)] (exact: -1): "
          + ", ".join(f"{k} {v:.3f}" for k, v in stein.items()))
    if args.stein_only:
        return
    test = read(data / "test.h5", simulator="nbody", limit=args.limit)
    x_0, x_T = test.x[:, 0], test.x[:, -1]
    n, m = args.n_samples, x_T.shape[0]
    positions = torch.zeros(x_T.shape[1:])
    positions[:, :2] = 1
    op = Mask(positions)
    if args.drift_check:
        write_drift_check(args, model, op, x_0, x_T, out)
        return
    gen = torch.Generator().manual_seed(args.seed)
    y = op(x_T) + SIGMA * op(torch.randn(x_T.shape, generator=gen))
    rows: dict[str, dict[str, Any]] = {}

    gen = torch.Generator(device).manual_seed(args.seed + 1)
    t0 = time.perf_counter()
    full = sample_posterior(model, x_T.to(device), n, gen, batch_size=args.batch_size)
    full_cost = (time.perf_counter() - t0) / (m * n)
    rows["full x_T: SDE"] = model.system.evaluate(x_0, x_T, samples=full.cpu())
    rows["full x_T: SDE"]["seconds_per_sample"] = full_cost

    t0 = time.perf_counter()
    samples, _, diag = sample_posterior_observed(model, op, y.to(device), SIGMA, n, gen,
                                                 steps=args.langevin_steps,
                                                 batch_size=args.batch_size, step_factor=1.0)
    cost = (time.perf_counter() - t0) / (m * n)
    row = model.system.evaluate(x_0, x_T, samples=samples.cpu())
    row |= {"seconds_per_sample": cost, "max_rhat": diag.max_rhat,
            "rhat_median": float(diag.rhat.median()),
            "step_size": float(diag.step_size.median())}
    rows[f"positions only, σ_y = {SIGMA}: SDE"] = row
    print_table(rows, COLUMNS)
    targets = observed_targets(row, cost / full_cost, diag.max_rhat, args.langevin_steps)
    print_targets(targets)
    result = {"config": cfg, "flags": {k: str(v) for k, v in vars(args).items()},
              "command": "python benchmarks/nbody_obs.py" + (" --quick" if args.quick else ""),
              "version": code_version(), "device": str(device),
              "torch_threads": torch.get_num_threads(), "sigma_y": SIGMA, "rows": rows,
              "stein_check": stein, "end_state_from_data": added,
              "targets": targets}
    write_text_atomic(out / "nbody_obs.json", json.dumps(result, indent=2) + "\n")
    print(f"wrote {out / 'nbody_obs.json'}")


if __name__ == "__main__":
    main()
