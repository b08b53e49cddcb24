"""The HDF5 trajectory schema: round trip, atomic writes, validation errors, window Dataset."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from physdiff import data
from physdiff.data import DataError, Metadata, WindowDataset, read, read_metadata, write

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


# --- WindowDataset ----------------------------------------------------------------------------


def _windows(ds: WindowDataset) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [ds[i] for i in range(len(ds))]


@pytest.mark.parametrize("window", [1, 2, K])
def test_window_dataset_gives_every_window_once(tmp_path: Path, window: int) -> None:
    """Items are x[traj, k − S : k + 1] with t_k = k·dt, for every traj and every k = S..K."""
    x = _trajectories()
    path = _good_file(tmp_path / "a.h5", x=x)
    ds = WindowDataset(path, window)
    assert len(ds) == N * (K - window + 1)
    seen = set()
    for item, t in _windows(ds):
        assert item.shape == (window + 1, 1, H, W) and item.dtype == torch.float32
        assert t.shape == () and t.dtype == torch.float32
        # the first state identifies (traj, k − S): all states are distinct random fields
        first = [(i, j) for i in range(N) for j in range(K + 1) if np.array_equal(x[i, j], item[0])]
        assert len(first) == 1
        traj, start = first[0]
        end = start + window
        assert end <= K
        assert torch.equal(item, torch.from_numpy(x[traj, start:end + 1]))
        assert t.item() == pytest.approx(end * _meta().dt, rel=1e-6)
        seen.add((traj, end))
    assert seen == {(i, k) for i in range(N) for k in range(window, K + 1)}
    assert any(end == window for _, end in seen)  # some window starts at x_0
    assert any(end == K for _, end in seen)  # and some ends at x_K


def test_window_dataset_survives_pickling_after_use(tmp_path: Path) -> None:
    """A dataset whose file is already open pickles (the handle is dropped) and still reads."""
    path = _good_file(tmp_path / "a.h5")
    ds = WindowDataset(path, 2)
    expected = _windows(ds)  # opens the HDF5 file
    clone = pickle.loads(pickle.dumps(ds))
    assert len(clone) == len(ds)
    for (a, t), (b, s) in zip(_windows(clone), expected, strict=True):
        assert torch.equal(a, b) and torch.equal(t, s)
    assert len(_windows(ds)) == len(ds)  # the original still works after being pickled


@pytest.mark.parametrize("num_workers", [0, 2])
def test_window_dataset_in_a_data_loader(tmp_path: Path, num_workers: int) -> None:
    """Batches from a DataLoader equal the items, in order, also with worker processes."""
    path = _good_file(tmp_path / "a.h5")
    ds = WindowDataset(path, 3)
    ds[0]  # an open handle must not break the workers
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=num_workers)
    batches = list(loader)
    assert batches[0][0].shape == (5, 4, 1, H, W) and batches[0][1].shape == (5,)
    xs = torch.cat([b[0] for b in batches])
    ts = torch.cat([b[1] for b in batches])
    items = _windows(ds)
    assert torch.equal(xs, torch.stack([item for item, _ in items]))
    assert torch.equal(ts, torch.stack([t for _, t in items]))


@pytest.mark.parametrize("window", [0, -1, K + 1])
def test_window_outside_range_raises_data_error(tmp_path: Path, window: int) -> None:
    """The window length must be in 1..K."""
    path = _good_file(tmp_path / "a.h5")
    _assert_data_error(lambda: WindowDataset(path, window), path, "window", f"1..{K}")


def test_window_dataset_validates_its_file(tmp_path: Path) -> None:
    """A broken file is rejected when the dataset is built, not later in a worker."""
    path = tmp_path / "broken.h5"
    _truncated(path)
    _assert_data_error(lambda: WindowDataset(path, 1), path)


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
