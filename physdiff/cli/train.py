"""train.py: train a score network s_θ(x, t) through the physics drift, with a rollout curriculum.

The curriculum is a list of stages ROLLOUT:STEPS; rollout 1 is the one-step loss, longer rollouts
are the multi-step loss integrated with torchdiffeq through the physics (docs/method.md §3). The
last stage runs at --final-lr-factor × --lr (fine-tuning).

Examples:
    python train.py --data runs/demo/data --out runs/demo --preset demo
    python train.py --data DATA --out RUN --preset PRESET --resume
    python train.py --data DATA --out RUN --stages 1:20000      # the one-step loss only

--resume continues an interrupted run with the same flags; it also takes a longer curriculum
that repeats the checkpoint's stages (with the learning-rate factor each ran at) and appends new
ones, e.g. a run of `--stages 1:3000,4:500` continued with `--stages 1:3000,4:500:0.5,8:500`
(its last stage ran at --final-lr-factor 0.5). The checkpoint records the curricula it extended.

The physics drift (--physics): 'true' runs the dataset's simulator; 'learned' trains a physics
network P_φ jointly with the score, anchored by the forward one-step loss (where the system
offers one); 'none' drops the physics so that the network alone learns the reverse step
(baseline).

Outputs in --out: checkpoint.pt (score and physics weights, optimiser, step, RNG state, config,
normalisation, noise calibration, the end-state statistics, and the weights as they stood after
the leading one-step stage, which the probability-flow ODE uses), config.json, log.jsonl (one
JSON line per logged step), loss.png.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from physdiff import plots
from physdiff.cli.common import Progress, UsageError, note, run
from physdiff.cli.train_config import TrainConfig, extension_problem, parse_stages
from physdiff.cli.train_config import parser as _parser
from physdiff.cli.train_run import (
    Batches,
    Run,
    calibrate,
    calibration_set,
    flow_snapshot_step,
    loss_function,
    setup,
    snapshot,
    validation,
)
from physdiff.data import Trajectories, read
from physdiff.distributed import World, average_gradients, init
from physdiff.flow_correction import held_out_choice
from physdiff.heldout import held_out_check
from physdiff.io import write_text_atomic
from physdiff.lock import hold
from physdiff.model import Model, networks, reconstruct
from physdiff.runtime import code_version, pick_device
from physdiff.training import Stage, fit, load_checkpoint, save_checkpoint

__all__ = ["Batches", "Run", "loss_function", "main", "parse_stages", "parser", "setup"]


def parser() -> argparse.ArgumentParser:
    return _parser(__doc__)


def resume(run_: Run, ckpt_path: Path, log_path: Path
           ) -> tuple[int, int, bool, float | None]:
    """Load an interrupted run's state; return (updates done, updates skipped, complete,
    training seconds so far or None where the checkpoint predates that record)."""
    state = load_checkpoint(ckpt_path)
    cfg = run_.cfg
    old = {**asdict(TrainConfig(data=cfg.data)), **state["config"]}  # keys added later
    diff = {k: (old.get(k), v) for k, v in asdict(cfg).items() if old.get(k) != v}
    if set(diff) - {"stages"}:
        raise UsageError(f"{ckpt_path}: was trained with other settings {diff} "
                         "(old, new); use the same flags or another --out")
    run_.history = list(state.get("curriculum_history") or [])
    if diff:  # a longer curriculum: the new stages run after the old ones
        problem = extension_problem(old["stages"], cfg.stages, cfg.final_lr_factor)
        if problem is not None:
            raise UsageError(f"{ckpt_path}: --stages {cfg.stages} does not continue the "
                             f"checkpoint's curriculum {old['stages']}: {problem}")
        run_.history.append({"stages": old["stages"], "step": state["step"],
                             "version": state.get("version")})
        note(f"{ckpt_path}: curriculum {old['stages']} continued as {cfg.stages}")
    run_.model.load_state_dict(state["model"])
    if run_.physics_net is not None:
        run_.physics_net.load_state_dict(state["physics"])
    run_.optimizer.load_state_dict(state["optimizer"])
    run_.generator.set_state(state["generator"])
    run_.flow = state.get("flow")
    run_.plateau.load(state.get("plateau"), run_.stages)
    start = state["step"]
    if run_.world.main:
        _log_lines_upto(log_path, start)
    complete = finished(state) and start >= _total(run_)
    return start, state["skipped"], complete, state.get("train_seconds")


# What the finishing step (`finish`) computes, by version: 1 noise calibration, end-state
# statistics and the held-out check; 2 adds the system's correction of the flow's step; 3 keeps
# that correction only where it lowers the flow's MSE on validation trajectories. A checkpoint
# finished by an older version is finished again by --resume (no update runs).
FINISH = 3


def finished(state: dict[str, Any]) -> bool:
    """Whether a checkpoint's training and finishing step are complete for this version."""
    return state.get("noise_spectra") is not None and state.get("finish", 0) >= FINISH


