"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

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


@pytest.fixture
def one_line_error(capsys: pytest.CaptureFixture[str]) -> Callable[[object, list[str]], str]:
    """Run a script's main(argv), expect a non-zero exit with exactly one line on stderr and no
    traceback, and return that line."""

    def check(fn: object, argv: list[str]) -> str:
        capsys.readouterr()  # only what this call prints counts (earlier runs print progress)
        with pytest.raises(SystemExit) as exc:
            fn(argv)  # type: ignore[operator]
        assert exc.value.code != 0
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        return err

    return check
