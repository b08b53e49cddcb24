#!/usr/bin/env python3
"""What one smoke training update costs at 64² on this machine, piece by piece and whole.

Times, on real smoke-64 states: the batched inverse step without and with gradients
(simulators/smoke.py, factorised pressure solve), a forward + backward pass of the U-Net score,
and whole training updates (train.py's own loss: a batch of windows, the rollout, backward) with
the physics drift and without it (--physics none) at rollouts 1, 4, 8, 16 and 32, side by side in
one run. Target: an update through the physics costs at most 1.5× a network-only update of the
same rollout. Prints a table and writes JSON with targets.

Example:
    python benchmarks/smoke_speed.py     # needs datasets/smoke-64 (python benchmarks/smoke.py makes it)
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from common import ROOT, mean_seconds

from physdiff.cli import train
from physdiff.data import read
from physdiff.io import write_text_atomic
from physdiff.nets import GridScoreNet
from physdiff.runtime import code_version
from simulators import smoke


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT / "datasets/smoke-64/valid.h5"))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=6)  # 3 scattered by ±0.2 in the ratios
    p.add_argument("--rollouts", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    # one thread, as benchmarks/smoke.py trains: the factorised pressure solve is single-threaded
    # while the network uses every thread, so the ratio depends on the thread count (at 2:
    # 1.25-1.83, at 1: the committed JSON)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1, as training)")
    p.add_argument("--widths", type=int, nargs="+", default=[16],
                   help="U-Net widths of the training updates (16, the smoke-64 preset's); "
                        "others write speed-width<W1>-<W2>...json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    d = read(args.data, simulator="smoke", limit=args.batch)
    geometry, x = d.extras["geometry"], d.x[:, 50]
    mask = smoke.obstacle_mask(geometry, x.shape[-1])
    b = x.shape[0]
    rows = {f"inverse step, no grad, batch {b}": mean_seconds(
        lambda: smoke.step(x, geometry, 1.0, -1.0), args.repeats)}

    def with_grad() -> None:
        xr = x[:2].clone().requires_grad_(True)
        smoke.step(xr, geometry[:2], 1.0, -1.0).square().sum().backward()

    rows["inverse step fwd+bwd, per state (2 states)"] = mean_seconds(with_grad,
                                                                       args.repeats) / 2
    t = torch.full((b,), 0.3)
    for width in (16, 24):
        net = GridScoreNet(3, 1, tuple(x.shape[-2:]), 0.65, 100.0, width=width, depth=1)

        def net_step(net: GridScoreNet = net) -> None:
            net(x, t, mask).square().mean().backward()

        rows[f"U-Net width {width} fwd+bwd, batch {b}"] = mean_seconds(net_step, args.repeats)
    targets = []
    default = args.widths == [16]  # the preset's width alone: speed.json's rows and names
    for width in args.widths:
        label = "" if default else f", width {width}"
        for rollout in args.rollouts:
            cost = {physics: mean_seconds(update(Path(args.data).parent, physics, rollout,
                                                 width), args.repeats)
                    for physics in ("true", "none")}
            rows[f"training update, rollout {rollout}{label}, physics"] = cost["true"]
            rows[f"training update, rollout {rollout}{label}, network only"] = cost["none"]
            ratio = cost["true"] / cost["none"]
            targets.append({"name": "update through the physics / network-only, rollout "
                                    f"{rollout}{label}",
                            "value": ratio, "target": "<= 1.5", "met": ratio <= 1.5})
    for name, value in rows.items():
        print(f"{name:58s}{value:10.3f} s")
    for t_ in targets:
        print(f"{t_['name']}: {t_['value']:.2f} (target {t_['target']})")
    out = ROOT / ("benchmarks/results/smoke-64/speed"
                  + ("" if default else "-width" + "-".join(map(str, args.widths))) + ".json")
    command = "python benchmarks/smoke_speed.py" + (
        "" if default else " --widths " + " ".join(map(str, args.widths)) + " --rollouts "
        + " ".join(map(str, args.rollouts)) + f" --repeats {args.repeats}")
    write_text_atomic(out, json.dumps({"seconds": rows, "version": code_version(),
                                       "command": command,
                                       "torch_threads": torch.get_num_threads(),
                                       "flags": vars(args), "targets": targets},
                                      indent=2) + "\n")
    print(f"wrote {out}")


def update(data: Path, physics: str, rollout: int, width: int = 16) -> Callable[[], None]:
    """One training update of the smoke-64 preset (batch 8) with U-Net `width` at `rollout`:
    train.py's own batches and loss, then backward."""
    args = train.parser().parse_args(["--data", str(data), "--out", "unused", "--preset",
                                      "smoke-64", "--physics", physics, "--stages",
                                      f"{rollout}:1", "--device", "cpu", "--width", str(width)])
    run_ = train.setup(args)
    if run_.condition is not None:  # factorise every training geometry once, as a long run has
        with torch.no_grad():
            run_.system.physics_drift("true", None, run_.condition)(
                run_.data.x[:, 0], torch.zeros(run_.data.x.shape[0]))
    loss_fn = train.loss_function(run_)
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        run_.optimizer.zero_grad(set_to_none=True)
        loss_fn(rollout, gen).backward()

    return step


if __name__ == "__main__":
    main()
