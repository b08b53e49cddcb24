#!/usr/bin/env python3
"""Generate a trajectory dataset (train / valid / test HDF5 splits).

Examples:
    python generate.py --recipe datasets/heat-32.json --out datasets/heat-32
    python generate.py heat --n-train 100 --n-valid 20 --n-test 20 --size 16 --out /tmp/heat
    python generate.py --recipe datasets/nbody-5.json --out datasets/nbody-5
    python generate.py nbody --bodies 3 --masses 1,2,3 --n-train 200 --out /tmp/nbody
    python generate.py --recipe datasets/smoke-64.json --out datasets/smoke-64
    python generate.py --recipe datasets/smoke-64.json --out datasets/smoke-64 --shard 0/2 &
    python generate.py --recipe datasets/smoke-64.json --out datasets/smoke-64 --shard 1/2; wait
    python generate.py --recipe datasets/smoke-64.json --out datasets/smoke-64 --join

Heat states are Gaussian random fields stored normalised by the training split's scalar mean and
std (method.md §5). N-body states (N, 4) = x, y, vx, vy per body are stored in raw units (G = 1,
normalisation 0 / 1): positions uniform in a disk, Gaussian velocities, centre of mass at rest at
the origin; leapfrog with `--substeps` substeps per step and velocity kicks g √dt z per step.
Smoke states (3, H, W) = smoke, v_x, v_y at cell centres, raw units, start from rest; the obstacles
of every simulation are stored in /geometry and /mask (smoke_generation.py explains the parts,
shards, --join and resume).

Splits that already exist with the same parameters are kept (an interrupted run resumes);
each file is written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from cli import UsageError, apply_recipe, non_negative, positive, run
from physdiff.data import Metadata, up_to_date, write
from simulators import heat, nbody, smoke
from smoke_generation import generate_smoke
from systems import code_version

SPLITS = ("train", "valid", "test")
CHUNK = 250  # trajectories simulated at once; fixed so that files do not depend on memory


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("simulator", nargs="?", default="heat", choices=["heat", "nbody", "smoke"],
                   help="physical system (default: heat)")
    p.add_argument("--recipe", type=Path, help="JSON file of defaults, e.g. datasets/heat-32.json")
    p.add_argument("--out", type=Path, required=True, help="output folder for <split>.h5")
    p.add_argument("--n-train", type=positive(int), default=2500)
    p.add_argument("--n-valid", type=positive(int), default=500)
    p.add_argument("--n-test", type=positive(int), default=500)
    p.add_argument("--t-final", type=positive(float), help="end time T (heat 0.2, nbody 1, smoke "
                   "0.65)")
    p.add_argument("--steps", type=positive(int), help="time steps K, dt = T / K (heat 32, "
                   "nbody 20, smoke 65)")
    p.add_argument("--g", type=non_negative(float), help="noise scale, in normalised units "
                   "(heat 0.1, nbody 0.1, smoke 0.1 raw units)")
    heat_ = p.add_argument_group("heat")
    heat_.add_argument("--size", type=positive(int), default=32, help="grid size H = W (even)")
    heat_.add_argument("--exponent", type=float, default=4.0,
                       help="GRF prior P(k) = |k|^-exponent")
    nb = p.add_argument_group("nbody")
    nb.add_argument("--bodies", type=positive(int), default=5)
    nb.add_argument("--masses", default="equal",
                    help="'equal' (1/N each) or a comma list of N positive masses")
    nb.add_argument("--softening", type=positive(float), default=0.1, help="Plummer softening")
    nb.add_argument("--substeps", type=positive(int), default=10, help="leapfrog substeps/step")
    nb.add_argument("--radius", type=positive(float), default=1.0, help="prior disk radius")
    nb.add_argument("--velocity-scale", type=non_negative(float), default=0.3,
                    help="prior velocity std per component")
    sm = p.add_argument_group("smoke")
    sm.add_argument("--resolution", type=positive(int), default=64, help="cells per side")
    sm.add_argument("--boxes", default="1-2", help="boxes per simulation, N or MIN-MAX")
    sm.add_argument("--spheres", default="1-2", help="spheres per simulation, N or MIN-MAX")
    sm.add_argument("--advection", choices=["maccormack", "semi-lagrangian"],
                    default="maccormack", help="smoke advection scheme")
    sm.add_argument("--inflow-rate", type=non_negative(float), default=smoke.INFLOW_RATE,
                    help="smoke added per frame in the inflow sphere while t < 0.2")
    sm.add_argument("--shard", help="I/N: make only every N-th part, starting at I (no join)")
    sm.add_argument("--join", action="store_true", help="only join finished parts")
    p.add_argument("--seed", type=int, default=0)
    return p


def _split_generator(seed: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


DEFAULTS = {"heat": {"t_final": 0.2, "steps": 32, "g": 0.1},
            "nbody": {"t_final": 1.0, "steps": 20, "g": 0.1},
            "smoke": {"t_final": 0.65, "steps": 65, "g": 0.1}}


def generate(args: argparse.Namespace) -> None:
    for key, value in DEFAULTS[args.simulator].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.n_train < 2:
        raise UsageError("--n-train: need at least 2 trajectories to normalise")
    if args.simulator == "smoke":
        generate_smoke(args, code_version())
        return
    (generate_heat if args.simulator == "heat" else generate_nbody)(args)


def generate_heat(args: argparse.Namespace) -> None:
    if args.size % 2 or args.size < 4:
        raise UsageError(f"--size {args.size}: expected an even grid size >= 4")
    dt = args.t_final / args.steps
    counts = dict(zip(SPLITS, (args.n_train, args.n_valid, args.n_test), strict=True))
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
        if up_to_date(path, meta, (counts[split], args.steps + 1, 1, args.size, args.size)):
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


def parse_masses(text: str, n_bodies: int) -> list[float]:
    if text == "equal":
        return [1.0 / n_bodies] * n_bodies
    try:
        masses = [float(m) for m in text.split(",")]
    except ValueError:
        masses = []
    if len(masses) != n_bodies or not all(m > 0 and math.isfinite(m) for m in masses):
        raise UsageError(f"--masses {text!r}: expected 'equal' or {n_bodies} positive numbers "
                         "(one per body, --bodies)")
    return masses


def generate_nbody(args: argparse.Namespace) -> None:
    masses = parse_masses(args.masses, args.bodies)
    dt = args.t_final / args.steps
    m = torch.tensor(masses, dtype=torch.float64)
    params = {"bodies": args.bodies, "masses": masses, "softening": args.softening,
              "substeps": args.substeps, "radius": args.radius,
              "velocity_scale": args.velocity_scale, "t_final": args.t_final, "G": 1.0,
              "integrator": "leapfrog (kick-drift-kick)", "noise": "velocity kicks g sqrt(dt) z"}
    version = code_version()
    counts = dict(zip(SPLITS, (args.n_train, args.n_valid, args.n_test), strict=True))
    for i, split in enumerate(SPLITS):
        path = args.out / f"{split}.h5"
        meta = Metadata(simulator="nbody", dt=dt, g=args.g, n_steps=args.steps, seed=args.seed,
                        split=split, norm_mean=0.0, norm_std=1.0, version=version, params=params)
        if up_to_date(path, meta, (counts[split], args.steps + 1, args.bodies, 4)):
            print(f"{path}: up to date, kept")
            continue
        x0 = nbody.sample_prior(counts[split], args.bodies, m, _split_generator(args.seed, i),
                                radius=args.radius, velocity_scale=args.velocity_scale)
        noise_gen = _split_generator(args.seed, 100 + i)
        chunks = []
        for start in tqdm(range(0, counts[split], CHUNK), desc=f"{split:5s}", unit="chunk",
                          disable=None):
            chunks.append(nbody.rollout(x0[start:start + CHUNK], m, args.steps, dt, args.g,
                                        noise_gen, args.softening, args.substeps))
        x = torch.cat(chunks)
        if not torch.isfinite(x).all():
            raise UsageError("non-finite states: the integration blew up (reduce --t-final, or "
                             "raise --substeps or --softening)")
        write(path, x.float(), meta)
        print(f"{path}: {counts[split]} trajectories, {args.steps} steps of dt={dt:g}, "
              f"{args.bodies} bodies")


def main(argv: Sequence[str] | None = None) -> None:
    p = parser()
    apply_recipe(p, argv)
    run(generate, p, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
