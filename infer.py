#!/usr/bin/env python3
"""Posterior samples of the initial state x_0 given observed end states x_T.

Writes n reverse-SDE samples per observed state, the probability-flow ODE reconstruction and the
noise-free conditional-mean path, and, when the truth is known (a dataset split), a metrics table
(printed and metrics.json) and figures.

Examples:
    python infer.py --checkpoint runs/demo/checkpoint.pt --data runs/demo/data/test.h5 --out runs/demo/posterior
    python infer.py --checkpoint runs/demo/checkpoint.pt --observed my_states.npy --out runs/mine

--observed takes a .npy array or an .h5 file with a dataset 'x_T' (or 'x'), of shape (M, *state):
(M, H, W) or (M, 1, H, W) for heat, (M, N, 4) = x, y, vx, vy per body for nbody; in the
normalised units of the training data unless --raw is given (nbody data are raw units).

Outputs in --out: posterior.h5 (samples (M, n, *state), ode, mean_path, observed, truth when
known, and for nbody the reverse paths (M, n, K + 1, N, 4); attrs record the checkpoint, flags
and code version), metrics.json, posterior.png, and spectra.png (heat) or sbc_ranks.png (nbody,
simulation-based calibration when the truth is known).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

import plots
from cli import (
    UsageError,
    non_negative,
    positive,
    read_observed_h5,
    run,
    write_h5_atomic,
    write_text_atomic,
)
from physdiff import calibration
from smoke_inference import infer_smoke
from systems import code_version, pick_device
from workflows import (
    check_observations,
    evaluate,
    load_model,
    read_split,
    reconstruct,
    sample_posterior,
    timed,
)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="dataset split (.h5): observe x_T, score vs x_0")
    src.add_argument("--observed", type=Path, help="your own end states (.npy or .h5)")
    p.add_argument("--raw", action="store_true",
                   help="--observed is in raw units: normalise with the training statistics")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--limit", type=positive(int), help="use only the first N observations")
    p.add_argument("--n-samples", type=positive(int),
                   help="posterior samples per observation (default 16 for heat, 8 for smoke; 19 for nbody, "
                   "where 50 %% and 90 %% rank intervals are then exact)")
    p.add_argument("--noise", choices=["calibrated", "white"], default="calibrated",
                   help="reverse-step noise: calibrated residual spectra, or textbook g√dt")
    p.add_argument("--corrector-snr", type=non_negative(float), default=0.0,
                   help="Langevin corrector signal-to-noise ratio (0 = off)")
    p.add_argument("--ode-method", default="euler", choices=["euler", "midpoint", "rk4"])
    p.add_argument("--batch-size", type=positive(int),
                   help="samples integrated at once (default 512; smoke 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    return p


def load_observed(path: Path, state_shape: tuple[int, ...]) -> torch.Tensor:
    if not path.exists():
        raise UsageError(f"--observed {path}: no such file")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise UsageError(f"--observed {path}: not a readable .npy array ({err})") from None
    else:
        arr, _ = read_observed_h5(path)
    if len(state_shape) == 3 and state_shape[0] == 1 and arr.ndim == 3:
        arr = arr[:, None]  # single-channel fields given as (M, H, W)
    if (arr.ndim != len(state_shape) + 1 or not np.issubdtype(arr.dtype, np.number)
            or tuple(arr.shape[1:]) != tuple(state_shape)):
        raise UsageError(f"--observed {path}: expected numbers of shape (M, "
                         f"{', '.join(map(str, state_shape))}) as the checkpoint was trained on, "
                         f"got {arr.dtype} {arr.shape}")
    return torch.from_numpy(np.asarray(arr, dtype=np.float32))


def infer(args: argparse.Namespace) -> None:
    device = pick_device(args.device)
    model = load_model(args.checkpoint, device)
    if model.meta.simulator == "smoke":
        infer_smoke(args, model, device)
        return
    args.batch_size = args.batch_size or 512
    truth = None
    if args.data is not None:
        data = read_split(args.data, model, args.limit)
        x_T, truth = data.x[:, -1], data.x[:, 0]
        source = str(args.data)
    else:
        x_T = load_observed(args.observed, tuple(model.system.state_shape))[:args.limit]
        source = f"--observed {args.observed}"
        if args.raw:
            x_T = (x_T - model.meta.norm_mean) / model.meta.norm_std
    check_observations(x_T, model, source)
    x_T = x_T.to(device)
    gen = torch.Generator(device).manual_seed(args.seed)
    m = x_T.shape[0]
    particles = model.meta.simulator == "nbody"  # small states: keep the reverse paths
    n = args.n_samples or (19 if particles else 16)
    out, t_sde = timed(lambda: sample_posterior(model, x_T, n, gen, args.noise,
                                                args.corrector_snr, args.batch_size,
                                                return_paths=particles))
    samples, paths = out if particles else (out, None)
    ode, t_ode = timed(lambda: reconstruct(model, x_T, "ode", args.ode_method, args.batch_size))
    mean_path = reconstruct(model, x_T, "mean", batch_size=args.batch_size)
    print(f"{m} observations: {n} SDE samples each in {t_sde:.1f} s "
          f"({t_sde / (m * n) * 1e3:.2f} ms per sample), PF-ODE in {t_ode:.1f} s")
    arrays = {"samples": samples, "ode": ode, "mean_path": mean_path, "observed": x_T}
    if truth is not None:
        arrays["truth"] = truth
    if paths is not None:
        arrays["paths"] = paths
    write_h5_atomic(args.out / "posterior.h5", arrays, {
        "checkpoint": str(args.checkpoint), "source": source, "flags": json.dumps(
            {k: str(v) for k, v in vars(args).items()}), "version": code_version(),
        "norm_mean": model.meta.norm_mean, "norm_std": model.meta.norm_std})
    report = {"observations": m, "n_samples": n, "seconds_per_sample": t_sde / (m * n),
              "seconds_per_ode": t_ode / m}
    exact = model.system.exact_posterior(x_T.cpu())  # None where no closed form exists
    # one draw of exact samples serves the metrics and the spectra figure
    exact_samples = (None if exact is None
                     else exact.sample(n, torch.Generator().manual_seed(args.seed)).float())
    if truth is not None:
        samples_c, truth_c = samples.cpu(), truth
        paths_c = None if paths is None else paths.cpu().flatten(0, 1)
        report["sde"] = evaluate(model.system, truth_c, x_T.cpu(), samples=samples_c, exact=exact,
                                 paths=paths_c)
        if particles:  # the data's own trajectories as the reference for physical sanity
            report["truth"] = evaluate(model.system, truth_c, x_T.cpu(), point=truth_c,
                                       paths=data.x)
        report["ode"] = evaluate(model.system, truth_c, x_T.cpu(), point=ode.cpu())
        report["mean_path"] = evaluate(model.system, truth_c, x_T.cpu(), point=mean_path.cpu())
        if exact is not None:
            report["exact_mean"] = evaluate(model.system, truth_c, x_T.cpu(),
                                            point=exact.mean[:, None])
            report["exact_samples"] = evaluate(model.system, truth_c, x_T.cpu(),
                                               samples=exact_samples[:, :, None],
                                               exact=exact)
        print_table(report)
    write_text_atomic(args.out / "metrics.json", json.dumps(report, indent=2) + "\n")
    if particles:
        nbody_figures(args.out, x_T.cpu(), samples.cpu(), truth, paths.cpu())
        print(f"wrote {args.out / 'posterior.h5'}, metrics.json, posterior.png"
              + (", sbc_ranks.png" if truth is not None else ""))
        return
    figures(args.out, x_T.cpu(), samples.cpu(), truth, ode.cpu(), exact, exact_samples)
    print(f"wrote {args.out / 'posterior.h5'}, metrics.json, posterior.png, spectra.png")


def nbody_figures(out: Path, x_T: torch.Tensor, samples: torch.Tensor,
                  truth: torch.Tensor | None, paths: torch.Tensor) -> None:
    k = min(4, x_T.shape[0])
    plots.nbody_posterior(out / "posterior.png", x_T[:k], samples[:k],
                          None if truth is None else truth[:k], paths[:k])
    if truth is None:
        return
    n = samples.shape[1]
    ranks = calibration.sbc_ranks(samples.flatten(2).double(), truth.flatten(1).double(),
                                  torch.Generator().manual_seed(0))
    n_bins = n + 1 if n < 40 else max(d for d in range(1, 41) if (n + 1) % d == 0)
    plots.rank_histogram(out / "sbc_ranks.png", calibration.rank_histogram(ranks, n, n_bins), n,
                         f"SBC: {ranks.shape[0]} cases x {ranks.shape[1]} coordinates")


def figures(out: Path, x_T: torch.Tensor, samples: torch.Tensor, truth: torch.Tensor | None,
            ode: torch.Tensor, exact: object | None, exact_samples: torch.Tensor | None) -> None:
    f = plots.to_fields
    k = min(4, x_T.shape[0])
    exact_mean = exact.mean[:k] if exact is not None else None
    plots.posterior_panels(out / "posterior.png", f(x_T[:k]), f(samples[:k]),
                           None if truth is None else f(truth[:k]), f(ode[:k]), exact_mean)
    curves = {"posterior samples": f(samples), "PF-ODE": f(ode)}
    if truth is not None:
        curves = {"truth": f(truth), **curves}
    if exact_samples is not None:
        curves["exact posterior samples"] = exact_samples
    plots.power_spectra(out / "spectra.png", curves)


def print_table(report: dict) -> None:
    names = [n for n in ("sde", "ode", "mean_path", "exact_mean", "exact_samples", "truth")
             if n in report]
    keys = [k for k in ("mse", "mse_per_sample", "mse_of_mean", "recon_mse", "spectral_error",
                        "mse_pos", "mse_pos_per_sample", "mse_pos_of_mean", "resim_dist")
            if any(k in report[n] for n in names)]
    w = max(16, *(len(k) + 2 for k in keys))
    print(f"{'':14s}" + "".join(f"{k:>{w}s}" for k in keys))
    for name in names:
        row = report[name]
        print(f"{name:14s}" + "".join(f"{row[k]:{w}.5f}" if k in row else " " * w
                                      for k in keys))
    bands = [k for k in report["sde"] if k.startswith(("var_ratio ", "coverage90 "))]
    if bands:
        with_bands = [n for n in names if bands[0] in report[n]]
        print(f"{'':28s}" + "".join(f"{n:>16s}" for n in with_bands))
        for k in bands:
            print(f"  {k:26s}" + "".join(f"{report[n][k]:16.3f}" for n in with_bands))
    extra = [k for k in report["sde"]  # system-level calibration; heat's per-band rows are above
             if k.startswith(("coverage", "sbc", "energy", "momentum")) and " " not in k]
    for k in extra:
        ref = report.get("truth", {}).get(k)
        print(f"  {k:26s}{report['sde'][k]:16.4g}" + (f"   (data: {ref:.4g})" if ref else ""))
    if "exact_samples" in report:
        print(f"  (coverage90 of {report['n_samples']} exact samples is below 0.9 by design: the "
              "empirical interval of n draws holds a new draw with probability < 0.9)")


def main(argv: Sequence[str] | None = None) -> None:
    run(infer, parser(), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
