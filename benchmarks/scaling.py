#!/usr/bin/env python3
"""Throughput at 1 and 2 processes (one thread each) on this machine, side by side in one run.

Training: heat-32 updates per second (the heat-32 preset's network and batch, one-step and
4-step rollouts), `python train.py` against `torchrun --nproc_per_node=2 train.py` (the same
global batch, split between the processes; physdiff/distributed.py). Sampling: posterior samples
per second, `python infer.py` against `torchrun --nproc_per_node=2 infer.py` on the same test
observations (shared between the processes in fixed chunks; physdiff/chunks.py). Prints a table
and writes benchmarks/results/scaling/scaling.json with targets (2-process throughput >= 1.7x).

Example:
    python benchmarks/scaling.py           # heat-demo data; a few minutes
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, base_parser

from physdiff.io import write_text_atomic
from physdiff.runtime import code_version

STAGES = "1:150,4:50"


def run(argv: list[str]) -> float:
    """Wall time of one command, with one thread per process."""
    return run_output(argv)[0]


def run_output(argv: list[str]) -> tuple[float, str]:
    """Wall time and stdout of one command, with one thread per process."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE,
                          text=True)
    return time.perf_counter() - t0, done.stdout


def sampling_seconds(stdout: str) -> float:
    """The reverse-SDE time infer.py reports ('... samples each in X s'): the busiest
    process's, so start-up, metrics and figures are left out."""
    found = re.search(r"samples each in ([0-9.]+) s", stdout)
    if found is None:
        raise SystemExit("infer.py did not report its sampling time")
    return float(found.group(1))


def train_seconds(out: Path) -> float:
    """Training-loop seconds of a finished run (log.jsonl's last time stamp)."""
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line]
    return rows[-1]["time"]


def main() -> None:
    args = base_parser(__doc__, n_samples=16, batch_size=512).parse_args()
    work = ROOT / "runs/scaling"
    data = work / "data"
    subprocess.run([sys.executable, "generate.py", "--recipe", "datasets/heat-demo.json",
                    "--out", str(data)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    flags = ["--data", str(data), "--preset", "heat-32", "--stages", STAGES, "--device", "cpu",
             "--calibration-trajectories", "64", "--heldout-trajectories", "8"]
    updates = sum(int(stage.split(":")[1]) for stage in STAGES.split(","))
    for name in ("one", "two"):
        for leftover in (work / name).glob("*"):
            leftover.unlink()
    run([sys.executable, "train.py", *flags, "--out", str(work / "one")])
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "train.py", *flags, "--out", str(work / "two")])
    t1, t2 = train_seconds(work / "one"), train_seconds(work / "two")
    ckpt = str(work / "one/checkpoint.pt")
    limit = args.limit or 64
    n = args.n_samples
    infer_flags = ["infer.py", "--checkpoint", ckpt, "--data", str(data / "test.h5"),
                   "--limit", str(limit), "--n-samples", str(n), "--device", "cpu"]
    w1, out1 = run_output([sys.executable, *infer_flags, "--out", str(work / "infer-one")])
    w2, out2 = run_output([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", *infer_flags, "--out", str(work / "infer-two")])
    s1, s2 = sampling_seconds(out1), sampling_seconds(out2)
    rows = {"train updates/s, 1 process": updates / t1, "train updates/s, 2 processes": updates / t2,
            "posterior samples/s, 1 process": limit * n / s1,
            "posterior samples/s, 2 processes": limit * n / s2,
            "infer.py wall seconds, 1 process": w1, "infer.py wall seconds, 2 processes": w2}
    ratios = {"training": t1 / t2, "sampling": s1 / s2}
    for k, v in rows.items():
        print(f"{k:34s}{v:10.2f}")
    for k, v in ratios.items():
        print(f"{k} speed-up at 2 processes: {v:.2f} (target >= 1.7)")
    targets = [{"name": f"heat-32 {k}: 2-process / 1-process throughput", "value": v,
                "target": ">= 1.7", "met": v >= 1.7} for k, v in ratios.items()]
    write_text_atomic(ROOT / "benchmarks/results/scaling/scaling.json", json.dumps({
        "rows": rows, "ratios": ratios, "targets": targets, "version": code_version(),
        "command": "python benchmarks/scaling.py", "stages": STAGES, "observations": limit,
        "n_samples": n, "note": "one thread per process; sampling throughput from the "
        "reverse-SDE time infer.py reports (the busiest process's); the infer.py wall times "
        "also hold start-up, the exact-posterior metrics and the figures (rank 0 alone)"},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
