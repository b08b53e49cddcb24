"""Generation in parts (physdiff/systems/generation.py) for heat and N-body: shards then --join
equal one run bit for bit, a killed run resumes by making only its missing parts, and --join with
a part missing is a one-line error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from physdiff.cli import generate
from physdiff.systems import generation, heat, nbody

COMMON = ["--n-train", "7", "--n-valid", "3", "--n-test", "2", "--steps", "3", "--seed", "4"]
SYSTEMS = {
    "heat": (heat, ["heat", "--size", "8", "--t-final", "0.06", *COMMON]),
    "nbody": (nbody, ["nbody", "--bodies", "3", "--t-final", "0.3", "--substeps", "2",
                      *COMMON]),
}
PART = 3  # simulations per part here: 3 + 1 + 1 + 1 + 1 = 7 parts over the three splits
N_PARTS = 3 + 1 + 1


@pytest.fixture(params=sorted(SYSTEMS))
def argv(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    module, argv = SYSTEMS[request.param]
    monkeypatch.setattr(module, "CHUNK", PART)  # several parts per split at tiny sizes
    return argv


def _contents(path: Path) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Every dataset and attribute of an HDF5 file (attrs without the code version)."""
    with h5py.File(path, "r") as f:
        data = {k: f[k][()] for k in f}
        attrs = {k: v for k, v in f.attrs.items() if k != "version"}
    return data, attrs


def _assert_same_files(a: Path, b: Path) -> None:
    for split in generation.SPLITS:
        (data_a, attrs_a), (data_b, attrs_b) = _contents(a / f"{split}.h5"), _contents(
            b / f"{split}.h5")
        assert data_a.keys() == data_b.keys() and attrs_a.keys() == attrs_b.keys()
        for k in data_a:
            assert data_a[k].dtype == data_b[k].dtype and np.array_equal(data_a[k], data_b[k])
        for k in attrs_a:
            assert np.array_equal(attrs_a[k], attrs_b[k]), k


def test_shards_then_join_equal_one_run(argv: list[str], tmp_path: Path) -> None:
    generate.main([*argv, "--out", str(tmp_path / "one")])
    out = tmp_path / "sharded"
    for shard in ("0/2", "1/2"):
        generate.main([*argv, "--out", str(out), "--shard", shard])
    assert len(list((out / "parts").iterdir())) == N_PARTS
    assert not (out / "train.h5").exists()  # shards do not join
    generate.main([*argv, "--out", str(out), "--join"])
    assert not (out / "parts").exists()
    _assert_same_files(tmp_path / "one", out)
    with h5py.File(out / "train.h5", "r") as f:
        assert f["x"].shape[0] == 7 and f["x"].dtype == np.float32


def test_resume_makes_only_the_missing_part(argv: list[str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "killed"
    generate.main([*argv, "--out", str(out), "--shard", "0/1"])
    parts = sorted((out / "parts").iterdir())
    parts[1].unlink()  # as if the run had been killed before writing it
    written: list[Path] = []
    write = generation.write

    def spy(path: Path, *args: object, **kwargs: object) -> None:
        written.append(Path(path))
        write(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(generation, "write", spy)
    capsys.readouterr()
    generate.main([*argv, "--out", str(out)])
    assert f"{N_PARTS - 1} of {N_PARTS} parts already done" in capsys.readouterr().out
    assert [p for p in written if p.parent.name == "parts"] == [parts[1]]
    monkeypatch.setattr(generation, "write", write)
    generate.main([*argv, "--out", str(tmp_path / "one")])
    _assert_same_files(tmp_path / "one", out)


def test_join_with_a_part_missing_is_a_one_line_error(
        argv: list[str], tmp_path: Path,
        one_line_error: Callable[[object, list[str]], str]) -> None:
    out = tmp_path / "half"
    generate.main([*argv, "--out", str(out), "--shard", "1/2"])
    err = one_line_error(generate.main, [*argv, "--out", str(out), "--join"])
    assert "parts missing" in err and "train-00000-00003.h5" in err
    err = one_line_error(generate.main, [*argv, "--out", str(out), "--shard", "2/2"])
    assert "--shard" in err
