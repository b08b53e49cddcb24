"""Smoke dataset generation (SmokeSystem.generate): parts, shards, resume, join.

A split of M simulations is cut into parts of `PART` consecutive simulations, each written to
`<out>/parts/<split>-<start>-<stop>.h5` (a complete physdiff trajectory file, atomically). Every
simulation draws its obstacles and its noise from its own seeded generator, so the data do not
depend on how the work is split: `--shard I/N` makes the parts whose index is I mod N (run N such
processes side by side), a run without --shard makes the missing parts and joins them into
`<split>.h5` (then deletes the parts), and `--join` only joins. A killed run resumes: parts
already on disk with the same parameters are kept.

Data: x_{k+1} = S(x_k) + g √dt z_k · (1 − mask), z_k ~ N(0, I) on all three channels (smoke,
v_x, v_y at cell centres), no noise inside obstacles; raw units (normalisation 0 / 1). Each file
holds /geometry (N, n_obstacles, 5) and /mask (N, 1, H, W) (simulators/smoke.py conventions).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from tqdm import tqdm

from physdiff.checks import UsageError
from physdiff.data import DataError, Metadata, read, up_to_date, write
from physdiff.systems.generation import SPLITS
from simulators import smoke

__all__ = ["PART", "generate_smoke", "parse_range", "parse_shard"]

PART = 11  # simulations per part: one projection chunk at 64² (smoke.max_chunk)


def parse_range(text: str, flag: str) -> tuple[int, int]:
    """'1-2' or '2' -> (min, max) obstacle counts."""
    match = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
    if match is None or (match[2] is not None and int(match[2]) < int(match[1])):
        raise UsageError(f"{flag} {text!r}: expected a count N or a range MIN-MAX (e.g. 1-2)")
    return int(match[1]), int(match[2] if match[2] is not None else match[1])


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N) with 0 <= I < N."""
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if match is None or not int(match[1]) < int(match[2]):
        raise UsageError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/2")
    return int(match[1]), int(match[2])


def _generator(seed: int, split: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + (split + 1) * 10_000_019 + index)


def simulate(meta: Metadata, split_index: int, start: int, stop: int
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Simulations start..stop−1 of a split: trajectories (n, K + 1, 3, H, W), geometry, mask."""
    p = meta.params
    res, frame = int(p["resolution"]), meta.dt / smoke.FRAME_TIME
    gens = [_generator(meta.seed, split_index, i) for i in range(start, stop)]
    geometry = torch.cat([smoke.sample_obstacles(1, gen, boxes=tuple(p["boxes"]),
                                                 spheres=tuple(p["spheres"])) for gen in gens])
    mask = smoke.obstacle_mask(geometry, res)
    x = smoke.initial_state(stop - start, res)
    states = [x]
    for k in range(meta.n_steps):
        x = smoke.step(x, geometry, k * meta.dt, frame, p["advection"] == "maccormack",
                       float(p["inflow_rate"]))
        z = torch.stack([torch.randn(x.shape[1:], generator=gen) for gen in gens])
        x = x + meta.g * meta.dt**0.5 * z * (1 - mask)
        states.append(x)
    return torch.stack(states, dim=1), geometry, mask


def _parts(counts: dict[str, int]) -> list[tuple[int, str, int, int]]:
    """(split index, split, start, stop) of every part, in a fixed order."""
    return [(i, split, start, min(start + PART, counts[split]))
            for i, split in enumerate(SPLITS) for start in range(0, counts[split], PART)]


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
    state = (3, args.resolution, args.resolution)
    parts_dir = args.out / "parts"
    todo = _parts(counts)
    if args.shard is not None:
        index, n_shards = parse_shard(args.shard)
        todo = todo[index::n_shards]
    if not args.join:
        _make_parts(todo, metas, counts, parts_dir, state)
    if args.shard is None:
        for split in SPLITS:
            _join(args.out / f"{split}.h5", [p for p in _parts(counts) if p[1] == split],
                  metas[split], parts_dir, state)


def _part_path(parts_dir: Path, split: str, start: int, stop: int) -> Path:
    return parts_dir / f"{split}-{start:05d}-{stop:05d}.h5"


def _make_parts(todo: list[tuple[int, str, int, int]], metas: dict[str, Metadata],
                counts: dict[str, int], parts_dir: Path, state: tuple[int, ...]) -> None:
    joined = {split for split, meta in metas.items()
              if up_to_date(parts_dir.parent / f"{split}.h5", meta,
                            (counts[split], meta.n_steps + 1, *state))}
    missing = []
    for i, split, start, stop in todo:
        if split in joined:
            continue
        path = _part_path(parts_dir, split, start, stop)
        if path.exists():
            if up_to_date(path, metas[split], (stop - start, metas[split].n_steps + 1, *state)):
                continue
            print(f"{path}: other parameters or unreadable: regenerating it")
        missing.append((i, split, start, stop))
    kept = len(todo) - len(missing)
    if kept:
        print(f"{kept} of {len(todo)} parts already done (or joined into their split), kept")
    for i, split, start, stop in tqdm(missing, desc="smoke parts", unit="part", disable=None):
        x, geometry, mask = simulate(metas[split], i, start, stop)
        if not torch.isfinite(x).all():
            raise UsageError(f"simulations {start}-{stop} of {split}: non-finite states")
        write(_part_path(parts_dir, split, start, stop), x, metas[split],
              {"geometry": geometry, "mask": mask})


def _join(final: Path, parts: list[tuple[int, str, int, int]], meta: Metadata, parts_dir: Path,
          state: tuple[int, ...]) -> None:
    n = parts[-1][3]
    if up_to_date(final, meta, (n, meta.n_steps + 1, *state)):
        print(f"{final}: up to date, kept")
        return
    paths = [_part_path(parts_dir, split, start, stop) for _, split, start, stop in parts]
    absent = [p for p in paths if not p.exists()]
    if absent:
        raise UsageError(f"{final}: {len(absent)} of {len(paths)} parts missing (first: "
                         f"{absent[0]}); run the remaining shards, or generate without --join")
    chunks = []
    for path, (_, _, start, stop) in zip(paths, parts, strict=True):
        try:
            part = read(path, simulator=meta.simulator)
        except DataError as err:
            raise UsageError(f"{err} [a corrupt shard part: delete it and generate again]"
                             ) from None
        if not up_to_date(path, meta, (stop - start, meta.n_steps + 1, *state)):
            raise UsageError(f"{path}: made with other parameters than this run's; delete "
                             "it and generate again")
        chunks.append(part)
    write(final, torch.cat([c.x for c in chunks]), meta,
          {k: torch.cat([c.extras[k] for c in chunks]) for k in ("geometry", "mask")})
    for path in paths:
        path.unlink()
    if parts_dir.exists() and not any(parts_dir.iterdir()):
        parts_dir.rmdir()
    print(f"{final}: {n} simulations, {meta.n_steps} frames of dt={meta.dt:g}, "
          f"state {state}, obstacles in /geometry and /mask")
