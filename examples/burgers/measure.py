"""Measure the README table of the Burgers plug-in.

Generates a dataset, trains with the system's physics (`--physics true`) and without
(`--physics none`) for the same updates, runs infer on the test split (calibrated noise, and
white noise for the physics model), scores three baselines with the library (the naive inverse:
P̃⁻¹ = 2x − S(x) iterated K times, i.e. the mean path of the physics model with a zero score; the
observed x_T taken as x_0; the prior mean 0), and writes every number, the commands and their
wall times to <out>/results.json, and a summary (`compact`) under --label into --results.

Run from the repository root, one thread; the plug-in need not be installed:
    OMP_NUM_THREADS=1 python examples/burgers/measure.py --out runs/burgers/main \
        --results examples/burgers/results.json --label main

The steps call physdiff's command-line mains in this process; the equivalent shell commands are
recorded in results.json. Wall times are of those calls (interpreter start-up and imports, about
3 s per command, not included).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import torch
from physdiff.cli import generate, infer, train
from physdiff.io import write_text_atomic
from physdiff.model import load_model, read_split, reconstruct

# the CLI finds the plug-in by its spec: put physdiff_burgers on the path, no install needed
sys.path.insert(0, str(Path(__file__).resolve().parent))

SPEC = "physdiff_burgers:BurgersSystem"
COLUMNS = ("mse_per_sample", "mse_of_mean", "mse", "spread", "coverage90", "resim_mse",
           "spectral_error")


def timed(label: str, script: str, main: Callable[[Sequence[str]], None], argv: list[str],
          record: dict[str, Any]) -> None:
    """Run a CLI main, record the equivalent command and its wall time."""
    print(f"\n$ python {script} {shlex.join(argv)}", flush=True)
    t0 = time.perf_counter()
    main(argv)
    record["wall_s"][label] = round(time.perf_counter() - t0, 1)
    record["commands"][label] = f"python {script} {shlex.join(argv)}"


def rounded(row: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    """The float entries to `digits` significant digits; non-finite ones as the string 'nan' /
    'inf' (valid JSON)."""
    return {k: float(f"{v:.{digits}g}") if math.isfinite(v) else str(v) for k, v in row.items()
            if isinstance(v, float)}


def baselines(checkpoint: Path, test: Path) -> dict[str, dict[str, Any]]:
    """Point estimates that need no score: the naive inverse, x_T itself, the prior mean 0."""
    model = load_model(checkpoint, "cpu")
    data = read_split(test, model)
    x_0, x_T = data.x[:, 0], data.x[:, -1]
    k_steps = model.meta.n_steps
    naive = reconstruct(model, x_T, "naive", keep=list(range(k_steps + 1)))  # (B, K + 1, 1, N)
    evaluate = model.system.evaluate
    rows = {"naive inverse (2x - S(x), zero score)": evaluate(x_0, x_T, point=naive[:, 0]),
            "observed x_T as x_0": evaluate(x_0, x_T, point=x_T),
            "prior mean (0)": evaluate(x_0, x_T, point=torch.zeros_like(x_0))}
    # how the naive inverse diverges: its error against the true x_k, going back from T
    growth = {}
    for k in range(k_steps, -1, -1):
        finite = torch.isfinite(naive[:, k]).flatten(1).all(1)
        mse = ((naive[finite, k] - data.x[finite, k]).double().square().mean().item()
               if finite.any() else float("nan"))
        growth[f"t={k * model.meta.dt:.2f}"] = {"finite_fraction": finite.double().mean().item(),
                                               "mse": mse}
    rows["naive inverse, by time"] = growth
    return rows


def paired(out: Path) -> dict[str, dict[str, float]]:
    """Per-observation errors of the physics model minus the network-only model (same test
    states): mean difference and its standard error over observations."""
    errors = {}
    for physics in ("true", "none"):
        with h5py.File(out / f"physics-{physics}" / "posterior" / "posterior.h5") as f:
            truth = torch.from_numpy(f["truth"][()]).double()  # (M, 1, N)
            samples = torch.from_numpy(f["samples"][()]).double()  # (M, n, 1, N)
            mean_path = torch.from_numpy(f["mean_path"][()]).double()
        errors[physics] = {
            "sde mse_per_sample": (samples - truth[:, None]).square().flatten(1).mean(1),
            "sde mse_of_mean": (samples.mean(1) - truth).square().flatten(1).mean(1),
            "mean_path mse": (mean_path - truth).square().flatten(1).mean(1)}
    result = {}
    for name, true_ in errors["true"].items():
        diff = true_ - errors["none"][name]
        result[name] = rounded({"mean": diff.mean().item(),
                                "se": (diff.std() / math.sqrt(diff.numel())).item()}, 3)
    return result


def compact(record: dict[str, Any]) -> dict[str, Any]:
    """The summary kept in --results: the generate and train commands (infer's follow from
    them), wall times, metric rows, the paired differences, and the naive inverse's error by
    time as {t: mse}, or {t: 'N % finite'} once some reconstructions are not finite."""
    commands = {k: v for k, v in record["commands"].items() if not k.startswith("infer")}
    naive = {t: v["mse"] if v["finite_fraction"] == 1 else f"{v['finite_fraction']:.0%} finite"
             for t, v in record["naive_inverse_by_time"].items()}
    keep = ("commands", "naive_inverse_by_time")
    return {"commands": commands, **{k: v for k, v in record.items() if k not in keep},
            "naive_inverse_mse_by_time": naive}


def dump(obj: Any) -> str:
    """JSON with every innermost object on one line."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\{\n\s+([^{}\[\]]*?)\n\s*\}",
                  lambda m: "{" + " ".join(ln.strip() for ln in m.group(1).splitlines()) + "}",
                  text) + "\n"


