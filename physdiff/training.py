"""The training loop as a generator of metrics, the rollout curriculum, and checkpoints.

Practice from the reference (docs/method.md §3): Adam, element-wise gradient clipping, updates with
non-finite gradients skipped and counted, learning rate lowered in the last (fine-tuning) stage.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from physdiff.io import atomic_path

__all__ = ["CheckpointError", "Stage", "fit", "load_checkpoint", "save_checkpoint", "stage_at",
           "stage_index"]


@dataclass(frozen=True)
class Stage:
    """A curriculum stage: `steps` updates with rollout length `rollout` (1 = one-step loss)."""

    rollout: int
    steps: int
    lr_factor: float = 1.0


def stage_index(stages: Sequence[Stage], step: int) -> tuple[int, int]:
    """(index, first update) of the stage that update number `step` (0-based) belongs to; past
    the end, the last stage."""
    first = 0
    for index, stage in enumerate(stages):
        if step < first + stage.steps:
            return index, first
        first += stage.steps
    return len(stages) - 1, first - stages[-1].steps


def stage_at(stages: Sequence[Stage], step: int) -> Stage:
    """The stage that update number `step` (0-based) belongs to."""
    return stages[stage_index(stages, step)[0]]


def fit(
    parameters: Sequence[nn.Parameter],
    loss_fn: Callable[[int, torch.Generator], Tensor],
    optimizer: torch.optim.Optimizer,
    stages: Sequence[Stage],
    lr: float,
    generator: torch.Generator,
    start_step: int = 0,
    skipped: int = 0,
    clip: float = 10.0,
    after_backward: Callable[[], None] | None = None,
    reduce: Callable[[float], float] | None = None,
) -> Iterator[dict[str, Any]]:
    """Run the curriculum from `start_step`, yielding metrics after every update.

    Arguments:
        parameters: The trained parameters (gradients clipped element-wise to ±clip).
        loss_fn: (rollout length, generator) -> scalar loss on a fresh batch.
        stages: The curriculum; where it is a list, the caller may shorten a stage between
            updates (train.py's --patience) and the loop follows.
        generator: Owns every random draw of batching, so that a resumed run repeats an
            uninterrupted one exactly (save its state with the checkpoint).
        skipped: Non-finite updates skipped before start_step.
        after_backward: Called after each backward pass, before clipping (data-parallel
            training averages the gradients across processes here).
        reduce: Maps this process's loss to the reported one (the mean across processes), so
            that every process takes the same skip decision.

    Yields:
        {"step", "loss", "rollout", "lr", "skipped"} after each update; "step" counts updates done.
    """
    step = start_step
    while step < sum(s.steps for s in stages):  # the caller may end a stage early (a list)
        stage = stage_at(stages, step)
        for group in optimizer.param_groups:
            group["lr"] = lr * stage.lr_factor
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(stage.rollout, generator)
        loss.backward()
        if after_backward is not None:
            after_backward()
        value = reduce(loss.item()) if reduce is not None else loss.item()
        finite = math.isfinite(value)
        for p in parameters:
            if p.grad is not None:
                finite = finite and bool(torch.isfinite(p.grad).all())
                p.grad.clamp_(-clip, clip)
        if finite:
            optimizer.step()
        else:
            skipped += 1
        step += 1
        yield {"step": step, "loss": value, "rollout": stage.rollout,
               "lr": lr * stage.lr_factor, "skipped": skipped}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what was expected."""


def save_checkpoint(path: Path, **state: Any) -> None:
    """torch.save to `<path>.tmp`, then rename: an interrupted save never truncates `path`.

    The state must hold only tensors, numbers, strings and containers of them, so that
    `load_checkpoint` can use weights_only=True.
    """
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (weights_only=True)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__})") from None
    for key in ("model", "config", "step"):
        if key not in state:
            raise CheckpointError(f"{path}: not a physdiff checkpoint (no '{key}')")
    return state
