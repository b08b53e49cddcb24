"""What one training run holds and computes (physdiff/cli/train.py drives it): the data's
random windows, the networks and optimiser, the losses of docs/method.md §3, the validation
loss, the noise calibration and the snapshot of the networks kept for the probability-flow ODE."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from physdiff import systems
from physdiff.cli.common import UsageError
from physdiff.cli.train_config import TrainConfig, make_config, parse_stages
from physdiff.data import Metadata, Trajectories, read
from physdiff.distributed import SINGLE, World, agree, sum_across
from physdiff.losses import forward_loss, multi_step_loss, one_step_loss
from physdiff.runtime import pick_device
from physdiff.sde import Drift, reverse_drift
from physdiff.training import Stage, stage_index

__all__ = ["Batches", "Plateau", "Run", "calibrate", "calibration_set", "flow_snapshot_step",
           "loss_function", "setup", "snapshot", "validation"]


class Batches:
    """Random windows from in-memory trajectories, with their condition (or None); every draw
    uses the given generator."""

    def __init__(self, x: torch.Tensor, meta: Metadata, system: Any, device: torch.device,
                 augment: bool, condition: torch.Tensor | None = None,
                 world: World = SINGLE) -> None:
        self.x, self.meta, self.system, self.device, self.augment = x, meta, system, device, augment
        self.condition, self.world = condition, world

    def __call__(self, batch_size: int, rollout: int, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        n, k_plus_1 = self.x.shape[:2]
        traj = torch.randint(0, n, (batch_size,), generator=generator)
        end = torch.randint(rollout, k_plus_1, (batch_size,), generator=generator)
        # every rank draws the same global batch and keeps its slice (physdiff/distributed.py)
        share = batch_size // self.world.size
        traj, end = (v[self.world.rank * share:(self.world.rank + 1) * share] for v in (traj, end))
        steps = end[:, None] - rollout + torch.arange(rollout + 1)
        window = self.x[traj[:, None], steps]
        if self.augment:
            window = self.system.augment(window, generator)
        t_end = end.double() * self.meta.dt
        cond = None if self.condition is None else self.condition[traj].to(self.device)
        return window.to(self.device), t_end.to(self.device, window.dtype), cond


@dataclass
class Run:
    """Everything one training run holds: data, system, networks, optimiser, generator."""

    cfg: TrainConfig
    stages: list[Stage]
    data: Trajectories
    system: systems.System
    condition: torch.Tensor | None
    model: torch.nn.Module
    physics_net: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    device: torch.device
    world: World = SINGLE
    # the networks' weights at the end of the one-step stage, for the probability-flow ODE
    # ({"score", "physics", "step"}; `flow_snapshot_step`), saved with every checkpoint after
    flow: dict[str, Any] | None = None
    plateau: Plateau | None = None  # early ends of one-step stages (--patience)
    # the curricula a resumed run extended ({"stages", "step", "version"}: --resume with
    # stages appended), oldest first; saved with every checkpoint
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def params(self) -> list[torch.nn.Parameter]:
        nets = [self.model] + ([self.physics_net] if self.physics_net is not None else [])
        return [p for net in nets for p in net.parameters()]

    def drift_for(self, cond: torch.Tensor | None) -> Drift:
        """The c = 1 reverse drift, bound to a batch's condition (None for most systems)."""
        return reverse_drift(
            self.system.physics_drift(self.cfg.physics, self.physics_net, cond),
            self.system.score_fn(self.model, cond), self.data.meta.g, c=1.0)


def setup(args: argparse.Namespace, world: World = SINGLE) -> Run:
    """Read the data, check the curriculum against it, build networks and optimiser."""
    device = pick_device(args.device)
    if world.size > 1 and device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
    data = read(args.data / "train.h5")
    system = systems.for_data(data.meta, tuple(data.x.shape[2:]), args.system)
    cfg = make_config(args, system)
    stages = parse_stages(cfg.stages, cfg.final_lr_factor)
    if cfg.batch_size % world.size:
        raise UsageError(f"--batch-size {cfg.batch_size}: must be divisible by the "
                         f"{world.size} processes (each takes an equal share)")
    agree([*data.x.shape, float(data.x[:, 0].double().sum()), float(data.x[:, -1].double().sum())],
          f"the training data ({args.data / 'train.h5'})", world)
    if max(s.rollout for s in stages) > data.meta.n_steps:
        raise UsageError(f"--stages: rollout {max(s.rollout for s in stages)} exceeds the "
                         f"{data.meta.n_steps} steps of {args.data / 'train.h5'}")
    if cfg.physics not in system.physics_kinds:
        raise UsageError(f"--physics {cfg.physics}: {system.name} supports "
                         f"{', '.join(system.physics_kinds)}")
    condition = system.condition(data.extras, str(args.data / "train.h5"))
    torch.manual_seed(cfg.seed)  # network initialisation
    model = system.score_net(cfg.width, cfg.depth, cfg.spectral, cfg.physics).to(device)
    physics_net = (system.physics_net(cfg.physics_width).to(device) if cfg.physics == "learned"
                   else None)
    run_ = Run(cfg, stages, data, system, condition, model, physics_net, None,  # type: ignore[arg-type]
               torch.Generator().manual_seed(cfg.seed), device, world)
    run_.optimizer = torch.optim.Adam(run_.params, lr=cfg.lr)
    run_.plateau = Plateau(cfg.patience, cfg.min_improvement)
    return run_


