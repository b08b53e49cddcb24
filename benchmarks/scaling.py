#!/usr/bin/env python3
"""Throughput at 1 and 2 processes (one thread each) on this machine, side by side in one run.

Training: heat-32 updates per second (the heat-32 preset's network and batch, and its curriculum
shrunk 50-fold, so each rollout length takes the same share of the time as in a heat-32 run), `python train.py` against `torchrun --nproc_per_node=2 train.py` (the same
global batch, split between the processes; physdiff/distributed.py). Sampling: posterior samples
per second, `python infer.py` against `torchrun --nproc_per_node=2 infer.py` on the same test
observations (shared between the processes in fixed chunks; physdiff/chunks.py). Beside them, the
ceiling this machine allows: two independent training runs of half the batch each, at the same
time. This machine's speed drifts between runs, so each comparison is a back-to-back pair and the
medians over --repeats pairs are reported. Prints a table
and writes benchmarks/results/scaling/scaling.json with targets (2-process throughput >= 1.7x).

Example:
    python benchmarks/scaling.py           # heat-demo data; a few minutes
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, base_parser

from physdiff import systems
from physdiff.io import write_text_atomic
from physdiff.runtime import code_version

SHRINK = 50  # the heat-32 curriculum 1:5000,4:2500,8:2000 becomes 1:100,4:50,8:40


def shrunk_stages() -> str:
    """The heat-32 preset's stages with every step count divided by SHRINK."""
    stages = systems.get("heat").presets["heat-32"]["stages"]
    return ",".join(f"{r}:{int(n) // SHRINK}" for r, n in
                    (item.split(":")[:2] for item in stages.split(",")))


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


def log_times(out: Path) -> dict[int, float]:
    """Update -> training-loop seconds of a finished run (log.jsonl's time stamps, every 10
    updates and at the end)."""
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line]
    return {row["step"]: row["time"] for row in rows}


def stage_rates(times: dict[int, float], stages: str) -> dict[int, float]:
    """Rollout length -> updates per second within that stage, between the log stamps 10
    updates after it starts and 10 before it ends (so neither a stage change nor the final
    validation is counted)."""
    rates, first = {}, 0
    for item in stages.split(","):
        rollout, steps = (int(v) for v in item.split(":")[:2])
        a, b = first + 10, first + steps - 10
        rates[rollout] = (b - a) / (times[b] - times[a])
        first += steps
    return rates


def launch(argv: list[str], processes: int) -> list[str]:
    """The command line that runs a project script in one process or under torchrun."""
    if processes == 1:
        return [sys.executable, *argv]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={processes}", *argv]


