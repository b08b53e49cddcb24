#!/usr/bin/env python3
"""Train a score network s_θ(x, t) through the physics drift, with a rollout curriculum.

The curriculum is a list of stages ROLLOUT:STEPS; rollout 1 is the one-step loss, longer rollouts
are the multi-step loss integrated with torchdiffeq through the physics (method.md §3). The last
stage runs at --final-lr-factor × --lr (fine-tuning).

Examples:
    python train.py --data runs/demo/data --out runs/demo --preset demo
    python train.py --data datasets/heat-32 --out runs/heat-32 --preset heat-32 --resume
    python train.py --data datasets/heat-32 --out runs/one-step --stages 1:20000

The physics drift (--physics): 'true' runs the dataset's simulator (heat, nbody); 'learned'
trains a physics network P_φ jointly with the score, anchored by the forward one-step loss
(nbody); 'none' drops the physics so that the network alone learns the reverse step (baseline).

Outputs in --out: checkpoint.pt (score and physics weights, optimiser, step, RNG state, config,
normalisation, noise calibration), config.json, log.jsonl (one JSON line per logged step),
loss.png.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cli import UsageError, positive, run, write_text_atomic
from physdiff.data import Metadata, read
from physdiff.losses import forward_loss, multi_step_loss, one_step_loss
from physdiff.sde import Drift, reverse_drift
from physdiff.training import Stage, fit, load_checkpoint, save_checkpoint
from systems import code_version, pick_device, system_for

PRESETS: dict[str, dict[str, Any]] = {
    # about 2 minutes on 2 CPU cores. Width 16 / depth 1 measured as the best speed-accuracy
    # trade on heat (a 3×3 CNN plus the per-mode spectral branch); the multi-step stages at the
    # full learning rate helped more than at 0.1-0.2× (README, "Choices we measured").
    "demo": {"stages": "1:1500,4:300,8:200", "batch_size": 32, "lr": 1e-3, "width": 16,
             "depth": 1},
    # the heat-32 benchmark model. The curriculum stops at 8 steps: a run that went on to 16 and
    # 32 steps got an exact mean path but a degraded per-step kernel and unusable SDE samples
    # (README, "Choices we measured").
    "heat-32": {"stages": "1:5000,4:2500,8:2000", "batch_size": 32,
                "lr": 1e-3, "width": 16, "depth": 1},
    # the N-body toy: a 2-layer set transformer of width 64 (pass --physics learned / none for
    # the joint-physics and network-only models)
    "nbody": {"stages": "1:3000,4:600", "batch_size": 64, "lr": 1e-3, "width": 64,
              "depth": 2},
    # smoke-64: a U-Net of width 16 (0.24 s per update of 16 states, against 0.65 s for one
    # batched PhiFlow inverse step of 16). An update of a rollout stage longer than 1 runs the
    # PhiFlow step with gradients item by item (simulators/smoke.py; 0.6 s per item and step;
    # timings: python benchmarks/smoke_speed.py),
    # so the multi-step stage is short. Validation on 2 trajectories (130 physics steps) and
    # calibration on 16 keep those cheap.
    "smoke-64": {"stages": "1:2500,2:60", "batch_size": 8, "lr": 1e-3, "width": 16,
                 "depth": 1, "val_every": 500, "val_trajectories": 2, "val_chunk": 1,
                 "calibration_trajectories": 16},
    "smoke-demo": {"stages": "1:600,2:60", "batch_size": 8, "lr": 1e-3, "width": 16,
                   "depth": 1, "val_every": 200, "val_trajectories": 4, "val_chunk": 1,
                   "calibration_trajectories": 8},
    # seconds: for tests
    "tiny": {"stages": "1:6,2:4", "batch_size": 4, "lr": 1e-3, "width": 4, "depth": 1},
}


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
    val_trajectories: int = 64
    val_chunk: int = 64


# flags that may change on --resume without changing the result
RUNTIME_FLAGS = ("device", "resume", "stop_after", "save_every", "debug", "out", "preset")


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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="folder with train.h5 and valid.h5")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--preset", choices=sorted(PRESETS), help="defaults for the flags below")
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
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="no random rotations / flips / translations")
    p.add_argument("--val-every", type=positive(int), help="validate every N updates (250)")
    p.add_argument("--save-every", type=positive(int), default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--physics", choices=["true", "learned", "none"],
                   help="physics drift: the simulator, a network learned jointly, or none "
                   "(default true)")
    p.add_argument("--physics-width", type=positive(int), help="learned physics MLP width (64)")
    p.add_argument("--anchor-weight", type=positive(float),
                   help="weight of the forward one-step loss of learned physics (1)")
    p.add_argument("--calibration-trajectories", type=positive(int),
                   help="training trajectories used to calibrate the reverse-step noise (512)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--resume", action="store_true", help="continue from --out/checkpoint.pt")
    p.add_argument("--stop-after", type=positive(int),
                   help="stop (with a checkpoint) after this many updates in this invocation")
    return p


def make_config(args: argparse.Namespace) -> TrainConfig:
    values = dict(PRESETS[args.preset]) if args.preset else {}
    for f in fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None:  # preset keys have no argparse default: given means typed
            values[f.name] = given
    values["data"] = str(args.data)
    return TrainConfig(**values)


class Batches:
    """Random windows from in-memory trajectories, with their condition (or None); every draw
    uses the given generator."""

    def __init__(self, x: torch.Tensor, meta: Metadata, system: Any, device: torch.device,
                 augment: bool, condition: torch.Tensor | None = None) -> None:
        self.x, self.meta, self.system, self.device, self.augment = x, meta, system, device, augment
        self.condition = condition

    def __call__(self, batch_size: int, rollout: int, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        n, k_plus_1 = self.x.shape[:2]
        traj = torch.randint(0, n, (batch_size,), generator=generator)
        end = torch.randint(rollout, k_plus_1, (batch_size,), generator=generator)
        steps = end[:, None] - rollout + torch.arange(rollout + 1)
        window = self.x[traj[:, None], steps]
        if self.augment:
            window = self.system.augment(window, generator)
        t_end = end.double() * self.meta.dt
        cond = None if self.condition is None else self.condition[traj].to(self.device)
        return window.to(self.device), t_end.to(self.device, window.dtype), cond


def _log_lines_upto(log: Path, step: int) -> None:
    """Drop log lines past `step` (written after the checkpoint an interrupted run resumes)."""
    if log.exists():
        lines = [ln for ln in log.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        write_text_atomic(log, "".join(ln + "\n" for ln in lines))


def train(args: argparse.Namespace) -> None:
    cfg = make_config(args)
    stages = parse_stages(cfg.stages, cfg.final_lr_factor)
    device = pick_device(args.device)
    data = read(args.data / "train.h5")
    valid = read(args.data / "valid.h5", simulator=data.meta.simulator)
    if max(s.rollout for s in stages) > data.meta.n_steps:
        raise UsageError(f"--stages: rollout {max(s.rollout for s in stages)} exceeds the "
                         f"{data.meta.n_steps} steps of {args.data / 'train.h5'}")
    system = system_for(data.meta, data.x.shape[2:])
    condition = system.condition(data.extras, str(args.data / "train.h5"))
    valid_condition = system.condition(valid.extras, str(args.data / "valid.h5"))
    torch.manual_seed(cfg.seed)  # network initialisation
    model = system.score_net(cfg.width, cfg.depth, cfg.spectral, cfg.physics).to(device)
    physics_net = (system.physics_net(cfg.physics_width).to(device) if cfg.physics == "learned"
                   else None)
    params = list(model.parameters()) + (list(physics_net.parameters()) if physics_net else [])
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    generator = torch.Generator().manual_seed(cfg.seed)
    ckpt_path, log_path = args.out / "checkpoint.pt", args.out / "log.jsonl"
    start, skipped = 0, 0
    if ckpt_path.exists():
        if not args.resume:
            raise UsageError(f"{ckpt_path} exists: pass --resume to continue it, or another --out")
        state = load_checkpoint(ckpt_path)
        old = {**asdict(TrainConfig(data=cfg.data)), **state["config"]}  # keys added later
        if old != asdict(cfg):
            diff = {k: (old.get(k), v) for k, v in asdict(cfg).items() if old.get(k) != v}
            raise UsageError(f"{ckpt_path}: was trained with other settings {diff} "
                             "(old, new); use the same flags or another --out")
        model.load_state_dict(state["model"])
        if physics_net is not None:
            physics_net.load_state_dict(state["physics"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, skipped = state["step"], state["skipped"]
        _log_lines_upto(log_path, start)
        if state.get("noise_spectra") is not None and start >= sum(s.steps for s in stages):
            print(f"{ckpt_path}: training already complete ({start} updates)")
            return
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "config.json", json.dumps(asdict(cfg), indent=2) + "\n")

    def drift_for(cond: torch.Tensor | None) -> Drift:
        """The c = 1 reverse drift, bound to a batch's condition (None for most systems)."""
        return reverse_drift(system.physics_drift(cfg.physics, physics_net, cond),
                             system.score_fn(model, cond), data.meta.g, c=1.0)

    batches = Batches(data.x, data.meta, system, device, cfg.augment, condition)
    dt, g = data.meta.dt, data.meta.g

    def loss_fn(rollout: int, gen: torch.Generator) -> torch.Tensor:
        window, t_end, cond = batches(cfg.batch_size, rollout, gen)
        drift = drift_for(cond)
        if rollout == 1:
            loss = one_step_loss(drift, window[:, 0], window[:, 1], t_end, dt, g)
        else:
            loss = multi_step_loss(drift, window, t_end, dt, g, cfg.method)
        if physics_net is not None:  # anchor P_φ on the forward steps of the same windows
            pairs = window[:, :2] if rollout == 1 else window
            loss = loss + cfg.anchor_weight * forward_loss(
                system.forward_step(physics_net), pairs[:, :-1].flatten(0, 1),
                pairs[:, 1:].flatten(0, 1), dt, g)
        return loss

    val = valid.x[:cfg.val_trajectories].to(device)
    val_times = valid.meta.times()[1:].to(device, val.dtype)
    val_cond = None if valid_condition is None else valid_condition[:cfg.val_trajectories]

    @torch.no_grad()
    def validate() -> float:
        """One-step loss over every step of the first validation trajectories, in chunks."""
        model.eval()
        total, count = 0.0, 0
        for i in range(0, val.shape[0], cfg.val_chunk):
            chunk = val[i:i + cfg.val_chunk]
            k = chunk.shape[1] - 1
            cond = (None if val_cond is None
                    else val_cond[i:i + cfg.val_chunk].repeat_interleave(k, 0).to(device))
            total += one_step_loss(drift_for(cond), chunk[:, :-1].flatten(0, 1),
                                   chunk[:, 1:].flatten(0, 1), val_times.repeat(chunk.shape[0]),
                                   dt, g).item() * chunk.shape[0]
            count += chunk.shape[0]
        model.train()
        return total / count

    def save(step: int, noise_spectra: torch.Tensor | None = None) -> None:
        save_checkpoint(ckpt_path, model=model.state_dict(), optimizer=optimizer.state_dict(),
                        step=step, skipped=skipped, generator=generator.get_state(),
                        config=asdict(cfg), meta=asdict(data.meta),
                        state_shape=list(data.x.shape[2:]), version=code_version(),
                        noise_spectra=noise_spectra,
                        physics=physics_net.state_dict() if physics_net is not None else None)

    total = sum(s.steps for s in stages)
    stop_at = min(total, start + args.stop_after) if args.stop_after else total
    interrupted = []
    signal.signal(signal.SIGTERM, lambda *_: interrupted.append(True))
    step, t0 = start, time.perf_counter()
    bar = tqdm(total=total, initial=start, desc="train", unit="step", disable=None)
    with log_path.open("a") as log:
        for metrics in fit(params, loss_fn, optimizer, stages, cfg.lr,
                           generator, start, skipped, cfg.clip):
            step, skipped = metrics["step"], metrics["skipped"]
            if step % cfg.val_every == 0 or step == total:
                metrics["val_loss"] = validate()
            if step % 10 == 0 or "val_loss" in metrics:
                metrics["time"] = round(time.perf_counter() - t0, 2)
                log.write(json.dumps(metrics) + "\n")
                log.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", S=metrics["rollout"], skipped=skipped)
            if step % args.save_every == 0:
                save(step)
            if step >= stop_at or interrupted:
                break
    bar.close()
    if step < total:
        save(step)
        print(f"stopped at update {step}/{total}; continue with --resume")
        return
    model.eval()
    n_cal = min(cfg.calibration_trajectories, data.x.shape[0])
    cal_cond = None if condition is None else condition[:n_cal].to(device)
    save(step, system.calibrate(drift_for, data.x[:n_cal].to(device), cal_cond))
    print(f"trained {total} updates ({skipped} skipped as non-finite) in "
          f"{time.perf_counter() - t0:.0f} s; validation one-step loss {validate():.4f}; "
          f"checkpoint {ckpt_path}")
    plot_log(log_path, args.out / "loss.png")


def plot_log(log: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(ln) for ln in log.read_text().splitlines() if ln]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy([r["step"] for r in rows], [r["loss"] for r in rows], lw=0.8, label="train")
    val = [r for r in rows if "val_loss" in r]
    ax.semilogy([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="valid (one-step)")
    ax.set_xlabel("update")
    ax.set_ylabel("loss / (g² dt)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    run(train, parser(), argv)


if __name__ == "__main__":
    main(sys.argv[1:])
