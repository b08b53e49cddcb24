#!/usr/bin/env python3
"""heat-32 against the Bayes limit: physdiff's posterior next to the exact one (docs/method.md §7, §8).

Generates the dataset from its recipe (kept when up to date), trains the benchmark model (multi-step
curriculum) and a one-step-only model with the same number of updates (both resumable: rerun the
same command after an interruption), then evaluates on the test end states with n posterior samples
each. Prints a table and writes it as JSON.

Rows: exact posterior mean and samples (the Bayes limit); physdiff's conditional-mean path,
PF-ODE, reverse SDE with calibrated noise (with and without a Langevin corrector) and with the
textbook white noise; the one-step-only model; the naive inverse physics with no score.

With --seeds 0,1,2 it also trains the benchmark model with further training seeds (two at a
time, one thread each) and reports, per seed, the mean path, the PF-ODE (against the discrete
c = 1/2 exact-kernel oracle of benchmarks/heat_oracles.py) and the reverse SDE, with every target
per seed and the mean and spread over seeds.

Examples:
    python benchmarks/heat.py --seeds 0,1,2   # full heat-32: about two hours on 2 CPU cores
    python benchmarks/heat.py --quick --seeds 0,1,2   # heat-demo data and the demo preset
"""

from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from common import ROOT, base_parser, print_targets, script, train_model
from heat_oracles import oracles

from physdiff.checks import comma_list, non_negative
from physdiff.cli.train import parse_stages
from physdiff.data import read
from physdiff.io import write_text_atomic
from physdiff.model import Model, load_model, reconstruct, sample_posterior, timed
from physdiff.runtime import code_version, pick_device
from physdiff.samplers import euler_maruyama
from physdiff.systems.heat import HeatSystem

CONFIGS = {
    "full": {"recipe": "datasets/heat-32.json", "data": "datasets/heat-32", "preset": "heat-32",
             "out": "benchmarks/results/heat-32"},
    "quick": {"recipe": "datasets/heat-demo.json", "data": "runs/bench-quick/data",
              "preset": "demo", "out": "benchmarks/results/heat-quick"},
}

COLUMNS = [("mse", "MSE"), ("mse_per_sample", "MSE/sample"), ("mse_of_mean", "MSE of mean"),
           ("recon_mse", "recon MSE"), ("spectral_error", "spec err")]


def parser() -> argparse.ArgumentParser:
    p = base_parser(__doc__, n_samples=16, batch_size=1000)
    p.add_argument("--corrector-snr", type=float, default=0.05)
    p.add_argument("--out", type=Path, help="results folder (default benchmarks/results/...)")
    p.add_argument("--seeds", default="0", type=comma_list(non_negative(int)),
                   help="training seeds of the benchmark model, e.g. 0,1,2 (the first one gets "
                   "every row, the others the mean path, PF-ODE and SDE)")
    return p


def naive_inverse(model: Model, x_T: torch.Tensor) -> torch.Tensor:
    """The backward physics step 2x − S(x) applied K times, no score, no noise."""
    drift = model.drift(score=lambda x, t: torch.zeros_like(x))
    return euler_maruyama(drift, x_T.double(), model.times(x_T.device).double(), model.meta.g,
                          noise=lambda x, i, gen: torch.zeros_like(x)).float()


