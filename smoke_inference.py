"""infer.py for smoke (script layer): posterior samples and PF-ODE reconstructions of the states at
t = 0.35 and t = 0 from an observed state at T = 0.65, with the obstacles, metrics and figures."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

import smoke_plots
from cli import UsageError, read_observed_h5, write_h5_atomic, write_text_atomic
from physdiff.data import Metadata
from systems import code_version
from workflows import Model, check_observations, read_split, reconstruct, sample_posterior, timed

__all__ = ["MID_TIME", "infer_smoke", "mid_index"]

MID_TIME = 0.35  # the reference task: reconstruct t = 0.35 from t = 0.65 (method.md §5)


def mid_index(meta: Metadata) -> int:
    """Index of t = 0.35, or of the middle step for data that end before (small test cases)."""
    if meta.t_final > MID_TIME:
        return round(MID_TIME / meta.dt)
    return meta.n_steps // 2


def load_smoke_observed(path: Path, model: Model) -> tuple[torch.Tensor, torch.Tensor]:
    """x_T (M, 3, H, W) and the geometry (M, n, 5) from an .h5 file with 'x_T' (or 'x') and
    'geometry' (and optionally 'mask', checked)."""
    if path.suffix not in (".h5", ".hdf5"):
        raise UsageError(f"--observed {path}: smoke needs an .h5 file with datasets 'x_T' "
                         "(M, 3, H, W) and 'geometry' (M, n_obstacles, 5)")
    arr, arrays = read_observed_h5(path, ("geometry", "mask"))
    x_T = torch.from_numpy(arr).float()
    extras = {k: torch.from_numpy(v) for k, v in arrays.items()}
    condition = model.system.condition(extras, f"--observed {path}")
    if condition.shape[0] != x_T.shape[0]:
        raise UsageError(f"--observed {path}: {x_T.shape[0]} states but {condition.shape[0]} "
                         "obstacle geometries")
    return x_T, condition


def infer_smoke(args: argparse.Namespace, model: Model, device: torch.device) -> None:
    mid = mid_index(model.meta)
    truth = None
    if args.data is not None:
        data = read_split(args.data, model, args.limit)
        x_T, truth = data.x[:, -1], data.x[:, [mid, 0]]
        condition = model.system.condition(data.extras, str(args.data))
        source = str(args.data)
    else:
        x_T, condition = load_smoke_observed(args.observed, model)
        x_T, condition = x_T[:args.limit], condition[:args.limit]
        source = f"--observed {args.observed}"
    check_observations(x_T, model, source)
    x_T, condition = x_T.to(device), condition.to(device)
    n, batch = args.n_samples or 8, args.batch_size or 32
    gen = torch.Generator(device).manual_seed(args.seed)
    samples, t_sde = timed(lambda: sample_posterior(
        model, x_T, n, gen, args.noise, args.corrector_snr, batch, condition=condition,
        keep=(mid, 0)))
    ode, t_ode = timed(lambda: reconstruct(model, x_T, "ode", args.ode_method, batch,
                                           condition=condition, keep=(mid, 0)))
    m = x_T.shape[0]
    print(f"{m} observations: {n} SDE samples each in {t_sde:.1f} s "
          f"({t_sde / (m * n):.2f} s per sample), PF-ODE in {t_ode:.1f} s")
    arrays = {"samples_mid": samples[:, :, 0], "samples_0": samples[:, :, 1],
              "ode_mid": ode[:, 0], "ode_0": ode[:, 1], "observed": x_T, "geometry": condition}
    if truth is not None:
        arrays |= {"truth_mid": truth[:, 0], "truth_0": truth[:, 1]}
    write_h5_atomic(args.out / "posterior.h5", arrays, {
        "checkpoint": str(args.checkpoint), "source": source, "mid_time": mid * model.meta.dt,
        "flags": json.dumps({k: str(v) for k, v in vars(args).items()}),
        "version": code_version()})
    report: dict[str, Any] = {"observations": m, "n_samples": n, "mid_time": mid * model.meta.dt,
                              "seconds_per_sample": t_sde / (m * n), "seconds_per_ode": t_ode / m}
    if truth is not None:
        report |= smoke_report(model, truth.to(device), x_T, condition, samples, ode)
        for name in ("sde", "ode"):
            print(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in report[name].items()))
    write_text_atomic(args.out / "metrics.json", json.dumps(report, indent=2) + "\n")
    reference = data.x[0, :, 0].flip(0) if truth is not None else None
    figures(args.out, model, x_T, condition, samples, ode, truth, gen, reference, args.noise)
    print(f"wrote {args.out / 'posterior.h5'}, metrics.json, posterior.png, reverse.gif")


def smoke_report(model: Model, truth: torch.Tensor, x_T: torch.Tensor, condition: torch.Tensor,
                 samples: torch.Tensor, ode: torch.Tensor) -> dict[str, Any]:
    """Metrics at t = 0.35 (with re-simulation to T) and the smoke MSE at t = 0."""
    system, mid_t = model.system, mid_index(model.meta) * model.meta.dt
    sde = system.evaluate(truth[:, 0], x_T, condition, samples=samples[:, :, 0], t_start=mid_t)
    pf = system.evaluate(truth[:, 0], x_T, condition, point=ode[:, 0], t_start=mid_t)
    sde["mse_per_sample_t0"] = ((samples[:, :, 1, 0] - truth[:, None, 1, 0]).square().mean()
                                .item())
    pf["mse_t0"] = (ode[:, 1, 0] - truth[:, 1, 0]).square().mean().item()
    return {"sde": sde, "ode": pf}


def figures(out: Path, model: Model, x_T: torch.Tensor, condition: torch.Tensor,
            samples: torch.Tensor, ode: torch.Tensor, truth: torch.Tensor | None,
            gen: torch.Generator, reference: torch.Tensor | None = None,
            noise: str = "calibrated") -> None:
    """posterior.png (panels at t = 0.35 and 0) and reverse.gif (one reverse SDE trajectory of
    the first observation next to `reference`, its true smoke path (K + 1, H, W) in reverse
    order, when known)."""
    k = min(4, x_T.shape[0])
    s = samples[:k, :, :, 0].cpu()  # smoke channel (k, n, 2, H, W)
    cols = {f"observed t={model.meta.t_final:.2f}": x_T[:k, 0].cpu()}
    if truth is not None:
        cols["truth t=0.35"] = truth[:k, 0, 0].cpu()
    cols |= {"SDE mean t=0.35": s[:, :, 0].mean(1), "SDE std t=0.35": s[:, :, 0].std(1),
             "SDE sample t=0.35": s[:, 0, 0], "PF-ODE t=0.35": ode[:k, 0, 0].cpu()}
    if truth is not None:
        cols["truth t=0"] = truth[:k, 1, 0].cpu()
    cols["SDE mean t=0"] = s[:, :, 1].mean(1)
    smoke_plots.smoke_panels(out / "posterior.png", cols, condition[:k].cpu(), std="SDE std t=0.35")
    # one reverse trajectory of the first observation (reverse time order), every second frame
    _, paths = sample_posterior(model, x_T[:1], 1, gen, noise, progress=False,
                                return_paths=True, condition=condition[:1])
    frames = paths[0, 0, :, 0].flip(0)[::2].cpu()
    times = model.times(torch.device("cpu"))[::2].tolist()
    smoke_plots.smoke_animation(out / "reverse.gif", frames,
                                reference[::2] if reference is not None else frames,
                                condition[0].cpu(), times)
