"""The README's library-API snippet runs as written (on a tiny trained model)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from physdiff.cli import generate, train

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet() -> str:
    """The first python code block after the '## Library API' heading."""
    section = README.read_text().split("## Library API", 1)[1]
    return section.split("```python", 1)[1].split("```", 1)[0]


def test_readme_api_snippet_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "runs/demo/data"
    generate.main(["heat", "--n-train", "8", "--n-valid", "2", "--n-test", "4", "--size", "8",
                   "--steps", "4", "--t-final", "0.05", "--out", str(data)])
    train.main(["--data", str(data), "--out", str(tmp_path / "runs/demo"), "--preset", "tiny",
                "--device", "cpu"])
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet(), str(README), "exec"), scope)  # noqa: S102 - the README is ours
    x_T = scope["x_T"]
    assert scope["samples"].shape == (4, 16, *x_T.shape[1:])
    assert scope["mean"].shape == x_T.shape
    assert scope["paths"].shape == (1, 2, 5, *x_T.shape[1:])
    assert scope["x0"].shape == (4, 8, *x_T.shape[1:])
    # the same seed gives the same samples: every draw goes through the seeded generator
    again = scope["post"].sample(x_T, n=16, seed=0)
    torch.testing.assert_close(again, scope["samples"], rtol=0, atol=0)
    shutil.rmtree(tmp_path / "runs")
