"""Observations in fixed chunks with their own random streams, so that the posterior of an
observation does not depend on how many processes share the work.

infer.py cuts the M observations into chunks of whole observations that fill one sampling batch
(batch_size // n observations, at least one) and draws each chunk's noise from a generator
seeded by (seed, chunk index). A process takes every world-size-th chunk; rank 0 gathers them in
chunk order. Every chunk is integrated as the same batch in a one-process run and under torchrun,
so the files they write are equal bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from physdiff.distributed import World

__all__ = ["busiest_seconds", "chunk_generator", "gather_chunks", "observation_chunks",
           "run_chunks", "shared_chunks"]

T = TypeVar("T")


def observation_chunks(m: int, n: int, batch_size: int) -> list[slice]:
    """Slices of M observations, each of batch_size // n observations (at least one)."""
    per = max(1, batch_size // n)
    return [slice(i, min(i + per, m)) for i in range(0, m, per)]


def chunk_generator(seed: int, index: int, device: torch.device) -> torch.Generator:
    """A generator for chunk `index` of a run seeded with `seed`: independent streams for
    different chunks (numpy's SeedSequence mixes the pair), the same stream in every process."""
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, index]).generate_state(2, np.uint32)
    return torch.Generator(device).manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def run_chunks(count: int, work: Callable[[int], T], world: World,
               progress: Callable[[], None] | None = None) -> dict[int, T]:
    """work(i) for this process's chunks i (i ≡ rank mod world size), keyed by chunk index."""
    out = {}
    for i in range(world.rank, count, world.size):
        out[i] = work(i)
        if progress is not None:
            progress()
    return out


def gather_chunks(mine: dict[int, T], count: int, world: World) -> list[T] | None:
    """Every process's chunks, in chunk order, on rank 0 (None elsewhere)."""
    if world.size == 1:
        return [mine[i] for i in range(count)]
    parts: list[dict[int, T]] | None = [{} for _ in range(world.size)] if world.main else None
    dist.gather_object(mine, parts, dst=0)
    if parts is None:
        return None
    merged = {k: v for part in parts for k, v in part.items()}
    return [merged[i] for i in range(count)]


def shared_chunks(count: int, work: Callable[[int], T], world: World,
                  progress: Callable[[], None] | None = None) -> list[T] | None:
    """`run_chunks` on this process's share, then `gather_chunks`: every chunk's result in
    chunk order on rank 0, None elsewhere."""
    return gather_chunks(run_chunks(count, work, world, progress), count, world)


def busiest_seconds(parts: list[dict[str, Any]], keys: tuple[str, ...], world: World
                    ) -> list[float]:
    """Per key of the chunks' timings, the largest sum over one process's chunks (chunk i ran
    on rank i mod world size): the wall time of processes working side by side."""
    return [max(sum(p[k] for i, p in enumerate(parts) if i % world.size == r)
                for r in range(world.size)) for k in keys]
