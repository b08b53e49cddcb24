"""train.py's flags and config: presets (generic and per system), the frozen TrainConfig saved
next to every run, and the curriculum parser."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from physdiff import systems
from physdiff.checks import UsageError, non_negative, positive
from physdiff.training import Stage

__all__ = ["GENERIC_PRESETS", "TrainConfig", "extension_problem", "make_config", "parse_stages",
           "parser", "presets"]

# presets every system has; a system adds its own (System.presets)
GENERIC_PRESETS: dict[str, dict[str, Any]] = {
    # seconds: for tests
    "tiny": {"stages": "1:6,2:4", "batch_size": 4, "lr": 1e-3, "width": 4, "depth": 1},
}


def presets(system: type[systems.System] | systems.System) -> dict[str, dict[str, Any]]:
    """The --preset names a system's data accept: the generic ones and the system's own."""
    return {**GENERIC_PRESETS, **system.presets}


@dataclass(frozen=True)
class TrainConfig:
    data: str
    stages: str = "1:3000,4:500,8:500"
    batch_size: int = 32
    lr: float = 1e-3
    final_lr_factor: float = 0.5
    clip: float = 10.0
    width: int = 32
    depth: int = 4
    spectral: bool = True
    method: str = "euler"
    augment: bool = True
    val_every: int = 250
    seed: int = 0
    calibration_trajectories: int = 512
    physics: str = "true"
    physics_width: int = 64
    anchor_weight: float = 1.0
    one_step_weight: float = 0.0  # teacher-forced one-step loss on every pair of a window
    val_trajectories: int = 64
    val_chunk: int = 64
    heldout_trajectories: int = 32  # validation trajectories for the held-out calibration check
    patience: int = 0  # end a one-step stage after this many validations without improvement
    min_improvement: float = 1e-3  # relative margin that counts as an improvement (--patience)
    system: str | None = None  # overrides the system the data record (name or module:Class)


def parse_stages(text: str, final_lr_factor: float) -> list[Stage]:
    """'ROLLOUT:STEPS[:LR_FACTOR],...' -> stages; the last stage without an explicit factor gets
    `final_lr_factor`, the others 1."""
    stages = []
    try:
        for item in text.split(","):
            parts = item.split(":")
            if len(parts) not in (2, 3):
                raise ValueError
            factor = float(parts[2]) if len(parts) == 3 else None
            stages.append((int(parts[0]), int(parts[1]), factor))
    except ValueError:
        raise UsageError(f"--stages {text!r}: expected ROLLOUT:STEPS[:LR_FACTOR],...") from None
    if not stages or any(r < 1 or n < 1 or (f is not None and f <= 0) for r, n, f in stages):
        raise UsageError(f"--stages {text!r}: rollouts and step counts must be >= 1, learning-"
                         "rate factors > 0")
    last = len(stages) - 1
    return [Stage(r, n, f if f is not None else (final_lr_factor if i == last else 1.0))
            for i, (r, n, f) in enumerate(stages)]


def extension_problem(old: str, new: str, final_lr_factor: float) -> str | None:
    """Why curriculum `new` does not continue `old` (None if it does): it must repeat every
    stage of `old`, learning-rate factor included, and append at least one. The last stage of
    `old` ran at `final_lr_factor` unless it named its own, so in `new`, where it is no longer
    last, it must name that factor: then `new` from scratch trains what `old` then the appended
    stages did, and the checkpoint's recorded curriculum stays true."""
    before, after = parse_stages(old, final_lr_factor), parse_stages(new, final_lr_factor)
    if len(after) <= len(before):
        return "it appends no stage"
    for i, (a, b) in enumerate(zip(before, after, strict=False)):
        if (a.rollout, a.steps) != (b.rollout, b.steps):
            return (f"its stage {i + 1} is {b.rollout}:{b.steps}, the checkpoint's "
                    f"{a.rollout}:{a.steps}")
        if a.lr_factor != b.lr_factor:
            return (f"stage {i + 1} ran at learning-rate factor {a.lr_factor:g}: write it as "
                    f"{a.rollout}:{a.steps}:{a.lr_factor:g}")
    return None


def parser(description: str = "") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with train.h5 and valid.h5")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--preset", help="defaults for the flags below: 'tiny' or one of the data's "
                   "system (e.g. 'demo'; an unknown name lists them)")
    p.add_argument("--stages", help="curriculum ROLLOUT:STEPS[:LR_FACTOR],... "
                   "(default 1:3000,4:500,8:500)")
    p.add_argument("--batch-size", type=positive(int))
    p.add_argument("--lr", type=positive(float), help="Adam learning rate")
    p.add_argument("--final-lr-factor", type=positive(float), default=0.5,
                   help="learning-rate factor of the last stage, unless it names its own")
    p.add_argument("--clip", type=positive(float), default=10.0, help="element-wise grad clip")
    p.add_argument("--width", type=positive(int))
    p.add_argument("--depth", type=positive(int))
    p.add_argument("--no-spectral", dest="spectral", action="store_false",
                   help="drop the network's Fourier-multiplier branch")
    p.add_argument("--method", default="euler", choices=["euler", "midpoint", "rk4"],
                   help="torchdiffeq method of multi-step rollouts (euler = discrete steps)")
    p.add_argument("--one-step-weight", type=non_negative(float),
                   help="in multi-step stages, add this weight times the one-step loss on every "
                   "pair of the window (keeps the per-step kernel, which the probability-flow "
                   "ODE needs, accurate; default 0)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random rotations / flips / translations")
    p.add_argument("--val-every", type=positive(int), help="validate every N updates (250)")
    p.add_argument("--patience", type=non_negative(int),
                   help="end a one-step stage early once its validation loss has not improved "
                   "for this many validations (every --val-every updates); give a generous "
                   "step count and let this end it (default 0: run every stage to its count)")
    p.add_argument("--min-improvement", type=non_negative(float),
                   help="with --patience, the relative drop below the best validation loss "
                   "that counts as an improvement (default 0.001)")
    p.add_argument("--save-every", type=positive(int), default=500,
                   help="save a checkpoint every N updates (500)")
    p.add_argument("--save-minutes", type=positive(float), default=10.0,
                   help="and at least every M minutes of training (10): a killed run resumes "
                   "from its last save")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--physics", choices=["true", "learned", "none"],
                   help="physics drift: the simulator, a network learned jointly, or none "
                   "(default true)")
    p.add_argument("--physics-width", type=positive(int), help="learned physics MLP width (64)")
    p.add_argument("--anchor-weight", type=positive(float),
                   help="weight of the forward one-step loss of learned physics (1)")
    p.add_argument("--heldout-trajectories", type=positive(int),
                   help="validation trajectories of the held-out calibration check (32)")
    p.add_argument("--calibration-trajectories", type=positive(int),
                   help="training trajectories used to calibrate the reverse-step noise (512)")
    p.add_argument("--system", help="the System class for these data, if not the one they "
                   "record: a name or package.module:Class")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--stop-after", type=positive(int),
                   help="stop (with a checkpoint) after this many updates in this invocation")
    return p


def make_config(args: argparse.Namespace, system: systems.System) -> TrainConfig:
    known = presets(system)
    if args.preset is not None and args.preset not in known:
        raise UsageError(f"--preset {args.preset}: {system.name} data take "
                         f"{', '.join(sorted(known))}")
    values = dict(known[args.preset]) if args.preset else {}
    for f in fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:  # preset keys have no argparse default: given means typed
            values[f.name] = given
    values["data"] = str(args.data)
    return TrainConfig(**values)