def _cell(value: float | str | None) -> str:
    if value is None:
        return " " * 15
    return f"{value:>15.4g}" if isinstance(value, float) else f"{value:>15s}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/burgers"))
    p.add_argument("--results", type=Path,
                   help="also store the record in this JSON file, under --label")
    p.add_argument("--label", default="main", help="key of this run in --results")
    p.add_argument("--n-train", default="600")
    p.add_argument("--n-valid", default="50")
    p.add_argument("--n-test", default="50")
    p.add_argument("--stages", default="1:1500,4:300")
    p.add_argument("--batch-size", default="32")
    p.add_argument("--width", default="16")
    p.add_argument("--depth", default="1")
    p.add_argument("--lr", default="1e-3")
    p.add_argument("--n-samples", default="16")
    p.add_argument("--seed", default="0", help="train.py's seed (network initialisation and "
                   "batches); the dataset always uses seed 0")
    return p


def main() -> None:
    p = parser()
    args = p.parse_args()
    out, data = args.out, args.out / "data"
    for physics in ("true", "none"):
        if (out / f"physics-{physics}" / "checkpoint.pt").exists():
            p.error(f"{out / f'physics-{physics}'} exists: remove it (or use another --out) to "
                    "measure the training time again")
    record: dict[str, Any] = {"commands": {}, "wall_s": {},
                              "threads": torch.get_num_threads(), "torch": torch.__version__}
    timed("generate", "generate.py", generate.main,
          [SPEC, "--n-train", args.n_train, "--n-valid", args.n_valid, "--n-test", args.n_test,
           "--out", str(data)], record)
    flags = ["--stages", args.stages, "--batch-size", args.batch_size, "--width", args.width,
             "--depth", args.depth, "--lr", args.lr, "--seed", args.seed, "--device", "cpu"]
    for physics in ("true", "none"):
        timed(f"train physics={physics}", "train.py", train.main,
              ["--data", str(data), "--out", str(out / f"physics-{physics}"), *flags,
               "--physics", physics], record)
    runs = {"true": "calibrated", "none": "calibrated", "true, white noise": "white"}
    for name, noise in runs.items():
        physics = name.split(",")[0]
        post = out / f"physics-{physics}" / ("posterior" if noise == "calibrated"
                                             else "posterior-white")
        timed(f"infer physics={name}", "infer.py", infer.main,
              ["--checkpoint", str(out / f"physics-{physics}" / "checkpoint.pt"),
               "--data", str(data / "test.h5"), "--out", str(post),
               "--n-samples", args.n_samples, "--noise", noise, "--device", "cpu"], record)
        report = json.loads((post / "metrics.json").read_text())
        if noise == "white":
            record.setdefault("rows", {})[f"physics {name}: SDE"] = rounded(report["sde"])
            continue
        for row in ("sde", "mean_path", "ode"):
            record.setdefault("rows", {})[f"physics {name}: {row}"] = rounded(report[row])
    record["paired_true_minus_none"] = paired(out)
    t0 = time.perf_counter()
    rows = baselines(out / "physics-true" / "checkpoint.pt", data / "test.h5")
    record["naive_inverse_by_time"] = {t: rounded(v)
                                       for t, v in rows.pop("naive inverse, by time").items()}
    for name, row in rows.items():
        record["rows"][name] = rounded(row)
    record["wall_s"]["baselines"] = round(time.perf_counter() - t0, 1)
    write_text_atomic(out / "results.json", dump(record))
    if args.results is not None:  # one file collects the labelled runs
        runs_ = json.loads(args.results.read_text()) if args.results.exists() else {}
        write_text_atomic(args.results, dump({**runs_, args.label: compact(record)}))
    print(f"\n{'':44s}" + "".join(f"{c:>15s}" for c in COLUMNS))
    for name, row in record["rows"].items():
        print(f"{name:44s}" + "".join(_cell(row.get(c)) for c in COLUMNS))
    print("physics true minus none, per observation (mean, standard error):",
          record["paired_true_minus_none"])
    print("wall times (s):", record["wall_s"])


if __name__ == "__main__":
    main()
