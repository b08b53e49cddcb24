#!/usr/bin/env python3
"""Compare two runs of the same benchmark (e.g. before and after a refactoring): every numeric
metric of every row, side by side, with the ratio new / old; writes JSON with a `targets` list.

A metric passes when |new / old − 1| <= --tolerance (timings, keys containing 'second' or
'minutes', are reported but not judged: the machine is shared).

Example:
    python benchmarks/compare.py OLD/heat.json benchmarks/results/heat-quick/heat.json \\
        --out benchmarks/results/heat-quick/refactor_check.json --tolerance 0.02
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from physdiff.io import write_text_atomic
from physdiff.runtime import code_version

TIMING = ("second", "minutes", "time")


def rows_of(path: Path) -> dict[str, dict[str, Any]]:
    data = json.loads(path.read_text())
    rows = data.get("rows", data)
    # smoke's JSON nests rows per subset: flatten 'row / subset'
    flat: dict[str, dict[str, Any]] = {}
    for name, row in rows.items():
        if isinstance(row, dict) and row and all(isinstance(v, dict) for v in row.values()):
            flat |= {f"{name} / {sub}": r for sub, r in row.items()}
        elif isinstance(row, dict):
            flat[name] = row
    return flat


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("old", type=Path)
    p.add_argument("new", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--tolerance", type=float, default=0.02)
    args = p.parse_args()
    old, new = rows_of(args.old), rows_of(args.new)
    table, targets = [], []
    for name in old:
        for key, a in old[name].items():
            b = new.get(name, {}).get(key)
            if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
                continue
            ratio = b / a if a != 0 else (1.0 if b == 0 else math.inf)
            timing = any(t in key for t in TIMING)
            met = None if timing else abs(ratio - 1) <= args.tolerance or a == b
            table.append((name, key, a, b, ratio, met))
            if not timing:
                targets.append({"name": f"{name}: {key} new/old", "value": ratio,
                                "target": f"within 1 ± {args.tolerance}", "met": bool(met)})
    for name, key, a, b, ratio, met in table:
        flag = "timing" if met is None else ("ok" if met else "MOVED")
        print(f"{name[:40]:40s} {key[:26]:26s} {a:12.5g} {b:12.5g} {ratio:8.4f}  {flag}")
    moved = [t["name"] for t in targets if not t["met"]]
    print(f"{len(targets) - len(moved)} of {len(targets)} metrics within "
          f"{args.tolerance:.0%}" + (f"; moved: {moved}" if moved else ""))
    write_text_atomic(args.out, json.dumps({
        "old": str(args.old), "new": str(args.new), "version": code_version(),
        "command": "python benchmarks/compare.py " + " ".join(
            [str(args.old), str(args.new), "--out", str(args.out), "--tolerance",
             str(args.tolerance)]),
        "targets": targets}, indent=2) + "\n")


if __name__ == "__main__":
    main()
