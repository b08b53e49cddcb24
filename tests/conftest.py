"""Fixtures shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable

import pytest


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
