"""What the systems' dataset generators share: split names, seeding, and generation in parts
(shards, resume, join).

Parts. A split of M simulations is cut into parts of `size` consecutive simulations, each written
to `<out>/parts/<split>-<start>-<stop>.h5` (a complete physdiff trajectory file, atomically). When
every simulation draws its random numbers from its own generator (`simulation_generator`, seeded
by (seed, split, index)) and a part is simulated as one batch, a part's data depend neither on
the other parts nor on which process makes it: `shard=(I, N)` makes the parts whose index is
I mod N (run N such processes side by side), a run without a shard makes the missing parts and
joins them into `<split>.h5` (then deletes the parts), and `join_only` only joins. A killed run
resumes: parts (and joined splits) already on disk with the same parameters are kept. One run or
N shards give bit-identical files.

`split_generator` and `simulate_in_chunks` are the older one-generator-per-split scheme, kept for
plug-in systems that use it (their splits cannot be made in shards).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor
from tqdm import tqdm

from physdiff.checks import UsageError
from physdiff.data import DataError, Metadata, read, up_to_date, write

__all__ = [
    "CHUNK",
    "SPLITS",
    "Part",
    "generate_in_parts",
    "plan_parts",
    "randn_per_simulation",
    "simulate_in_chunks",
    "simulation_generator",
    "split_generator",
]

SPLITS = ("train", "valid", "test")
CHUNK = 250  # trajectories simulated at once; fixed so that files do not depend on memory


def split_generator(seed: int, index: int) -> torch.Generator:
    """The generator of one stream of a split (index 0-2: initial states, 100-102: noise)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


def simulation_generator(seed: int, split: int, index: int) -> torch.Generator:
    """The generator of simulation `index` of split number `split` (0 train, 1 valid, 2 test):
    all of that simulation's random draws (initial state, obstacles, noise) go through it."""
    return torch.Generator().manual_seed(seed * 1_000_003 + (split + 1) * 10_000_019 + index)


def randn_per_simulation(generators: list[torch.Generator], shape: tuple[int, ...],
                         dtype: torch.dtype = torch.float64) -> Tensor:
    """z ~ N(0, I) of shape (len(generators), *shape), row j drawn with generators[j] (CPU)."""
    return torch.stack([torch.randn(shape, generator=g, dtype=dtype) for g in generators])


def simulate_in_chunks(rollout: Callable[..., Tensor], x_0: Tensor, generator: torch.Generator,
                       label: str) -> Tensor:
    """rollout(chunk, generator=generator) over chunks of CHUNK initial states (N, *state),
    in order, with one generator: (N, K + 1, *state). Stops with a ValueError on non-finite
    states, before anything is written."""
    chunks = []
    for start in tqdm(range(0, x_0.shape[0], CHUNK), desc=f"{label:5s}", unit="chunk",
                      disable=None):
        chunks.append(rollout(x_0[start:start + CHUNK], generator=generator))
    x = torch.cat(chunks)
    if not torch.isfinite(x).all():
        raise ValueError(f"{label} split: non-finite states (the simulation blew up: check the "
                         "physics parameters and the time step)")
    return x


@dataclass(frozen=True)
class Part:
    """Simulations start..stop−1 of split `split` (number `split_index` in SPLITS)."""

    split_index: int
    split: str
    start: int
    stop: int

    def generators(self, seed: int) -> list[torch.Generator]:
        """The per-simulation generators of this part, in order."""
        return [simulation_generator(seed, self.split_index, i)
                for i in range(self.start, self.stop)]

    def path(self, parts_dir: Path) -> Path:
        return parts_dir / f"{self.split}-{self.start:05d}-{self.stop:05d}.h5"


# a part -> its trajectories (n, K + 1, *state) and per-simulation extras {name: (n, *)}
Simulate = Callable[[Part], tuple[Tensor, dict[str, Tensor]]]


def plan_parts(counts: dict[str, int], size: int) -> list[Part]:
    """Every part of the splits (counts: split -> simulations), in a fixed order."""
    return [Part(i, split, start, min(start + size, counts[split]))
            for i, split in enumerate(SPLITS) for start in range(0, counts[split], size)]