def evaluate_all(args: argparse.Namespace, main: Path, one_step: Path, test: Path,
                 device: torch.device) -> dict[str, dict[str, Any]]:
    model = load_model(main, device)
    data = read(test, simulator="heat", limit=args.limit)
    x_0, x_T = data.x[:, 0], data.x[:, -1]
    exact = model.system.exact_posterior(x_T)
    n, m = args.n_samples, x_T.shape[0]
    x_T_dev = x_T.to(device)
    rows: dict[str, dict[str, Any]] = {}

    def add_samples(name: str, samples: torch.Tensor, seconds: float | None = None) -> None:
        rows[name] = model.system.evaluate(x_0, x_T, samples=samples.cpu(), exact=exact)
        if seconds is not None:
            rows[name]["seconds_per_sample"] = seconds / (m * n)

    def add_point(name: str, point: torch.Tensor, seconds: float | None = None) -> None:
        rows[name] = model.system.evaluate(x_0, x_T, point=point.cpu())
        if seconds is not None:
            rows[name]["seconds_per_sample"] = seconds / m

    add_point("exact posterior mean", exact.mean[:, None])
    add_samples("exact posterior samples",
                exact.sample(n, torch.Generator().manual_seed(1))[:, :, None].float())
    add_point("physdiff mean path", *timed(lambda: reconstruct(model, x_T_dev, "mean",
                                                                batch_size=args.batch_size)))
    add_point("physdiff PF-ODE", *timed(lambda: reconstruct(model, x_T_dev, "ode",
                                                             batch_size=args.batch_size)))
    for name, noise, snr in [("physdiff SDE", "calibrated", 0.0),
                             ("physdiff SDE + corrector", "calibrated", args.corrector_snr),
                             ("physdiff SDE, white noise", "white", 0.0)]:
        gen = torch.Generator(device).manual_seed(2)
        add_samples(name, *timed(lambda noise=noise, snr=snr, gen=gen: sample_posterior(
            model, x_T_dev, n, gen, noise, snr, args.batch_size)))
    one = load_model(one_step, device)
    gen = torch.Generator(device).manual_seed(2)
    add_samples("one-step loss only: SDE", *timed(lambda: sample_posterior(
        one, x_T_dev, n, gen, "calibrated", 0.0, args.batch_size)))
    add_point("one-step loss only: mean path", reconstruct(one, x_T_dev, "mean",
                                                           batch_size=args.batch_size))
    add_point("one-step loss only: PF-ODE", reconstruct(one, x_T_dev, "ode",
                                                        batch_size=args.batch_size))
    add_point("naive inverse physics", naive_inverse(model, x_T_dev))
    return rows


def seed_rows(args: argparse.Namespace, ckpt: Path, x_0: torch.Tensor, x_T: torch.Tensor,
              exact: Any, device: torch.device) -> dict[str, dict[str, Any]]:
    """The mean path, PF-ODE and calibrated SDE rows of a further training seed."""
    model = load_model(ckpt, device)
    x_T_dev, m = x_T.to(device), x_T.shape[0]
    system = model.system
    gen = torch.Generator(device).manual_seed(2)
    samples, seconds = timed(lambda: sample_posterior(model, x_T_dev, args.n_samples, gen,
                                                      "calibrated", 0.0, args.batch_size))
    rows = {"physdiff mean path": system.evaluate(x_0, x_T, point=reconstruct(
                model, x_T_dev, "mean", batch_size=args.batch_size).cpu()),
            "physdiff PF-ODE": system.evaluate(x_0, x_T, point=reconstruct(
                model, x_T_dev, "ode", batch_size=args.batch_size).cpu()),
            "physdiff SDE": system.evaluate(x_0, x_T, samples=samples.cpu(), exact=exact)}
    rows["physdiff SDE"]["seconds_per_sample"] = seconds / (m * args.n_samples)
    return rows


def print_table(rows: dict[str, dict[str, Any]], ref: dict[str, float]) -> None:
    bands = [k for k in rows["exact posterior samples"] if k.startswith("var_ratio")]
    cover = [k for k in rows["exact posterior samples"] if k.startswith("coverage90")]
    head = (f"{'':32s}" + "".join(f"{label:>12s}" for _, label in COLUMNS)
            + f"{'×Bayes':>10s}" + "".join(f"{'var ' + b.split()[1]:>12s}" for b in bands)
            + "".join(f"{'cov ' + c.split()[1]:>12s}" for c in cover) + f"{'s/sample':>10s}")
    print(head)
    for name, row in rows.items():
        cells = [f"{row[k]:12.4g}" if k in row else f"{'':12s}" for k, _ in COLUMNS]
        if "mse" in row:
            ratio = row["mse"] / ref["mse"]
        else:
            ratio = row["mse_per_sample"] / ref["mse_per_sample"]
        cells.append(f"{ratio:10.3f}" if math.isfinite(ratio) and ratio < 1e4 else f"{'>1e4':>10s}")
        cells += [f"{row[k]:12.3f}" if k in row else f"{'':12s}" for k in bands + cover]
        cells.append(f"{row['seconds_per_sample']:10.4f}" if "seconds_per_sample" in row
                     else f"{'':10s}")
        print(f"{name:32s}" + "".join(cells))
    print("×Bayes: MSE over the exact posterior mean's (point estimates), or MSE per sample over "
          "exact posterior samples' (samplers).")


