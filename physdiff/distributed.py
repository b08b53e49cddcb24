"""Data-parallel training across processes (torchrun), on torch.distributed directly.

Launched by `torchrun --nproc_per_node=N train.py ...` (or under Slurm with a rendezvous
endpoint), every process reads the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK) and
joins one process group: gloo on CPU, nccl on CUDA. A plain `python train.py` has a world of one
and never touches torch.distributed.

How the ranks share the work (physdiff/cli/train.py): every rank holds the same generator and
draws the same global batch of windows, then keeps its own contiguous slice of batch / N; after
the backward pass the gradients are averaged across ranks (one all-reduce of the flattened
gradients, with the loss and the stop flag appended: one collective per update). The loss is a
mean over equal-sized slices, so an update with N ranks × b windows equals a single-process update on the same N·b windows, and every rank's generator stays in the
same state, which makes --resume exact. We average gradients explicitly rather than wrapping the
networks in DistributedDataParallel: a multi-step rollout calls the score network (and a learned
physics network) many times before one backward pass, which DDP's per-forward hooks do not
expect; one explicit all-reduce is exact and as fast at these sizes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from physdiff.checks import UsageError

__all__ = ["SINGLE", "World", "agree", "average_gradients", "init", "sum_across"]


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints (rank 0)."""
        return self.rank == 0


SINGLE = World()  # a plain, one-process run


def init(device: torch.device) -> World:
    """Join the process group torchrun describes in the environment, or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def average_gradients(parameters: Sequence[nn.Parameter], world: World,
                      extras: Sequence[float] = ()) -> list[float]:
    """Average .grad across ranks in place and return the ranks' means of `extras` (e.g. the
    loss and a stop flag), all in one all-reduce of the flattened gradients with the extras
    appended: one collective per update instead of three."""
    if world.size == 1:
        return list(extras)
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads]
                     + [torch.tensor(list(extras), dtype=grads[0].dtype,
                                     device=grads[0].device)])
    dist.all_reduce(flat)
    flat /= world.size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat[offset:].tolist()


def _collective_device() -> torch.device:
    """Where small tensors for a collective live: nccl reduces only CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_across(values: Sequence[float], world: World) -> list[float]:
    """The sums of `values` over the ranks (float64; the values themselves in a world of one)."""
    if world.size == 1:
        return list(values)
    summed = torch.tensor(list(values), dtype=torch.float64, device=_collective_device())
    dist.all_reduce(summed)
    return summed.tolist()


def agree(fingerprint: Sequence[float], what: str, world: World) -> None:
    """Raise the same one-line UsageError on every rank if the ranks' fingerprints differ (e.g.
    of the data they read), instead of training on different data or hanging."""
    if world.size == 1:
        return
    mine = torch.tensor(list(fingerprint), dtype=torch.float64, device=_collective_device())
    low, high = mine.clone(), mine.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise UsageError(f"ranks disagree on {what}: every process must read the same files")
