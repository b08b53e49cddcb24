"""Shared by the benchmark scripts: run the project's scripts, train resumable models."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py

from physdiff.checks import positive
from physdiff.cli.train import finished
from physdiff.data import read
from physdiff.io import write_text_atomic
from physdiff.runtime import code_version
from physdiff.training import load_checkpoint

ROOT = Path(__file__).resolve().parent.parent  # train.py, infer.py, generate.py, datasets/
# every benchmark imports this module first: read the code version now, so that a JSON written
# hours later records the commit the run started from (code_version caches it)
code_version()

__all__ = ["ROOT", "base_parser", "mean_seconds", "print_table", "print_targets",
           "sampling_parser", "script", "targets_of", "train_model", "with_end_state"]


def sampling_parser(doc: str, n_samples: int, batch_size: int) -> argparse.ArgumentParser:
    """The flags of every benchmark that samples: --n-samples, --batch-size, --device."""
    p = argparse.ArgumentParser(description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-samples", type=positive(int), default=n_samples,
                   help=f"posterior samples per observation ({n_samples})")
    p.add_argument("--batch-size", type=positive(int), default=batch_size,
                   help=f"samples integrated at once ({batch_size})")
    p.add_argument("--device", default="auto")
    return p


def base_parser(doc: str, n_samples: int, batch_size: int) -> argparse.ArgumentParser:
    """The flags every benchmark that trains has: sampling_parser's, --quick and --limit."""
    p = sampling_parser(doc, n_samples, batch_size)
    p.add_argument("--quick", action="store_true", help="small data and short training: minutes")
    p.add_argument("--limit", type=positive(int),
                   help="evaluate on the first N test states (default all)")
    return p


def script(*argv: str, threads: int | None = None) -> float:
    """Run one of the project's scripts (with `threads` torch / OpenMP threads if given); return
    its wall time. If it fails, exit with one line naming it: the script has printed its own
    error already, and a traceback of this process would bury it."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads else None
    t0 = time.perf_counter()
    rc = subprocess.run([sys.executable, *argv], check=False, cwd=ROOT, env=env).returncode
    if rc != 0:
        raise SystemExit(f"{' '.join(argv)} failed (exit status {rc}); its error is above")
    return time.perf_counter() - t0


def train_model(data: Path, out: Path, extra: list[str], device: str,
                threads: int | None = None) -> float:
    """Train (or resume, or find complete) a model; return total training wall time in seconds,
    summed over the invocations that did work (kept in out/wall_time.json; the checkpoint's
    own `train_seconds` where it has one, which also counts an invocation killed after a
    save)."""
    ckpt = out / "checkpoint.pt"
    if ckpt.exists() and _stale(ckpt, data):
        stale = out.with_name(out.name + ".stale")
        print(f"{ckpt} was trained on other data than {data} (regenerated since): moved to "
              f"{stale}, training again", flush=True)
        if stale.exists():
            shutil.rmtree(stale)
        out.rename(stale)
    record = out / "wall_time.json"
    times = json.loads(record.read_text()) if record.exists() else {"seconds": 0.0}
    before = load_checkpoint(ckpt) if ckpt.exists() else None
    # train.py --resume also continues a finished run whose curriculum the flags extend, and
    # returns at once from a complete one
    seconds = script("train.py", "--data", str(data), "--out", str(out), "--resume",
                     "--device", device, *extra, threads=threads)
    after = load_checkpoint(ckpt)
    advanced = before is None or after["step"] > before["step"]
    if advanced and after.get("train_seconds") is not None:
        # train.py's own sum over invocations: also counts one killed before it returned here
        times["seconds"] = after["train_seconds"]
    elif advanced:
        times["seconds"] += seconds
    elif not finished(before):
        # only the finishing step of an older version ran again: kept apart, not training
        times["refinish_seconds"] = times.get("refinish_seconds", 0.0) + seconds
    write_text_atomic(record, json.dumps(times) + "\n")
    return times["seconds"]


def _stale(ckpt: Path, data: Path) -> bool:
    """Whether a checkpoint's training data differ from data/train.h5 as it is now, judged by
    the normalisation statistics the checkpoint records (floats of the whole split, to 1e-9; the
    code version is not compared, since regenerating identical data changes only that)."""
    meta = load_checkpoint(ckpt).get("meta", {})
    with h5py.File(data / "train.h5", "r") as f:
        now = {k: float(f.attrs[k]) for k in ("norm_mean", "norm_std")}
    # the same data regenerated with another thread count differ by float rounding only
    # (measured: 1e-14 of the standard deviation), which is not other data
    scale = 1e-9 * abs(now["norm_std"])
    return any(meta.get(k) is None or abs(meta[k] - v) > scale for k, v in now.items())


def print_table(rows: dict[str, dict[str, Any]], columns: list[tuple[str, str, str]],
                name_width: int = 34, width: int = 13) -> None:
    """One line per row name; `columns` are (key, label, format); a row without a key leaves
    its cell blank, and a column no row has is left out."""
    cols = [c for c in columns if any(c[0] in r for r in rows.values())]
    print(f"{'':{name_width}s}" + "".join(f"{label:>{width}s}" for _, label, _ in cols))
    for name, row in rows.items():
        print(f"{name:{name_width}s}" + "".join(
            f"{fmt.format(row[k]):>{width}s}" if k in row else " " * width for k, _, fmt in cols))


def targets_of(items: list[tuple[str, float, str, Any]]) -> list[dict[str, Any]]:
    """(name, value, target, met) -> the JSON's `targets` entries (DEVELOPERS.md)."""
    return [{"name": n, "value": v, "target": t, "met": bool(m)} for n, v, t, m in items]


def print_targets(targets: list[dict[str, Any]]) -> None:
    """One line per target: name, value, target, yes / NO."""
    name_width = max((len(t["name"]) for t in targets), default=0)
    target_width = max((len(t["target"]) for t in targets), default=0)
    for t in targets:
        print(f"  {t['name']:{name_width}s} {t['value']:10.4g}  {t['target']:{target_width}s}  "
              f"{'yes' if t['met'] else 'NO'}")


def mean_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Mean wall time of `fn` over `repeats` calls, after one untimed call (tracing, warm-up,
    factorisations)."""
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def with_end_state(model: Any, data: Path) -> list[str]:
    """Give a model whose checkpoint predates some of the end-state statistics its system now
    keeps (train.py stores them after training) the ones train.py would store: of the end
    states of the first `calibration_trajectories` training trajectories in data/train.h5.
    Returns the names added (empty for an up-to-date checkpoint); the benchmark records them."""
    n_cal = int(model.config.get("calibration_trajectories", 512))
    train = read(data / "train.h5", simulator=model.meta.simulator, limit=n_cal)
    fresh = model.system.end_state_statistics(train.x[:, -1]) or {}
    have = model.end_state or {}
    added = sorted(set(fresh) - set(have))
    if added:
        model.end_state = {**have, **{k: fresh[k] for k in added}}
        print(f"end-state statistics {added} not in the checkpoint: computed from train.h5")
    return added