def model_dir(out: Path, seed: int, first: int) -> Path:
    return out / "model" if seed == first else out / f"model-seed{seed}"


def train_all(args: argparse.Namespace, cfg: dict[str, str], data: Path, out: Path
              ) -> dict[str, float]:
    """The benchmark model for every seed and the one-step-only model (first seed); two at a
    time with one thread each when there are several; training seconds by run folder name."""
    preset = ["--preset", cfg["preset"]]
    steps = sum(s.steps for s in parse_stages(HeatSystem.presets[cfg["preset"]]["stages"], 1.0))
    jobs = {model_dir(out, seed, args.seeds[0]).name: preset + ["--seed", str(seed)]
            for seed in args.seeds}
    jobs["one-step"] = preset + ["--stages", f"1:{steps}", "--seed", str(args.seeds[0])]
    threads = 1 if len(jobs) > 2 else None
    with ThreadPoolExecutor(2 if threads else 1) as pool:  # separate processes
        futures = {name: pool.submit(train_model, data, out / name, extra, args.device, threads)
                   for name, extra in jobs.items()}
        return {name: f.result() for name, f in futures.items()}


def main() -> None:
    args = parser().parse_args()
    cfg = CONFIGS["quick" if args.quick else "full"]
    out = ROOT / (args.out or cfg["out"])
    device = pick_device(args.device)
    data = ROOT / cfg["data"]
    script("generate.py", "--recipe", cfg["recipe"], "--out", str(data))
    seconds = train_all(args, cfg, data, out)
    t_main, t_one = seconds["model"], seconds["one-step"]
    print(f"evaluating on {data / 'test.h5'} ({args.n_samples} samples per state)")
    rows = evaluate_all(args, out / "model" / "checkpoint.pt", out / "one-step" / "checkpoint.pt",
                        data / "test.h5", device)
    ref = {"mse": rows["exact posterior mean"]["mse"],
           "mse_per_sample": rows["exact posterior samples"]["mse_per_sample"]}
    print_table(rows, ref)
    test = read(data / "test.h5", simulator="heat", limit=args.limit)
    exact = load_model(out / "model" / "checkpoint.pt").system.exact_posterior(test.x[:, -1])
    per_seed = {args.seeds[0]: {k: rows[k] for k in ("physdiff mean path", "physdiff PF-ODE",
                                                     "physdiff SDE")}}
    for seed in args.seeds[1:]:
        per_seed[seed] = seed_rows(args, model_dir(out, seed, args.seeds[0]) / "checkpoint.pt",
                                   test.x[:, 0], test.x[:, -1], exact, device)
    oracle = oracles(data / "test.h5", args.limit)
    targets = heat_targets(rows, t_main, oracle)
    for seed, srows in per_seed.items():
        train_s = seconds[model_dir(out, seed, args.seeds[0]).name]
        targets += [dict(t, name=f"seed {seed}: {t['name']}")
                    for t in heat_targets(rows | srows, train_s, oracle)[:-1]]
    spread = seed_summary(targets, args.seeds)
    print_seeds(targets, spread, args.seeds)
    result = {"config": cfg, "flags": {k: str(v) for k, v in vars(args).items()},
              "command": "python benchmarks/heat.py" + (" --quick" if args.quick else "")
              + (f" --seeds {','.join(map(str, args.seeds))}" if len(args.seeds) > 1 else ""),
              "version": code_version(), "device": str(device),
              "torch_threads": torch.get_num_threads(), "train_seconds": seconds,
              "oracle": oracle, "rows": rows,
              "seed_rows": {str(k): v for k, v in per_seed.items()},
              "seed_summary": spread, "targets": targets}
    write_text_atomic(out / "heat.json", json.dumps(result, indent=2) + "\n")
    print(f"training: physdiff {t_main / 60:.1f} min, one-step only {t_one / 60:.1f} min; "
          f"wrote {out / 'heat.json'}")