def loss_function(run_: Run) -> Callable[[int, torch.Generator], torch.Tensor]:
    """(rollout, generator) -> the loss of a fresh batch of windows (docs/method.md §3), plus the
    forward anchoring loss of a learned physics network."""
    cfg, meta = run_.cfg, run_.data.meta
    batches = Batches(run_.data.x, meta, run_.system, run_.device, cfg.augment, run_.condition,
                      run_.world)

    def loss_fn(rollout: int, gen: torch.Generator) -> torch.Tensor:
        window, t_end, cond = batches(cfg.batch_size, rollout, gen)
        drift = run_.drift_for(cond)
        if rollout == 1:
            loss = one_step_loss(drift, window[:, 0], window[:, 1], t_end, meta.dt, meta.g)
        else:
            loss = multi_step_loss(drift, window, t_end, meta.dt, meta.g, cfg.method)
            if cfg.one_step_weight > 0:
                loss = loss + cfg.one_step_weight * _pairs_loss(run_, window, t_end, cond)
        if run_.physics_net is not None:  # anchor P_φ on the forward steps of the same windows
            pairs = window[:, :2] if rollout == 1 else window
            loss = loss + cfg.anchor_weight * forward_loss(
                run_.system.forward_step(run_.physics_net), pairs[:, :-1].flatten(0, 1),
                pairs[:, 1:].flatten(0, 1), meta.dt, meta.g)
        return loss

    return loss_fn


def _pairs_loss(run_: Run, window: torch.Tensor, t_end: torch.Tensor,
                cond: torch.Tensor | None) -> torch.Tensor:
    """The one-step loss on all S pairs of (B, S + 1, *) windows at once (teacher forcing)."""
    meta, s = run_.data.meta, window.shape[1] - 1
    offsets = meta.dt * torch.arange(s - 1, -1, -1, device=window.device, dtype=t_end.dtype)
    t_next = (t_end[:, None] - offsets).flatten()
    cond = None if cond is None else cond.repeat_interleave(s, 0)
    return one_step_loss(run_.drift_for(cond), window[:, :-1].flatten(0, 1),
                         window[:, 1:].flatten(0, 1), t_next, meta.dt, meta.g)


class Plateau:
    """Ends a one-step stage early once its validation loss has not improved for `patience`
    validations in a row (--patience; 0: never), so that a generous step count adapts to a
    problem the preset was not tuned for. Only one-step stages: the multi-step stages raise
    the one-step validation loss while they improve the posterior (README, heat presets), so
    it is no guide there. The stage's updates not run are dropped from the curriculum.

    An improvement is a validation loss below the best by more than `min_improvement` of it
    (--min-improvement): without that margin a slowly creeping loss never stops (64² heat,
    demo preset: a new best every 500 updates up to 9500, each under 0.1 %)."""

    def __init__(self, patience: int, min_improvement: float = 1e-3) -> None:
        self.patience, self.min_improvement = patience, min_improvement
        self.stage, self.best, self.waited = -1, float("inf"), 0
        self.ended: dict[int, int] = {}  # stage index -> the updates it ran

    def observe(self, stages: list[Stage], step: int, val_loss: float) -> bool:
        """After update `step` and its validation: end its stage (shorten `stages` in place)
        if it has plateaued; return whether it did."""
        index, first = stage_index(stages, step - 1)
        stage = stages[index]
        if self.patience == 0 or stage.rollout != 1:
            return False
        if index != self.stage:
            self.stage, self.best, self.waited = index, float("inf"), 0
        margin = 0.0 if self.best == float("inf") else self.min_improvement * abs(self.best)
        if val_loss < self.best - margin:  # NaN never improves
            self.best, self.waited = val_loss, 0
            return False
        self.waited += 1
        if self.waited < self.patience or step >= first + stage.steps:
            return False
        self.ended[index] = step - first
        _shorten(stages, index, step - first)
        return True

    def state(self) -> dict[str, Any]:
        return {"stage": self.stage, "best": self.best, "waited": self.waited,
                "ended": {str(k): v for k, v in self.ended.items()}}

    def load(self, state: dict[str, Any] | None, stages: list[Stage]) -> None:
        """Restore a checkpoint's state and shorten `stages` as that run did."""
        if not state:
            return
        self.stage, self.best, self.waited = state["stage"], state["best"], state["waited"]
        self.ended = {int(k): v for k, v in state["ended"].items()}
        for index, steps in self.ended.items():
            _shorten(stages, index, steps)


