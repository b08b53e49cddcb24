"""Helpers that the systems' dataset generators share: split names, per-split seeding, chunked
simulation with progress."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from tqdm import tqdm

__all__ = ["CHUNK", "SPLITS", "simulate_in_chunks", "split_generator"]

SPLITS = ("train", "valid", "test")
CHUNK = 250  # trajectories simulated at once; fixed so that files do not depend on memory


def split_generator(seed: int, index: int) -> torch.Generator:
    """The generator of one stream of a split (index 0-2: initial states, 100-102: noise)."""
    return torch.Generator().manual_seed(seed * 1_000_003 + index)


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