def generate_in_parts(out: Path, metas: dict[str, Metadata], counts: dict[str, int],
                      state: tuple[int, ...], simulate: Simulate, size: int,
                      shard: tuple[int, int] | None = None, join_only: bool = False,
                      label: str = "", blowup: str = "", describe: str = "") -> None:
    """Make the parts of this shard (all parts if `shard` is None) that are not on disk yet,
    then, without a shard, join each split's parts into `<out>/<split>.h5`.

    Arguments:
        metas: Each split's metadata (split -> Metadata), written into its parts and file.
        counts: Simulations per split.
        state: The state shape; trajectories are (n, K + 1, *state).
        simulate: Part -> (trajectories, extras), float32 as they are to be stored.
        size: Simulations per part (a part is simulated as one batch, so the data depend on it).
        shard: (I, N): make only the parts whose index is I mod N, and do not join.
        join_only: Only join (a UsageError names a missing part).
        blowup: Appended to the error on non-finite states (a hint on what to change).
        describe: Appended to the line printed per joined split.
    """
    parts_dir = out / "parts"
    todo = plan_parts(counts, size)
    if shard is not None:
        todo = todo[shard[0]::shard[1]]
    if not join_only:
        _make_parts(todo, metas, counts, parts_dir, state, simulate, label, blowup)
    if shard is None:
        every = plan_parts(counts, size)
        for split in SPLITS:
            _join(out / f"{split}.h5", [p for p in every if p.split == split], metas[split],
                  parts_dir, state, describe)


def _make_parts(todo: list[Part], metas: dict[str, Metadata], counts: dict[str, int],
                parts_dir: Path, state: tuple[int, ...], simulate: Simulate, label: str,
                blowup: str) -> None:
    joined = {split for split, meta in metas.items()
              if up_to_date(parts_dir.parent / f"{split}.h5", meta,
                            (counts[split], meta.n_steps + 1, *state))}
    missing = []
    for part in todo:
        if part.split in joined:
            continue
        path = part.path(parts_dir)
        if path.exists():
            meta = metas[part.split]
            if up_to_date(path, meta, (part.stop - part.start, meta.n_steps + 1, *state)):
                continue
            print(f"{path}: other parameters or unreadable: regenerating it")
        missing.append(part)
    kept = len(todo) - len(missing)
    if kept:
        print(f"{kept} of {len(todo)} parts already done (or joined into their split), kept")
    for part in tqdm(missing, desc=f"{label} parts".strip(), unit="part", disable=None):
        x, extras = simulate(part)
        if not torch.isfinite(x).all():
            raise UsageError(f"simulations {part.start}-{part.stop} of {part.split}: "
                             f"non-finite states{blowup}")
        write(part.path(parts_dir), x, metas[part.split], extras)


def _join(final: Path, parts: list[Part], meta: Metadata, parts_dir: Path,
          state: tuple[int, ...], describe: str) -> None:
    n = parts[-1].stop
    if up_to_date(final, meta, (n, meta.n_steps + 1, *state)):
        print(f"{final}: up to date, kept")
        return
    paths = [part.path(parts_dir) for part in parts]
    absent = [p for p in paths if not p.exists()]
    if absent:
        raise UsageError(f"{final}: {len(absent)} of {len(paths)} parts missing (first: "
                         f"{absent[0]}); run the remaining shards, or generate without --join")
    chunks = []
    for path, part in zip(paths, parts, strict=True):
        try:
            data = read(path, simulator=meta.simulator)
        except DataError as err:
            raise UsageError(f"{err} [a corrupt shard part: delete it and generate again]"
                             ) from None
        if not up_to_date(path, meta, (part.stop - part.start, meta.n_steps + 1, *state)):
            raise UsageError(f"{path}: made with other parameters than this run's; delete "
                             "it and generate again")
        chunks.append(data)
    write(final, torch.cat([c.x for c in chunks]), meta,
          {k: torch.cat([c.extras[k] for c in chunks]) for k in chunks[0].extras})
    for path in paths:
        path.unlink()
    if parts_dir.exists() and not any(parts_dir.iterdir()):
        parts_dir.rmdir()
    print(f"{final}: {n} trajectories, {meta.n_steps} steps of dt={meta.dt:g}, "
          f"state {state}{describe}")