def seed_summary(targets: list[dict[str, Any]], seeds: list[int]) -> dict[str, dict[str, Any]]:
    """Mean, min and max over seeds of every per-seed target, and whether all seeds met it."""
    out: dict[str, dict[str, Any]] = {}
    for t in targets:
        if not t["name"].startswith("seed "):
            continue
        base = t["name"].split(": ", 1)[1]
        entry = out.setdefault(base, {"values": [], "met": []})
        entry["values"].append(t["value"])
        entry["met"].append(t["met"])
    for entry in out.values():
        v = entry["values"]
        entry |= {"mean": sum(v) / len(v), "min": min(v), "max": max(v),
                  "all_met": all(entry["met"])}
    return out


def print_seeds(targets: list[dict[str, Any]], spread: dict[str, dict[str, Any]],
                seeds: list[int]) -> None:
    print(f"targets over {len(seeds)} training seed(s) {seeds}: mean [min, max], met by all")
    for name, e in spread.items():
        print(f"  {name:48s} {e['mean']:10.4g} [{e['min']:.4g}, {e['max']:.4g}]  "
              f"{'yes' if e['all_met'] else 'NO'}")
    print_targets([t for t in targets if not t["name"].startswith("seed ")])


def heat_targets(rows: dict[str, dict[str, Any]], train_seconds: float,
                 oracle: dict[str, Any]) -> list[dict[str, Any]]:
    """The heat-32 targets (issues 2 and 13), each as name / value / target / met; the PF-ODE is
    held to 1.1 × the discrete c = 1/2 exact-kernel oracle (benchmarks/heat_oracles.py) and to
    no worse than the one-step-only model's PF-ODE (the last entry)."""
    exact_mean = rows["exact posterior mean"]["mse"]
    exact_sample = rows["exact posterior samples"]["mse_per_sample"]
    sde, mean_path = rows["physdiff SDE"], rows["physdiff mean path"]
    ratios = [v for k, v in sde.items() if k.startswith("var_ratio")]
    pf, c_half = rows["physdiff PF-ODE"]["mse"], oracle["pf_step_c_half_over_bayes"]
    one_pf = rows["one-step loss only: PF-ODE"]["mse"]
    out = [("mean path MSE / exact posterior mean's", mean_path["mse"] / exact_mean, "<= 1.01",
            mean_path["mse"] / exact_mean <= 1.01),
           ("SDE MSE per sample / exact samples'", sde["mse_per_sample"] / exact_sample,
            "<= 1.10", sde["mse_per_sample"] / exact_sample <= 1.10),
           ("SDE variance ratio, worst band", max(ratios, key=lambda r: max(r / 1.25, 0.8 / r)),
            "in [0.8, 1.25]",
            all(0.8 <= r <= 1.25 for r in ratios)),
           ("SDE spectral error", sde["spectral_error"], "<= 0.2", sde["spectral_error"] <= 0.2),
           ("seconds per posterior sample", sde["seconds_per_sample"], "<= 0.04",
            sde["seconds_per_sample"] <= 0.04),
           ("training minutes", train_seconds / 60, "<= 90", train_seconds / 60 <= 90),
           ("ode: PF-ODE MSE / c = 1/2 oracle's", pf / exact_mean / c_half, "<= 1.10",
            math.isfinite(pf) and pf / exact_mean / c_half <= 1.10),
           # "the same or better" (issue 13): two trainings never agree to the last digit, so
           # "the same" is within 1 % (the PF-ODE's networks are the one-step stage's copy)
           ("ode: multi-step PF-ODE / one-step model's", pf / one_pf, "<= 1.01",
            math.isfinite(pf) and pf <= 1.01 * one_pf)]
    return [{"name": n, "value": v, "target": t, "met": bool(m)} for n, v, t, m in out]


if __name__ == "__main__":
    main()
