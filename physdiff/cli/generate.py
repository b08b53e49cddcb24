"""generate.py: write a trajectory dataset (train / valid / test HDF5 splits) of any system.

Examples (the README lists every system's recipes and flags):
    python generate.py --recipe datasets/RECIPE.json --out DIR
    python generate.py SYSTEM --n-train 100 --n-valid 20 --n-test 20 --out DIR
    python generate.py my_package.module:MySystem --out DIR      # any System class
    python generate.py SYSTEM --help                             # that system's own flags

The first argument names the system (default: physdiff.systems.DEFAULT): a built-in name, an
installed plug-in's name (entry point group `physdiff.systems`) or package.module:Class. Splits that already exist with the same parameters are kept (an interrupted
run resumes); each file is written to a temporary name and renamed when complete.

Shards, for systems that generate in parts (physdiff/systems/generation.py; the built-ins do):
    python generate.py SYSTEM ... --out DIR --shard 0/2 &     # every 2nd part, from part 0
    python generate.py SYSTEM ... --out DIR --shard 1/2; wait
    python generate.py SYSTEM ... --out DIR --join            # or without --join: make the
                                                              # missing parts, then join
A killed run resumes from its parts; one run and N shards give bit-identical files.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from physdiff import systems
from physdiff.cli.common import UsageError, apply_recipe, non_negative, positive, run
from physdiff.lock import hold
from physdiff.runtime import code_version
from physdiff.systems import SystemLoadError

__all__ = ["main", "parser"]


def _system_name(argv: Sequence[str]) -> str:
    """The system named by the first argument (when it is not a flag), else by --recipe's
    'simulator' key, else the default system (read before the full parser exists: the system
    adds its own flags)."""
    if argv and not argv[0].startswith("-"):
        return argv[0]
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--recipe", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.recipe is not None:
        try:
            return str(json.loads(known.recipe.read_text()).get("simulator", systems.DEFAULT))
        except (OSError, ValueError, AttributeError):
            return systems.DEFAULT  # apply_recipe reports the unreadable recipe
    return systems.DEFAULT


def shard(text: str) -> tuple[int, int]:
    """argparse type: 'I/N' -> (I, N) with 0 <= I < N."""
    match = re.fullmatch(r"(\d+)/(\d+)", text)
    if match is None or not int(match[1]) < int(match[2]):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (e.g. 0/2), got {text}")
    return int(match[1]), int(match[2])


def parser(system: type[systems.System]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="generate.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("simulator", nargs="?", default=system.name, metavar="SYSTEM",
                   help=f"system: a name or package.module:Class (default {systems.DEFAULT})")
    p.add_argument("--recipe", type=Path, help="JSON file of defaults (datasets/*.json)")
    p.add_argument("--out", type=Path, required=True, help="output folder for <split>.h5")
    p.add_argument("--n-train", type=positive(int), default=2500)
    p.add_argument("--n-valid", type=positive(int), default=500)
    p.add_argument("--n-test", type=positive(int), default=500)
    d = system.generate_defaults
    p.add_argument("--t-final", type=positive(float), help=f"end time T ({d['t_final']:g})")
    p.add_argument("--steps", type=positive(int), help=f"time steps K, dt = T / K ({d['steps']:g})")
    p.add_argument("--g", type=non_negative(float), help=f"noise scale ({d['g']:g})")
    p.add_argument("--seed", type=int, default=0)
    parts = p.add_mutually_exclusive_group()
    parts.add_argument("--shard", type=shard, metavar="I/N",
                       help="make only every N-th part, starting at part I (no join); for "
                            "systems that generate in parts (the built-ins do)")
    parts.add_argument("--join", action="store_true",
                       help="only join the finished parts into <split>.h5")
    system.add_arguments(p.add_argument_group(system.name or "system"))
    return p


def generate(args: argparse.Namespace) -> None:
    system = systems.get(args.simulator)
    for key, value in system.generate_defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.n_train < 2:
        raise UsageError("--n-train: need at least 2 trajectories to normalise")
    # shards of one generation share --out on purpose: one lock per shard
    key = "" if args.shard is None else "{}-{}".format(*args.shard)
    with hold(args.out, "generate.py", key=key):
        system.generate(args, args.simulator, code_version())


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        system = systems.get(_system_name(argv))
    except SystemLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    p = parser(system)
    apply_recipe(p, argv)
    run(generate, p, argv)