def save(run_: Run, path: Path, step: int, skipped: int,
         noise_spectra: torch.Tensor | None = None,
         end_state: dict[str, torch.Tensor] | None = None,
         flow_correction: torch.Tensor | None = None,
         flow_choice: dict[str, Any] | None = None, train_seconds: float | None = None) -> None:
    """The run's state; `noise_spectra` given means the finishing step's final save.
    `train_seconds`: the training wall time that led to this state, summed over the invocations
    (None where a resumed checkpoint did not record it)."""
    done = {} if noise_spectra is None else {"finish": FINISH, "flow_correction": flow_correction,
                                             "flow_choice": flow_choice}
    save_checkpoint(path, model=run_.model.state_dict(), optimizer=run_.optimizer.state_dict(),
                    step=step, skipped=skipped, generator=run_.generator.get_state(),
                    config=asdict(run_.cfg), meta=asdict(run_.data.meta),
                    state_shape=list(run_.data.x.shape[2:]), version=code_version(),
                    world_size=run_.world.size, flow=run_.flow, plateau=run_.plateau.state(),
                    curriculum_history=run_.history,
                    noise_spectra=noise_spectra, end_state=end_state,
                    physics=(run_.physics_net.state_dict() if run_.physics_net is not None
                             else None), train_seconds=train_seconds, **done)


class Saver:
    """When the main rank saves a checkpoint during the updates: every `every` updates and at
    least every `minutes` of wall time (a long-rollout stage may run for hours between two
    multiples of `every`; a killed run resumes from the last save). Keeps the training wall time
    summed over invocations, `base` seconds before this one (None: unknown, not recorded)."""

    def __init__(self, path: Path, every: int, minutes: float, base: float | None) -> None:
        self.path, self.every, self.interval, self.base = path, every, 60 * minutes, base
        self.t0 = self.last = time.perf_counter()

    def seconds(self) -> float | None:
        """Training wall time up to now, this invocation included."""
        return None if self.base is None else self.base + time.perf_counter() - self.t0

    def maybe(self, run_: Run, step: int, skipped: int) -> None:
        if step % self.every == 0 or time.perf_counter() - self.last >= self.interval:
            save(run_, self.path, step, skipped, train_seconds=self.seconds())
            self.last = time.perf_counter()


def train(args: argparse.Namespace) -> None:
    if args.data.is_file():
        raise UsageError(f"--data {args.data}: expected the folder that holds train.h5 and "
                         "valid.h5, not a file")
    world = init(pick_device(args.device))
    with hold(args.out, "train.py") if world.main else contextlib.nullcontext():
        _train(args, world)
    if world.size > 1:
        dist.barrier()  # the other ranks wait while rank 0 calibrates and writes
        dist.destroy_process_group()


class UpdateSync:
    """What the ranks share per update, in the one all-reduce of the gradients: the loss (its
    mean is the reported loss, so every rank skips a non-finite update alike) and whether any
    rank was asked to stop (a signal may reach only some of them)."""

    def __init__(self, run_: Run, world: World, interrupted: list[bool]) -> None:
        self.run_, self.world, self.interrupted = run_, world, interrupted
        self.loss = torch.zeros(())
        self.means = [0.0, 0.0]

    def wrap(self, loss_fn: Callable[[int, torch.Generator], torch.Tensor]
             ) -> Callable[[int, torch.Generator], torch.Tensor]:
        def keep(rollout: int, gen: torch.Generator) -> torch.Tensor:
            self.loss = loss_fn(rollout, gen)
            return self.loss
        return keep

    def after_backward(self) -> None:
        self.means = average_gradients(self.run_.params, self.world,
                                       [self.loss.item(), float(bool(self.interrupted))])

    def mean_loss(self, value: float) -> float:
        return self.means[0]

    @property
    def stop(self) -> bool:
        return self.means[1] > 0


