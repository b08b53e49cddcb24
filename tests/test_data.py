"""The HDF5 trajectory schema: round trip, atomic writes, validation errors, window Dataset."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from physdiff import data
from physdiff.data import DataError, Metadata, read, read_metadata, write

N, K, H, W = 4, 6, 5, 3  # trajectories, steps, grid (deliberately not square)


def _meta(**changes: Any) -> Metadata:
    """Metadata with every field set, including nested physics parameters."""
    meta = Metadata(
        simulator="heat", dt=0.00625, g=0.1, n_steps=K, seed=7, split="valid",
        norm_mean=-0.125, norm_std=2.5, version="0123abc-dirty",
        params={"exponent": 4.0, "kappa": 1, "domain": "2pi-periodic square",
                "grid": {"h": H, "w": W, "periodic": True, "spacing": [0.5, 0.25]},
                "noise": None},
    )
    return replace(meta, **changes)


def _trajectories(n: int = N, k: int = K, seed: int = 0) -> np.ndarray:
    """Random trajectories (n, k + 1, 1, H, W) float32; every state is distinct."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, k + 1, 1, H, W)).astype(np.float32)


def _good_file(path: Path, x: np.ndarray | None = None, **changes: Any) -> Path:
    write(path, _trajectories() if x is None else x, _meta(**changes))
    return path


def _assert_data_error(call: Callable[[], object], path: Path, *words: str) -> None:
    """`call` raises DataError with a one-line message naming `path` and each of `words`."""
    with pytest.raises(DataError) as info:
        call()
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word in message.lower(), message
    assert "\n" not in message


# --- round trip -------------------------------------------------------------------------------


def test_round_trip_keeps_data_and_metadata(tmp_path: Path) -> None:
    """Data come back bit for bit, metadata equal (nested params included)."""
    path = tmp_path / "sub" / "train.h5"  # parent folders are created
    x = _trajectories()
    write(path, x, _meta())
    traj = read(path, simulator="heat")
    assert traj.x.dtype == torch.float32
    assert torch.equal(traj.x, torch.from_numpy(x))
    assert traj.meta == _meta()
    assert traj.meta.params["grid"]["spacing"] == [0.5, 0.25]
    meta, shape = read_metadata(path)
    assert meta == _meta()
    assert shape == (N, K + 1, 1, H, W)


def test_file_layout_one_chunk_per_trajectory(tmp_path: Path) -> None:
    """'x' is chunked one trajectory per chunk; attrs carry the schema version."""
    path = _good_file(tmp_path / "a.h5")
    with h5py.File(path, "r") as f:
        assert f["x"].dtype == np.float32
        assert f["x"].chunks == (1, K + 1, 1, H, W)
        assert int(f.attrs["schema"]) == data.SCHEMA
        assert {"simulator", "dt", "g", "n_steps", "params"} <= set(f.attrs)


def test_write_accepts_tensors_and_stores_float32(tmp_path: Path) -> None:
    """A float64 tensor that requires grad is detached and stored as float32."""
    x = torch.from_numpy(_trajectories()).double().requires_grad_()
    path = _good_file(tmp_path / "t.h5", x=x)
    assert torch.equal(read(path).x, x.detach().float())


# --- atomic write -----------------------------------------------------------------------------


def test_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    """After a successful write only the final file exists."""
    _good_file(tmp_path / "train.h5")
    _good_file(tmp_path / "train.h5", x=_trajectories(seed=1))  # overwrite too
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.h5"]
    assert torch.equal(read(tmp_path / "train.h5").x, torch.from_numpy(_trajectories(seed=1)))


