"""What the smoke diagnostics share (smoke_horizon, smoke_temperature, smoke_resim): they score
the models benchmarks/smoke.py trained, train nothing, and write a JSON beside its smoke.json.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from common import ROOT, sampling_parser, script
from smoke import CONFIGS, command, results_folder

from physdiff.checks import non_negative
from physdiff.io import write_text_atomic
from physdiff.runtime import code_version, pick_device

# |k| on the 64² grid at which the diagnostics split the smoke into scales (wavelengths of 8 and
# 4 cells), and the bands between them: |k| < 8, 8-16, >= 16 (None: no upper bound)
SCALES = (8, 16)
BANDS = tuple(zip((0, *SCALES), (*SCALES, None), strict=True))


def trained_parser(doc: str, n_samples: int, seed: int) -> argparse.ArgumentParser:
    """The flags of the scripts that score the models smoke.py trained (no training): which
    models (--config, --train-seed), and how they are sampled."""
    p = sampling_parser(doc, n_samples, batch_size=32)
    p.add_argument("--config", choices=sorted(CONFIGS), default="full")
    p.add_argument("--seed", type=int, default=seed)
    p.add_argument("--train-seed", type=non_negative(int), default=0,
                   help="the models of benchmarks/smoke.py --train-seed N (0: its default)")
    return p


def trained_checkpoints(config: str, train_seed: int) -> dict[str, Path]:
    """The checkpoints of the physdiff ('true') and network-only ('none') models of a
    benchmark run, or a one-line exit naming the missing one and the command that makes it."""
    out = results_folder(CONFIGS[config], train_seed)
    paths = {physics: out / physics / "checkpoint.pt" for physics in ("true", "none")}
    for path in paths.values():
        if not path.exists():
            raise SystemExit(f"{path}: not found; run "
                             f"{command('smoke.py', config, train_seed)} first")
    return paths


@dataclass(frozen=True)
class TrainedRun:
    """One smoke.py run as a diagnostic's flags name it: its checkpoints, configuration,
    results folder (`out`), dataset folder and the device to score on."""

    checkpoints: dict[str, Path]
    cfg: dict[str, str]
    out: Path
    data: Path
    device: torch.device

    @classmethod
    def of(cls, args: argparse.Namespace) -> TrainedRun:
        cfg = CONFIGS[args.config]
        checkpoints = trained_checkpoints(args.config, args.train_seed)
        # the data smoke.py trained on; generate.py keeps splits that exist with the same recipe
        script("generate.py", "--recipe", cfg["recipe"], "--out", str(ROOT / cfg["data"]))
        return cls(checkpoints, cfg, results_folder(cfg, args.train_seed), ROOT / cfg["data"],
                   pick_device(args.device))

    def write(self, name: str, args: argparse.Namespace, fields: dict[str, Any]) -> None:
        """Write benchmarks/`name`.py's JSON (`name`.json) beside smoke.json: the command that
        reproduces it, the code version, the configuration and `fields`."""
        result = {"command": command(f"{name}.py", args.config, args.train_seed),
                  "version": code_version(), "config": self.cfg, **fields,
                  "targets": []}  # a diagnostic: issue 10's targets are scored in smoke.json
        path = self.out / f"{name}.json"
        write_text_atomic(path, json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