def _train(args: argparse.Namespace, world: World) -> None:
    run_ = setup(args, world)
    valid_path = args.data / "valid.h5"
    valid = read(valid_path, simulator=run_.data.meta.simulator)
    ckpt_path, log_path = args.out / "checkpoint.pt", args.out / "log.jsonl"
    start, skipped, base = 0, 0, 0.0
    if ckpt_path.exists():
        if not args.resume:
            raise UsageError(f"{ckpt_path} exists: pass --resume to continue it, or another --out")
        start, skipped, complete, base = resume(run_, ckpt_path, log_path)
        if complete:
            print(f"{ckpt_path}: training already complete ({start} updates)")
            return
    args.out.mkdir(parents=True, exist_ok=True)
    if world.main:
        write_text_atomic(args.out / "config.json", json.dumps(asdict(run_.cfg), indent=2) + "\n")
    validate = validation(run_, valid, str(valid_path))
    stop_after = start + args.stop_after if args.stop_after else None
    interrupted: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: interrupted.append(True))
    step, t0 = start, time.perf_counter()
    saver = Saver(ckpt_path, args.save_every, args.save_minutes, base)
    bar = (Progress("train", _total(run_), initial=start, cost=lambda i: _cost(run_.stages, i))
           if world.main else None)
    with log_path.open("a") if world.main else contextlib.nullcontext() as log:
        sync = UpdateSync(run_, world, interrupted)
        for metrics in fit(run_.params, sync.wrap(loss_function(run_)), run_.optimizer,
                           run_.stages, run_.cfg.lr, run_.generator, start, skipped,
                           run_.cfg.clip, after_backward=sync.after_backward,
                           reduce=sync.mean_loss):
            step, skipped = metrics["step"], metrics["skipped"]
            if step % run_.cfg.val_every == 0 or step == _total(run_):
                metrics["val_loss"] = validate(world)  # shared by the ranks
                # every rank computes the same mean loss, so every rank ends the stage alike
                if run_.plateau.observe(run_.stages, step, metrics["val_loss"]):
                    metrics["stage_ended"] = True
                    if bar is not None:
                        bar.total = _total(run_)
            if step == flow_snapshot_step(run_.stages):  # the networks the PF-ODE uses
                run_.flow = snapshot(run_, step)
            if world.main:
                if step % 10 == 0 or "val_loss" in metrics:
                    metrics["time"] = round(time.perf_counter() - t0, 2)
                    log.write(json.dumps(metrics) + "\n")
                    log.flush()
                bar.update(1, loss=f"{metrics['loss']:.4f}", S=metrics["rollout"],
                           skipped=skipped)
                saver.maybe(run_, step, skipped)
            # every rank stops at the same update (a signal may reach only some of them)
            if step == stop_after or sync.stop:
                break
    if bar is not None:
        bar.close()
    if world.main:
        _conclude(args, run_, step, skipped, saver, valid=valid, valid_path=valid_path,
                  validate=validate)


def _conclude(args: argparse.Namespace, run_: Run, step: int, skipped: int, saver: Saver, *,
              valid: Trajectories, valid_path: Path, validate: Callable[..., float]) -> None:
    """After the updates (main rank): save a run stopped early, or finish a complete one."""
    ckpt_path, total, t0 = args.out / "checkpoint.pt", _total(run_), saver.t0
    if step < total:
        save(run_, ckpt_path, step, skipped, train_seconds=saver.seconds())
        print(f"stopped at update {step}/{total}; continue with --resume")
        return
    finish(args, run_, valid, valid_path, skipped, saver.seconds)
    ended = "".join(f"; stage {i + 1} ended by --patience after {n} updates"
                    for i, n in sorted(run_.plateau.ended.items()))
    print(f"trained {total} updates ({skipped} skipped as non-finite{ended}) in "
          f"{time.perf_counter() - t0:.0f} s; validation one-step loss {validate():.4f}; "
          f"checkpoint {ckpt_path}")


def _cost(stages: list[Stage], updates: int) -> float:
    """The relative wall time of the first `updates` updates of a curriculum: an update costs
    about as much as its rollout is long (one-step: 1)."""
    cost, first = 0.0, 0
    for stage in stages:
        cost += stage.rollout * min(max(updates - first, 0), stage.steps)
        first += stage.steps
    return cost


def _total(run_: Run) -> int:
    """Updates in the curriculum as it stands (--patience may have ended a stage early)."""
    return sum(s.steps for s in run_.stages)


def finish(args: argparse.Namespace, run_: Run, valid: Trajectories, valid_path: Path,
           skipped: int, seconds: Callable[[], float | None]) -> None:
    """After the last update (rank 0): calibrate the reverse-step noise, fit the system's
    correction of the flow's step, save the final checkpoint (with the training wall time
    `seconds()`, the calibration included), run the held-out calibration check and draw
    loss.png."""
    ckpt_path, log_path = args.out / "checkpoint.pt", args.out / "log.jsonl"
    trajectories, cond = calibration_set(run_)
    note(f"train: calibrating the reverse-step noise on {trajectories.shape[0]} training "
         "trajectories")
    noise = calibrate(run_, trajectories, cond)
    model = trained_model(run_, noise)
    fitted = run_.system.flow_correction(
        lambda condition: model.flow_drift(condition, c=1.0, corrected=False), trajectories,
        cond)
    valid_cond = run_.system.condition(valid.extras, str(valid_path))
    choice = None
    if fitted is not None:
        choice = choose_flow_correction(run_, model, fitted, valid, valid_cond)
        model.flow_correction = fitted if choice["kept"] else None
    end_state = run_.system.end_state_statistics(trajectories[:, -1].cpu())
    save(run_, ckpt_path, _total(run_), skipped, noise, end_state, fitted, choice,
         train_seconds=seconds())
    check_held_out(args, run_, model, valid, valid_cond, choice)
    plots.loss_curve(args.out / "loss.png",
                     [json.loads(ln) for ln in log_path.read_text().splitlines() if ln])


