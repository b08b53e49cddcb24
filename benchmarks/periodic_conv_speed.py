#!/usr/bin/env python3
"""Training-update cost of the heat score network with the two circular paddings, one thread:
`CircularConv2d` (physdiff/nets/circular.py: the backward folds the wrapped strips) against
`nn.Conv2d(padding_mode="circular")` (F.pad, whose backward fills padded-size zero tensors), in
the same network with the same weights.

The heat-32 architecture (PeriodicScoreNet, width 16, depth 1, spectral branch) at 32²: forward
and backward of a squared output, at the training batch sizes of one process (32) and of each of
two processes (16). The two variants alternate update by update, and the ratio is the median of
the paired ratios (this machine's speed drifts). Prints a table and writes
benchmarks/results/heat-sampler/periodic_conv_speed.json.

Example:
    OMP_NUM_THREADS=1 python benchmarks/periodic_conv_speed.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from common import ROOT
from torch import nn

from physdiff.io import write_text_atomic
from physdiff.nets import PeriodicScoreNet
from physdiff.nets.circular import CircularConv2d
from physdiff.runtime import code_version


def with_torch_padding(net: nn.Module) -> nn.Module:
    """The same network with every CircularConv2d replaced by PyTorch's circular Conv2d."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, CircularConv2d):
                plain = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                  padding=child.padding, padding_mode="circular")
                plain.load_state_dict(child.state_dict())
                setattr(module, name, plain)
    return net


def update_seconds(nets: dict[str, nn.Module], batch: int, repeats: int) -> dict[str, list[float]]:
    """Seconds of forward + backward per variant, the variants alternating."""
    gen = torch.Generator().manual_seed(batch)
    x, t = torch.randn(batch, 1, 32, 32, generator=gen), torch.rand(batch, generator=gen)
    times: dict[str, list[float]] = {name: [] for name in nets}
    for i in range(repeats + 3):
        for name, net in nets.items():
            net.zero_grad()
            t0 = time.perf_counter()
            net(x.clone().requires_grad_(), t).square().sum().backward()
            if i >= 3:  # warm-up
                times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=100)
    args = p.parse_args()
    torch.manual_seed(0)
    ours = PeriodicScoreNet(1, (32, 32), t_max=1.0, out_scale=10.0, width=16, depth=1)
    for param in ours.parameters():  # the zero-initialised layers would skip work
        nn.init.normal_(param, std=0.1)
    theirs = with_torch_padding(PeriodicScoreNet(1, (32, 32), 1.0, 10.0, width=16, depth=1))
    theirs.load_state_dict(ours.state_dict())
    nets = {"CircularConv2d": ours, "nn.Conv2d circular": theirs}
    rows = {}
    for batch in (32, 16):
        times = update_seconds(nets, batch, args.repeats)
        a, b = times["CircularConv2d"], times["nn.Conv2d circular"]
        ratio = statistics.median(u / v for u, v in zip(a, b, strict=True))
        rows[f"batch {batch}"] = {"CircularConv2d ms": 1e3 * statistics.median(a),
                                  "nn.Conv2d circular ms": 1e3 * statistics.median(b),
                                  "ratio": ratio}
    print(f"{'':10s}{'CircularConv2d ms':>20s}{'nn.Conv2d circular ms':>24s}{'ratio':>8s}")
    for name, r in rows.items():
        print(f"{name:10s}{r['CircularConv2d ms']:20.2f}{r['nn.Conv2d circular ms']:24.2f}"
              f"{r['ratio']:8.3f}")
    write_text_atomic(ROOT / "benchmarks/results/heat-sampler/periodic_conv_speed.json",
                      json.dumps({"command": "OMP_NUM_THREADS=1 python "
                                  "benchmarks/periodic_conv_speed.py", "version": code_version(),
                                  "torch_threads": torch.get_num_threads(),
                                  "repeats": args.repeats, "rows": rows,
                                  # issue 12 sets no target on this piece alone
                                  "targets": []}, indent=2) + "\n")


if __name__ == "__main__":
    main()
