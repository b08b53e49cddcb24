#!/usr/bin/env python3
"""Generate a trajectory dataset (train / valid / test HDF5 splits).

Examples:
    python generate.py --recipe datasets/heat-32.json --out datasets/heat-32
    python generate.py heat --n-train 100 --n-valid 20 --n-test 20 --size 16 --out /tmp/heat

Splits that already exist with the same parameters are kept (an interrupted run resumes);
each file is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from cli import UsageError, apply_recipe, non_negative, positive, run
from physdiff.data import DataError, Metadata, read_metadata, write
from simulators import heat
from systems import code_version

SPLITS = ("train", "valid", "test")
CHUNK = 250  # trajectories simulated at once; fixed so that files do not depend on memory


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("simulator", nargs="?", default="heat", choices=["heat"],
                   help="physical system (default: heat)")
    p.add_argument("--recipe", type=Path, help="JSON file of defaults, e.g. datasets/heat-32.json")
    p.add_argument("--out", type=Path, required=True, help="output folder for <split>.h5")
    p.add_argument("--n-train", type=positive(int), default=2500)
    p.add_argument("--n-valid", type=positive(int), default=500)
    p.add_argument("--n-test", type=positive(int), default=500)
    p.add_argument("--size", type=positive(int), default=32, help="grid size H = W (even)")
    p.add_argument("--exponent", type=float, default=4.0, help="GRF prior P(k) = |k|^-exponent")
    p.add_argument("--t-final", type=positive(float), default=0.2, help="end time T")
    p.add_argument("--steps", type=positive(int), default=32, help="time steps K (dt = T / K)")
    p.add_argument("--g", type=non_negative(float), default=0.1,
                   help="noise scale, in normalised units")
    p.add_argument("--seed", type=int, default=0)
    return p


def _split_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def _matches(path: Path, meta: Metadata, n: int, size: int) -> bool:
    try:
        old, shape = read_metadata(path, meta.simulator)
    except DataError:
        return False
    # the code version may differ: same parameters and seed give the same data
    return replace(old, version=meta.version) == meta and shape == (n, meta.n_steps + 1, 1, size, size)


def generate(args: argparse.Namespace) -> None:
    if args.size % 2 or args.size < 4:
        raise UsageError(f"--size {args.size}: expected an even grid size >= 4")
    dt = args.t_final / args.steps
    counts = dict(zip(SPLITS, (args.n_train, args.n_valid, args.n_test), strict=True))
    if args.n_train < 2:
        raise UsageError("--n-train: need at least 2 trajectories to normalise")
    # Normalisation: scalar mean and std of the training split's initial states (method.md §5).
    x0 = {s: heat.sample_prior(counts[s], args.size, args.size, args.exponent,
                               _split_generator(args.seed, i)) for i, s in enumerate(SPLITS)}
    mean, std = x0["train"].mean().item(), x0["train"].std().item()
    params = {"exponent": args.exponent, "size": args.size, "t_final": args.t_final,
              "kappa": 1.0, "domain": "2pi-periodic square"}
    version = code_version()
    for i, split in enumerate(SPLITS):
        path = args.out / f"{split}.h5"
        meta = Metadata(simulator="heat", dt=dt, g=args.g, n_steps=args.steps, seed=args.seed,
                        split=split, norm_mean=mean, norm_std=std, version=version, params=params)
        if path.exists() and _matches(path, meta, counts[split], args.size):
            print(f"{path}: up to date, kept")
            continue
        noise_gen = _split_generator(args.seed, 100 + i)
        x = (x0[split] - mean) / std
        chunks = []
        for start in tqdm(range(0, counts[split], CHUNK), desc=f"{split:5s}", unit="chunk",
                          disable=None):
            chunk = x[start:start + CHUNK, None]  # (B, 1, H, W)
            chunks.append(heat.rollout(chunk, args.steps, dt, args.g, noise_gen).float())
        write(path, torch.cat(chunks), meta)
        print(f"{path}: {counts[split]} trajectories, {args.steps} steps of dt={dt:g}, "
              f"state (1, {args.size}, {args.size})")
    print(f"normalisation: mean={mean:.6g} std={std:.6g} (training split initial states)")
    if not math.isfinite(std) or std == 0:
        raise UsageError("degenerate dataset: zero or non-finite standard deviation")


def main(argv: Sequence[str] | None = None) -> None:
    p = parser()
    apply_recipe(p, argv)
    run(generate, p, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