def _shorten(stages: list[Stage], index: int, steps: int) -> None:
    """Stage `index` ends after `steps` updates (in place)."""
    stages[index] = Stage(stages[index].rollout, steps, stages[index].lr_factor)


def flow_snapshot_step(stages: Sequence[Stage]) -> int:
    """The update after which the networks are kept for the probability-flow ODE: the end of
    the curriculum's leading one-step stages, where multi-step stages follow (they fit c = 1
    rollouts and move s_θ away from the score the c = ½ flow needs; docs/method.md §4). 0: none
    (a one-step-only curriculum, whose final networks serve, or one that starts with
    rollouts). An exponential moving average of the weights over the stage (decay 0.999) did
    worse on heat-32: PF-ODE 1.22 against 1.13 × the c = ½ oracle for training seed 1."""
    prefix = 0
    for stage in stages:
        if stage.rollout != 1:
            return prefix
        prefix += stage.steps
    return 0


def snapshot(run_: Run, step: int) -> dict[str, Any]:
    """A copy of the networks' weights after update `step` (for `Run.flow`)."""
    def copy(net: torch.nn.Module | None) -> dict[str, torch.Tensor] | None:
        return None if net is None else {k: v.detach().clone()
                                         for k, v in net.state_dict().items()}
    return {"score": copy(run_.model), "physics": copy(run_.physics_net), "step": step}


def validation(run_: Run, valid: Trajectories, source: str) -> Callable[..., float]:
    """(world) -> the one-step loss over every step of the first validation trajectories. With
    a world of several ranks, each scores its own contiguous share of the trajectories and the
    sums are added across ranks (every rank must call it at the same update); the default world
    of one scores them all here."""
    cfg, meta = run_.cfg, valid.meta
    val = valid.x[:cfg.val_trajectories].to(run_.device)
    val_times = meta.times()[1:].to(run_.device, val.dtype)
    condition = run_.system.condition(valid.extras, source)
    val_cond = None if condition is None else condition[:cfg.val_trajectories]

    @torch.no_grad()
    def validate(world: World = SINGLE) -> float:
        run_.model.eval()
        n = val.shape[0]
        first, last = n * world.rank // world.size, n * (world.rank + 1) // world.size
        total, count = 0.0, 0
        for i in range(first, last, cfg.val_chunk):
            j = min(i + cfg.val_chunk, last)
            chunk = val[i:j]
            k = chunk.shape[1] - 1
            cond = (None if val_cond is None
                    else val_cond[i:j].repeat_interleave(k, 0).to(run_.device))
            total += one_step_loss(run_.drift_for(cond), chunk[:, :-1].flatten(0, 1),
                                   chunk[:, 1:].flatten(0, 1), val_times.repeat(chunk.shape[0]),
                                   meta.dt, meta.g).item() * chunk.shape[0]
            count += chunk.shape[0]
        run_.model.train()
        total, count = sum_across([total, count], world)
        return total / count

    return validate


def calibration_set(run_: Run) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first `calibration_trajectories` training trajectories and their condition, on the
    run's device: what the finishing step calibrates and fits on."""
    n_cal = min(run_.cfg.calibration_trajectories, run_.data.x.shape[0])
    cond = None if run_.condition is None else run_.condition[:n_cal].to(run_.device)
    return run_.data.x[:n_cal].to(run_.device), cond


def calibrate(run_: Run, trajectories: torch.Tensor, cond: torch.Tensor | None
              ) -> torch.Tensor:
    """The reverse-step noise calibration on the calibration set (`calibration_set`)."""
    run_.model.eval()
    return run_.system.calibrate(run_.drift_for, trajectories, cond)
