#!/usr/bin/env python3
"""What one smoke training update costs, piece by piece, at 64² on this machine.

Times, on real smoke-64 validation states (t = 0.5): the batched PhiFlow inverse step without
gradients (the one-step loss's physics), the same step with gradients (item by item with a
recomputed forward, as in multi-step rollouts; simulators/smoke.py), and a forward + backward
pass of the U-Net score at the widths of the presets. Prints a table and writes JSON.

Example:
    python benchmarks/smoke_speed.py     # needs datasets/smoke-64 (python benchmarks/smoke.py makes it)
"""

from __future__ import annotations

import argparse
import json

import torch
from common import ROOT, mean_seconds

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
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    d = read(args.data, simulator="smoke", limit=args.batch)
    geometry, x = d.extras["geometry"], d.x[:, 50]
    mask = smoke.obstacle_mask(geometry, x.shape[-1])
    b = x.shape[0]
    rows = {f"inverse step, no grad, batch {b}": mean_seconds(
        lambda: smoke.step(x, geometry, 1.0, -1.0), args.repeats)}

    def with_grad() -> None:
        xr = x[:2].clone().requires_grad_(True)
        smoke.step(xr, geometry[:2], 1.0, -1.0).square().sum().backward()

    rows["inverse step with grad, per state"] = mean_seconds(with_grad, args.repeats) / 2
    t = torch.full((b,), 0.3)
    for width in (16, 24):
        net = GridScoreNet(3, 1, tuple(x.shape[-2:]), 0.65, 100.0, width=width, depth=1)

        def net_step(net: GridScoreNet = net) -> None:
            net(x, t, mask).square().mean().backward()

        rows[f"U-Net width {width} fwd+bwd, batch {b}"] = mean_seconds(net_step, args.repeats)
    for name, value in rows.items():
        print(f"{name:40s}{value:10.3f} s")
    out = ROOT / "benchmarks/results/smoke-64/speed.json"
    write_text_atomic(out, json.dumps({"seconds": rows, "version": code_version(),
                                       "torch_threads": torch.get_num_threads(),
                                       "flags": vars(args)}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
