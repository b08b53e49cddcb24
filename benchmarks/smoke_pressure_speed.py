#!/usr/bin/env python3
"""The smoke step with the cached-LU pressure projection vs PhiFlow's own CG solve, at 64².

States: 25 frames from rest with the inflow (t = 0.25), obstacles drawn per item
(`smoke.sample_obstacles`, seed 0). For each batch size, per state: the step without gradients,
and a forward + backward pass of the step (gradient w.r.t. the state), for the new path
(`smoke.step`, batched, SuperLU factorisations cached per geometry) and the old one
(`smoke.step_phiflow`: chunked batches without gradients, item by item with gradients); and the
set-up per geometry (PhiFlow's masks and matrix, and the factorisation alone). Run it with one
thread: OMP_NUM_THREADS=1. Prints a table and writes JSON.

Example:
    OMP_NUM_THREADS=1 python benchmarks/smoke_pressure_speed.py --batch 8 16
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
from common import ROOT, mean_seconds

from physdiff.io import write_text_atomic
from physdiff.runtime import code_version
from simulators import smoke, smoke_pressure


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[8, 16])
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--old-grad-items", type=int, default=2,
                   help="items timed for the old path with gradients (it runs item by item)")
    return p


def main() -> None:
    args = parser().parse_args()
    n = max(args.batch)
    geometry = smoke.sample_obstacles(n, torch.Generator().manual_seed(0))
    with torch.no_grad():
        x = smoke.rollout(smoke.initial_state(n, args.resolution), geometry, 25)[:, -1]
    t = 0.25

    smoke_pressure.cache_clear()
    t0 = time.perf_counter()
    projections = smoke._projections(geometry, args.resolution, x.dtype)
    rows = {"set-up per geometry (masks, matrix, LU)": (time.perf_counter() - t0) / n,
            "  of which LU factorisation": sum(q.factor_seconds for q in projections) / n}

    def grad_step(step: Callable[..., torch.Tensor], xs: torch.Tensor,
                  gs: torch.Tensor) -> Callable[[], None]:
        def run() -> None:
            xr = xs.clone().requires_grad_(True)
            step(xr, gs, t).square().sum().backward()
        return run

    for b in args.batch:
        xb, gb = x[:b], geometry[:b]
        with torch.no_grad():
            rows[f"new step, no grad, batch {b}, per state"] = mean_seconds(
                lambda xb=xb, gb=gb: smoke.step(xb, gb, t), args.repeats) / b
            rows[f"old step, no grad, batch {b}, per state"] = mean_seconds(
                lambda xb=xb, gb=gb: smoke.step_phiflow(xb, gb, t), args.repeats) / b
        rows[f"new step fwd+bwd, batch {b}, per state"] = mean_seconds(
            grad_step(smoke.step, xb, gb), args.repeats) / b
    k = args.old_grad_items
    rows[f"old step fwd+bwd, item by item, per state ({k} items)"] = mean_seconds(
        grad_step(smoke.step_phiflow, x[:k], geometry[:k]), args.repeats) / k
    for name, value in rows.items():
        print(f"{name:58s}{value * 1e3:10.1f} ms")
    b = max(args.batch)
    old_grad = rows[f"old step fwd+bwd, item by item, per state ({k} items)"]
    speedups = {"fwd+bwd": old_grad / rows[f"new step fwd+bwd, batch {b}, per state"],
                "no grad": (rows[f"old step, no grad, batch {b}, per state"]
                            / rows[f"new step, no grad, batch {b}, per state"])}
    # the issue's own figure for the exact adjoint was about 70x; we hold it to >= 20x
    targets = [{"name": f"smoke step {kind} speed-up over the PhiFlow-solve path, batch {b}",
                "value": value, "target": ">= 20" if kind == "fwd+bwd" else ">= 5",
                "met": value >= (20 if kind == "fwd+bwd" else 5)}
               for kind, value in speedups.items()]
    for t_ in targets:
        print(f"{t_['name']}: {t_['value']:.1f}x (target {t_['target']})")
    out = ROOT / f"benchmarks/results/smoke-{args.resolution}/pressure_speed.json"
    command = "python benchmarks/smoke_pressure_speed.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(args).items())
    write_text_atomic(out, json.dumps({"seconds": rows, "version": code_version(),
                                       "command": command,
                                       "torch_threads": torch.get_num_threads(),
                                       "flags": vars(args), "targets": targets},
                                      indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
