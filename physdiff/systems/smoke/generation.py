"""Smoke dataset generation (SmokeSystem.generate): parts, shards, resume, join.

A split is made in parts of `PART` consecutive simulations by the generic machinery of
physdiff/systems/generation.py (generate.py's --shard I/N and --join; a killed run resumes). Every
simulation draws its obstacles and its noise from its own seeded generator
(`simulation_generator`), so the data do not depend on how the work is split.

Data: x_{k+1} = S(x_k) + g √dt z_k · (1 − mask), z_k ~ N(0, I) on all three channels (smoke,
v_x, v_y at cell centres), no noise inside obstacles; raw units (normalisation 0 / 1). Each file
holds /geometry (N, n_obstacles, 5) and /mask (N, 1, H, W) (simulators/smoke.py conventions).
"""

from __future__ import annotations

import argparse
import re

import torch

from physdiff.checks import UsageError
from physdiff.data import Metadata
from physdiff.systems.generation import (
    SPLITS,
    Part,
    generate_in_parts,
    randn_per_simulation,
    simulation_generator,
)
from simulators import smoke

__all__ = ["PART", "generate_smoke", "parse_range", "simulate"]

PART = 11  # simulations per part: one projection chunk at 64² (smoke.max_chunk)


def parse_range(text: str, flag: str) -> tuple[int, int]:
    """'1-2' or '2' -> (min, max) obstacle counts."""
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if match is None or (match[2] is not None and int(match[2]) < int(match[1])):
        raise UsageError(f"{flag} {text!r}: expected a count N or a range MIN-MAX (e.g. 1-2)")
    return int(match[1]), int(match[2] if match[2] is not None else match[1])


_generator = simulation_generator  # the per-simulation seeding (tests reach it by this name)


def simulate(meta: Metadata, split_index: int, start: int, stop: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Simulations start..stop−1 of a split: trajectories (n, K + 1, 3, H, W), geometry, mask."""
    p = meta.params
    res, frame = int(p["resolution"]), meta.dt / smoke.FRAME_TIME
    gens = [simulation_generator(meta.seed, split_index, i) for i in range(start, stop)]
    geometry = torch.cat([smoke.sample_obstacles(1, gen, boxes=tuple(p["boxes"]),
                                                 spheres=tuple(p["spheres"])) for gen in gens])
    mask = smoke.obstacle_mask(geometry, res)
    x = smoke.initial_state(stop - start, res)
    states = [x]
    for k in range(meta.n_steps):
        x = smoke.step(x, geometry, k * meta.dt, frame, p["advection"] == "maccormack",
                       float(p["inflow_rate"]))
        z = randn_per_simulation(gens, tuple(x.shape[1:]), x.dtype)
        x = x + meta.g * meta.dt**0.5 * z * (1 - mask)
        states.append(x)
    return torch.stack(states, dim=1), geometry, mask


def generate_smoke(args: argparse.Namespace, system_id: str, version: str) -> None:
    boxes, spheres = parse_range(args.boxes, "--boxes"), parse_range(args.spheres, "--spheres")
    if args.resolution < 8:
        raise UsageError(f"--resolution {args.resolution}: expected at least 8 cells")
    dt = args.t_final / args.steps
    params = {"resolution": args.resolution, "boxes": list(boxes), "spheres": list(spheres),
              "advection": args.advection, "inflow_rate": args.inflow_rate,
              "t_final": args.t_final, "domain": smoke.DOMAIN, "buoyancy": smoke.BUOYANCY,
              "inflow": "sphere (50, 10) r 5 while t < 0.2", "frame_time": smoke.FRAME_TIME,
              "boundary": "walls left/right/bottom, open top", "units": "raw",
              "noise": "g sqrt(dt) z on smoke, vx, vy outside obstacles"}
    counts = dict(zip(SPLITS, (args.n_train, args.n_valid, args.n_test), strict=True))
    metas = {split: Metadata(simulator=system_id, dt=dt, g=args.g, n_steps=args.steps,
                             seed=args.seed, split=split, norm_mean=0.0, norm_std=1.0,
                             version=version, params=params) for split in SPLITS}

    def simulate_part(part: Part) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x, geometry, mask = simulate(metas[part.split], part.split_index, part.start, part.stop)
        return x, {"geometry": geometry, "mask": mask}

    generate_in_parts(args.out, metas, counts, (3, args.resolution, args.resolution),
                      simulate_part, PART, args.shard,
                      args.join, label="smoke",
                      describe=", obstacles in /geometry and /mask")