# validation trajectories after the held-out check's that decide whether the flow correction is
# kept (all of them where the validation set has no others)
FLOW_CHOICE_CASES = 512


def choose_flow_correction(run_: Run, model: Model, fitted: torch.Tensor, valid: Trajectories,
                           valid_cond: torch.Tensor | None) -> dict[str, Any]:
    """Whether the fitted flow correction lowers the model's PF-ODE MSE on validation
    trajectories other than the held-out check's (physdiff/flow_correction.py); prints it.
    Leaves `model.flow_correction` as it found it."""
    held = run_.cfg.heldout_trajectories
    first = held if valid.x.shape[0] > held else 0
    cases = slice(first, first + FLOW_CHOICE_CASES)
    x = valid.x[cases].to(run_.device)
    condition = None if valid_cond is None else valid_cond[cases].to(run_.device)
    before = model.flow_correction

    def flow(corrected: bool) -> torch.Tensor:
        model.flow_correction = fitted if corrected else None
        try:
            return reconstruct(model, x[:, -1], "ode", condition=condition)
        finally:
            model.flow_correction = before

    choice = held_out_choice(flow, x[:, 0])
    print(f"train: flow correction {'kept' if choice['kept'] else 'dropped'}: PF-ODE MSE "
          f"{_num(choice['corrected'])} with it, {_num(choice['uncorrected'])} without, on "
          f"{choice['cases']} validation trajectories")
    return choice


def _num(value: float | None) -> str:
    return "inf" if value is None else f"{value:.4g}"


def trained_model(run_: Run, noise: torch.Tensor) -> Model:
    """The trained networks as they are (not reloaded from the checkpoint), as a Model."""
    physics_net = run_.physics_net.eval() if run_.physics_net is not None else None
    run_.model.eval()
    flow_score, flow_physics = (networks(run_.system, asdict(run_.cfg), run_.flow["score"],
                                         run_.flow["physics"], run_.device)
                                if run_.flow else (None, None))
    return Model(run_.model, run_.system, run_.data.meta, noise, asdict(run_.cfg), physics_net,
                 flow_score=flow_score, flow_physics=flow_physics)


def check_held_out(args: argparse.Namespace, run_: Run, model: Model, valid: Trajectories,
                   valid_cond: torch.Tensor | None,
                   flow_choice: dict[str, Any] | None = None) -> None:
    """Score the finished model on held-out validation trajectories (x_0 known, conditions
    `valid_cond`): coverage, SBC, MSE; write calibration.json beside the checkpoint and print
    the verdict."""
    n = min(run_.cfg.heldout_trajectories, valid.x.shape[0])
    note(f"train: held-out calibration check on {n} validation trajectories")
    check = held_out_check(model, valid.x[:n].to(run_.device),
                           None if valid_cond is None else valid_cond[:n].to(run_.device),
                           torch.Generator(run_.device).manual_seed(run_.cfg.seed),
                           flow_choice=flow_choice)
    write_text_atomic(args.out / "calibration.json", json.dumps(check, indent=2) + "\n")
    print(f"held-out check: {check['verdict']}")
    print(f"held-out check: {check['ode_verdict']}")


def _log_lines_upto(log: Path, step: int) -> None:
    """Drop log lines past `step` (written after the checkpoint an interrupted run resumes),
    and a last line cut short by the interruption (repaired, with a note); any other unreadable
    line is an error naming the file and line."""
    if not log.exists():
        return
    raw = [ln for ln in log.read_text().splitlines() if ln]
    rows = []
    for i, line in enumerate(raw):
        try:
            rows.append((json.loads(line)["step"], line))
        except (ValueError, KeyError, TypeError):
            if i < len(raw) - 1:
                raise UsageError(f"{log}: line {i + 1} is not a log entry; fix or delete "
                                 "the file to resume") from None
            print(f"{log}: dropped a truncated last line (the interrupted run's)",
                  file=sys.stderr)
    write_text_atomic(log, "".join(line + "\n" for s, line in rows if s <= step))


def main(argv: Sequence[str] | None = None) -> None:
    run(train, parser(), argv)
