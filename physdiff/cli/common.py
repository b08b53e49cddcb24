"""Shared plumbing of the command-line scripts: one-line errors, recipes, argument checks."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
from tqdm import tqdm

from physdiff.checks import UsageError, comma_list, finite, non_negative, positive
from physdiff.data import DataError
from physdiff.runtime import code_version
from physdiff.training import CheckpointError

__all__ = [
    "Progress",
    "UsageError",
    "apply_recipe",
    "comma_list",
    "finite",
    "non_negative",
    "note",
    "positive",
    "read_observed_h5",
    "run",
]


def run(main: Callable[[argparse.Namespace], None], parser: argparse.ArgumentParser,
        argv: Sequence[str] | None = None) -> None:
    """Parse, run, and turn expected failures into one line on stderr and exit code 2
    (the full traceback with --debug)."""
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    one_line_errors(parser)
    args = parser.parse_args(argv)
    code_version()  # read now (cached): a run of hours records the code it started with
    try:
        main(args)
    except (UsageError, DataError, CheckpointError, ValueError, OSError) as err:
        if args.debug:
            raise
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank fails alike: one line
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def one_line_errors(parser: argparse.ArgumentParser) -> None:
    """Make argparse report a bad flag as one line (no usage block), exit code 2."""
    def error(message: str) -> None:
        print(f"error: {parser.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(2)
    parser.error = error  # type: ignore[method-assign]


def apply_recipe(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> None:
    """If argv holds `--recipe FILE`, use the JSON object in FILE as defaults (explicit flags
    still win). Unknown keys are an error."""
    one_line_errors(parser)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.recipe is None:
        return
    try:
        recipe = json.loads(known.recipe.read_text())
    except (OSError, json.JSONDecodeError) as err:
        parser.error(f"--recipe {known.recipe}: cannot read a JSON object ({err})")
    valid = {a.dest for a in parser._actions}
    unknown = sorted(set(recipe) - valid)
    if unknown:
        parser.error(f"--recipe {known.recipe}: unknown keys {unknown}")
    parser.set_defaults(**recipe)


def read_observed_h5(path: Path, extras: Sequence[str] = (), all_extras: bool = False
                     ) -> tuple[Any, dict[str, Any]]:
    """The observed states of an --observed .h5 file (dataset 'x_T', or 'x') as a numpy array,
    and those datasets named in `extras` that the file has (with all_extras: every other
    dataset)."""
    if not path.exists():
        raise UsageError(f"--observed {path}: no such file")
    try:
        with h5py.File(path, "r") as f:
            name = next((k for k in ("x_T", "x") if k in f), None)
            if name is None:
                raise UsageError(f"--observed {path}: expected a dataset 'x_T' or 'x'")
            wanted = [k for k in f if k != name and isinstance(f[k], h5py.Dataset)
                      and (all_extras or k in extras)]
            return f[name][()], {k: f[k][()] for k in wanted}
    except OSError as err:
        raise UsageError(f"--observed {path}: not a readable HDF5 file ({err})") from None


class Progress:
    """Progress of a long loop: a tqdm bar on a terminal; off a terminal (a log file, a batch
    job) one line on stderr at most every `every` seconds, so long work is never silent.

    `cost(i)`: the relative wall time of items 1..i together, where items differ (a 16-step
    rollout update costs about 16 one-step ones); the time left is then extrapolated by cost,
    not by count. It is read as the loop goes, so a total that changes (a stage ended early) is
    followed."""

    def __init__(self, desc: str, total: int, initial: int = 0, every: float = 30.0,
                 cost: Callable[[int], float] | None = None) -> None:
        self.desc, self.total, self.n, self.every = desc, total, initial, every
        self.cost = cost if cost is not None else float  # by count: i items cost i
        self.tty = sys.stderr.isatty()
        self.t0 = self.last = time.perf_counter()
        self.start = initial
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step") if self.tty else None

    def seconds_left(self) -> float:
        """Elapsed time per unit of cost done so far, times the cost still to do."""
        done = self.cost(self.n) - self.cost(self.start)
        left = self.cost(self.total) - self.cost(self.n)
        return (time.perf_counter() - self.t0) / done * left if done else float("nan")

    def update(self, n: int = 1, **postfix: Any) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)
            if postfix:  # with the time left by cost (tqdm's own estimate goes by count)
                self.bar.set_postfix(**postfix, left=f"{self.seconds_left():.0f} s")
            return
        now = time.perf_counter()
        if now - self.last >= self.every or self.n == self.total:
            self.last = now
            extra = "".join(f", {k} {v}" for k, v in postfix.items())
            print(f"{self.desc}: {self.n}/{self.total}{extra}; {now - self.t0:.0f} s elapsed, "
                  f"~{self.seconds_left():.0f} s left", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def note(message: str) -> None:
    """A one-line status on stderr (what a long phase is doing), flushed at once."""
    print(message, file=sys.stderr, flush=True)