def concurrent(argvs: list[list[str]]) -> None:
    """Run commands at the same time (one thread each) and wait for all of them."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    jobs = [subprocess.Popen(a, cwd=ROOT, env=env, stdout=subprocess.DEVNULL) for a in argvs]
    if any(job.wait() for job in jobs):
        raise SystemExit(f"a concurrent run failed: {argvs}")


def train_pair(work: Path, flags: list[str], stages: str) -> dict[str, float]:
    """One 1-process and one 2-process training run, back to back, then two independent
    half-batch runs at the same time (no communication: what the two cores give at best)."""
    updates = sum(int(stage.split(":")[1]) for stage in stages.split(","))
    row = {}
    for p in (1, 2):
        out = work / f"train-{p}"
        shutil.rmtree(out, ignore_errors=True)
        run(launch(["train.py", *flags, "--out", str(out)], p))
        times = log_times(out)
        row[f"train updates/s, {p} process"] = updates / times[updates]
        for r, rate in stage_rates(times, stages).items():
            row[f"train updates/s, rollout {r}, {p} process"] = rate
    half = str(int(systems.get("heat").presets["heat-32"]["batch_size"]) // 2)
    outs = [work / f"train-half-{i}" for i in (0, 1)]
    for out in outs:
        shutil.rmtree(out, ignore_errors=True)
    concurrent([[sys.executable, "train.py", *flags, "--batch-size", half, "--seed", str(i),
                 "--out", str(out)] for i, out in enumerate(outs)])
    row["train updates/s, 2 independent half-batch processes (ceiling)"] = 2 * updates / (
        sum(log_times(out)[updates] for out in outs))
    for key in [k for k in row if k.endswith(", 1 process")]:
        row[key.replace("updates/s", "speed-up").replace(", 1 process", "")] = (
            row[key.replace("1 process", "2 process")] / row[key])
    row["train speed-up ceiling"] = (
        row["train updates/s, 2 independent half-batch processes (ceiling)"]
        / row["train updates/s, 1 process"])
    return row


def sample_pair(work: Path, infer_flags: list[str], samples: int) -> dict[str, float]:
    """One 1-process and one 2-process infer.py run, back to back: throughputs and the ratio."""
    row = {}
    for p in (1, 2):
        wall, out = run_output(launch([*infer_flags, "--out", str(work / f"infer-{p}")], p))
        row[f"posterior samples/s, {p} process"] = samples / sampling_seconds(out)
        row[f"infer.py wall seconds, {p} process"] = wall
    row["sampling speed-up"] = (row["posterior samples/s, 2 process"]
                                / row["posterior samples/s, 1 process"])
    return row


def main() -> None:
    parser = base_parser(__doc__, n_samples=16, batch_size=512)
    parser.add_argument("--repeats", type=int, default=3,
                        help="back-to-back 1- and 2-process pairs; the median is reported (3)")
    args = parser.parse_args()
    work = ROOT / "runs/scaling"
    data = work / "data"
    subprocess.run([sys.executable, "generate.py", "--recipe", "datasets/heat-demo.json",
                    "--out", str(data)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    stages = shrunk_stages()
    flags = ["--data", str(data), "--preset", "heat-32", "--stages", stages, "--device", "cpu",
             "--calibration-trajectories", "64", "--heldout-trajectories", "8"]
    limit, n = args.limit or 64, args.n_samples
    infer_flags = ["infer.py", "--checkpoint", str(work / "train-1/checkpoint.pt"), "--data",
                   str(data / "test.h5"), "--limit", str(limit), "--n-samples", str(n),
                   "--device", "cpu"]
    pairs = []
    for i in range(args.repeats):
        pairs.append({**train_pair(work, flags, stages),
                      **sample_pair(work, infer_flags, limit * n)})
        print(f"pair {i + 1}/{args.repeats}: training speed-up "
              f"{pairs[-1]['train speed-up']:.2f}, sampling {pairs[-1]['sampling speed-up']:.2f}",
              flush=True)
    rows = {k: statistics.median(p[k] for p in pairs) for k in pairs[0]}
    for k, v in rows.items():
        print(f"{k:45s}{v:10.2f}")
    targets = [{"name": f"heat-32 {k}: 2-process / 1-process throughput (median of "
                f"{args.repeats} pairs)", "value": rows[f"{k} speed-up"], "target": ">= 1.7",
                "met": rows[f"{k} speed-up"] >= 1.7} for k in ("train", "sampling")]
    write_text_atomic(ROOT / "benchmarks/results/scaling/scaling.json", json.dumps({
        "rows": rows, "pairs": pairs, "targets": targets, "version": code_version(),
        "command": "python benchmarks/scaling.py", "stages": stages, "observations": limit,
        "n_samples": n, "note": "one thread per process; medians over back-to-back 1- and "
        "2-process pairs (this machine's speed drifts between runs); training throughput over "
        "the whole run (the heat-32 curriculum shrunk 50-fold, final validation included), "
        "with the per-rollout rates beside it, and the ceiling: two independent runs of half "
        "the batch each at the same time, without communication; sampling throughput from the reverse-SDE time "
        "infer.py reports (the busiest process's); the infer.py wall times also hold "
        "start-up, the exact-posterior metrics and the figures (rank 0 alone)"},
        indent=2) + "\n")


if __name__ == "__main__":
    main()
