"""The tiny heat run shared by the CLI test modules (imported by name: conftest.py is not a
module the tests can import, since examples/burgers/tests has its own)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from physdiff.cli import generate, train

# a tiny heat dataset (8×8, 3 steps) for the CLI tests, and the type of `one_line_error`
TINY = ["heat", "--n-train", "6", "--n-valid", "2", "--n-test", "2", "--size", "8", "--steps",
        "3", "--t-final", "0.05"]
Check = Callable[[object, list[str]], str]


def tiny_run(out: Path) -> Path:
    """Generate the TINY data into out/data and train the 'tiny' preset into out/run."""
    generate.main([*TINY, "--out", str(out / "data")])
    train.main(["--data", str(out / "data"), "--out", str(out / "run"), "--preset", "tiny",
                "--device", "cpu"])
    return out


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch at one thread, as torchrun's processes are in the tests: float results are equal
    bit for bit only between runs with the same thread count (reduction order)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