def test_write_failing_midway_keeps_existing_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HDF5 failure while writing leaves the old file under the final name untouched."""
    path = _good_file(tmp_path / "train.h5")
    before = path.read_bytes()

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(h5py.File, "create_dataset", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        write(path, _trajectories(seed=1), _meta())
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.equal(read(path).x, torch.from_numpy(_trajectories()))


def test_write_rejects_shape_mismatch_before_touching_files(tmp_path: Path) -> None:
    """x.shape[1] != n_steps + 1 raises DataError; the existing file is byte-identical."""
    path = _good_file(tmp_path / "train.h5")
    before = path.read_bytes()
    _assert_data_error(lambda: write(path, _trajectories(k=K + 1), _meta()), path, "expected")
    _assert_data_error(lambda: write(path, np.zeros((N, K + 1), np.float32), _meta()), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.h5"]


# --- validation errors ------------------------------------------------------------------------


def _no_file(path: Path) -> None:
    pass


def _wrong_schema(path: Path) -> None:
    _good_file(path)
    with h5py.File(path, "r+") as f:
        f.attrs["schema"] = data.SCHEMA + 1


def _missing_dataset(path: Path) -> None:
    _good_file(path)
    with h5py.File(path, "r+") as f:
        del f["x"]


def _missing_attribute(path: Path) -> None:
    _good_file(path)
    with h5py.File(path, "r+") as f:
        del f.attrs["dt"]


def _truncated(path: Path) -> None:
    _good_file(path)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def _other_simulator(path: Path) -> None:
    _good_file(path, simulator="buoyancy")


def _steps_mismatch(path: Path) -> None:
    _good_file(path)
    with h5py.File(path, "r+") as f:
        f.attrs["n_steps"] = K + 1


def _text_file(path: Path) -> None:
    path.write_text("x,y\n1,2\n")


# case: (make the broken file, words the message must contain)
BROKEN: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
    "missing file": (_no_file, ("no such file",)),
    "wrong schema": (_wrong_schema, ("schema", f"expected {data.SCHEMA}")),
    "missing dataset": (_missing_dataset, ("'x'",)),
    "missing attribute": (_missing_attribute, ("missing", "dt")),
    "truncated": (_truncated, ("hdf5",)),
    "other simulator": (_other_simulator, ("buoyancy", "expected 'heat'")),
    "n_steps mismatch": (_steps_mismatch, ("shape", "expected", f"{K + 2}")),
    "text file": (_text_file, ("hdf5",)),
}


@pytest.mark.parametrize("reader", [read_metadata, read], ids=["read_metadata", "read"])
@pytest.mark.parametrize("case", list(BROKEN))
def test_unusable_file_raises_data_error(
    tmp_path: Path, case: str, reader: Callable[..., object]
) -> None:
    """Every kind of broken file gives a one-line DataError naming the file, never OSError."""
    make, words = BROKEN[case]
    path = tmp_path / "broken.h5"
    make(path)
    _assert_data_error(lambda: reader(path, simulator="heat"), path, *words)


def test_other_simulator_is_accepted_when_none_is_requested(tmp_path: Path) -> None:
    """The simulator check only applies when a simulator is named."""
    path = _good_file(tmp_path / "b.h5", simulator="buoyancy")
    assert read(path).meta.simulator == "buoyancy"


def test_nan_in_data_raises_data_error(tmp_path: Path) -> None:
    """read validates the values it reads."""
    x = _trajectories()
    x[2, 3, 0, 1, 1] = np.nan
    path = _good_file(tmp_path / "nan.h5", x=x)
    _assert_data_error(lambda: read(path), path, "nan")
    x[2, 3, 0, 1, 1] = np.inf
    path = _good_file(tmp_path / "inf.h5", x=x)
    _assert_data_error(lambda: read(path), path, "inf")


def test_read_limit_reads_only_the_first_trajectories(tmp_path: Path) -> None:
    """limit=2 returns two trajectories and never touches the others (a NaN in the third)."""
    x = _trajectories()
    x[2:, 1] = np.nan
    path = _good_file(tmp_path / "a.h5", x=x)
    traj = read(path, limit=2)
    assert traj.x.shape == (2, K + 1, 1, H, W)
    assert torch.equal(traj.x, torch.from_numpy(x[:2]))
    with pytest.raises(DataError):
        read(path)


# --- Metadata ---------------------------------------------------------------------------------


def test_metadata_times_and_t_final() -> None:
    """times() = k·dt for k = 0..K in float64, ending at t_final = K·dt."""
    meta = _meta(dt=0.2 / 32, n_steps=32)
    times = meta.times()
    assert times.shape == (33,) and times.dtype == torch.float64
    torch.testing.assert_close(times, torch.tensor([k * 0.2 / 32 for k in range(33)],
                                                   dtype=torch.float64))
    assert times[0].item() == 0.0
    assert meta.t_final == pytest.approx(0.2, rel=1e-15)
    assert times[-1].item() == pytest.approx(meta.t_final, rel=1e-15)


def test_extra_per_trajectory_arrays_round_trip_and_are_validated(tmp_path: Path) -> None:
    """Per-trajectory arrays (the smoke obstacles) come back unchanged; one whose first dim is
    not the number of trajectories is refused when writing and when reading."""
    path = tmp_path / "extras.h5"
    x = _trajectories()
    geometry = np.arange(N * 2 * 5, dtype=np.float32).reshape(N, 2, 5)
    write(path, x, _meta(), {"geometry": geometry})
    traj = read(path)
    assert torch.equal(traj.extras["geometry"], torch.from_numpy(geometry))
    assert read(path, limit=2).extras["geometry"].shape == (2, 2, 5)
    with pytest.raises(DataError, match="one entry per trajectory"):
        write(tmp_path / "bad.h5", x, _meta(), {"geometry": geometry[:1]})
    with h5py.File(path, "a") as f:
        f["mask"] = np.zeros((N + 1, 1), np.float32)
    with pytest.raises(DataError, match="'mask'"):
        read(path)


def test_flipped_bytes_inside_a_dataset_are_a_one_line_error(tmp_path: Path) -> None:
    """Files carry Fletcher-32 checksums: corruption inside the data (not only in the header)
    is refused, naming the file and the dataset, instead of being trained on."""
    path = tmp_path / "data.h5"
    write(path, _trajectories(), _meta(), {"geometry": np.ones((N, 2, 5), np.float32)})
    for name in ("x", "geometry"):
        copy = tmp_path / f"flipped-{name}.h5"
        copy.write_bytes(path.read_bytes())
        with h5py.File(copy, "r") as f:
            assert f[name].fletcher32
            offset = f[name].id.get_chunk_info(0).byte_offset
        raw = bytearray(copy.read_bytes())
        raw[offset + 4] ^= 0xFF
        copy.write_bytes(bytes(raw))
        _assert_data_error(lambda c=copy: read(c), copy, f"'{name}'", "checksum")
