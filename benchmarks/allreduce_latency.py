#!/usr/bin/env python3
"""What one gloo all-reduce costs between two processes on this machine, one thread each: the
floor under every data-parallel update of train.py (physdiff/distributed.py does one per update,
of the flattened gradients plus the loss and the stop flag). Sizes from 10 floats to the heat-32
network's 84 227 gradients (+ 2), 200 calls each after 20 warm-up calls; beside them, a round
trip of one byte through a socket pair between the same two processes, the operating system's
own floor. Prints a table and writes benchmarks/results/scaling/allreduce_latency.json.

Example:
    python benchmarks/allreduce_latency.py      # launches itself under torchrun, 2 processes
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import torch
import torch.distributed as dist
from common import ROOT

from physdiff.io import write_text_atomic
from physdiff.runtime import code_version

SIZES = (10, 1000, 10_000, 84_227)
CALLS = 200


def socket_round_trip(calls: int = 2000) -> float:
    """Seconds per one-byte round trip between a parent and a forked child."""
    a, b = socket.socketpair()
    if os.fork() == 0:
        for _ in range(calls):
            b.recv(1)
            b.send(b"x")
        os._exit(0)
    t0 = time.perf_counter()
    for _ in range(calls):
        a.send(b"x")
        a.recv(1)
    seconds = (time.perf_counter() - t0) / calls
    os.wait()
    return seconds


def measure() -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rows = {}
    for n in SIZES:
        x = torch.randn(n)
        for _ in range(20):
            dist.all_reduce(x)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(CALLS):
            dist.all_reduce(x)
        rows[f"all_reduce of {n} floats, ms"] = 1e3 * (time.perf_counter() - t0) / CALLS
    rank = dist.get_rank()
    dist.destroy_process_group()
    if rank != 0:
        return
    rows["socket pair round trip, ms"] = 1e3 * socket_round_trip()
    for name, value in rows.items():
        print(f"{name:40s}{value:10.3f}")
    write_text_atomic(ROOT / "benchmarks/results/scaling/allreduce_latency.json", json.dumps(
        {"command": "python benchmarks/allreduce_latency.py", "version": code_version(),
         "processes": 2, "backend": "gloo", "calls": CALLS, "rows": rows,
         "targets": []}, indent=2) + "\n")  # a diagnostic: no issue sets a target on it


if __name__ == "__main__":
    if "WORLD_SIZE" in os.environ:
        measure()
    else:
        # no flags: --help prints this text, and an unknown flag is an error, not a run that
        # overwrites the committed JSON
        argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", __file__], check=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
