"""The HDF5 trajectory schema (one module owns it), its reader and writer.

File layout, schema 1:
    /x        float32 (N, K + 1, *state), one chunk per trajectory: x[:, k] is the state at k·dt
    /<name>   optional per-trajectory arrays (N, *), e.g. obstacles: /geometry
              (N, n_obstacles, 5) and /mask (N, 1, H, W); which ones a simulator needs is the
              system's business (systems.py)
    attrs     schema, simulator, dt, g, n_steps, seed, split, norm_mean, norm_std, version,
              params (JSON: every physics parameter of the simulator)
States are stored normalised: x = (raw − norm_mean) / norm_std, with the statistics of the
training split, and g is in those normalised units.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor

from physdiff.io import atomic_path

__all__ = ["SCHEMA", "DataError", "Metadata", "Trajectories", "read",
           "read_metadata", "up_to_date", "write"]

SCHEMA = 1
_REQUIRED = ("schema", "simulator", "dt", "g", "n_steps", "seed", "split", "norm_mean",
             "norm_std", "version", "params")


class DataError(ValueError):
    """A dataset file that cannot be used; the message names the file and what was expected."""


@dataclass(frozen=True)
class Metadata:
    simulator: str
    dt: float
    g: float
    n_steps: int
    seed: int
    split: str
    norm_mean: float
    norm_std: float
    version: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def t_final(self) -> float:
        return self.dt * self.n_steps

    def times(self) -> Tensor:
        """t_0..t_K, shape (K + 1,), float64."""
        return self.dt * torch.arange(self.n_steps + 1, dtype=torch.float64)


@dataclass(frozen=True)
class Trajectories:
    x: Tensor  # (N, K + 1, *state), float32
    meta: Metadata
    extras: dict[str, Tensor] = field(default_factory=dict)  # per-trajectory arrays (N, *)


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float32)


def write(path: Path, x: Tensor | np.ndarray, meta: Metadata,
          extras: dict[str, Tensor | np.ndarray] | None = None) -> None:
    """Write trajectories atomically: to `<path>.tmp`, then rename, so no reader ever sees a
    truncated file under the final name.

    Arguments:
        x: Trajectories, shape (N, K + 1, *state).
        extras: Per-trajectory arrays, name -> shape (N, *), stored as float32 datasets.
    """
    path = Path(path)
    x = _numpy(x)
    if x.ndim < 3 or x.shape[1] != meta.n_steps + 1:
        raise DataError(f"{path}: expected trajectories (N, {meta.n_steps + 1}, *state), "
                        f"got {x.shape}")
    extras = {name: _numpy(value) for name, value in (extras or {}).items()}
    for name, value in extras.items():
        if name == "x" or value.ndim < 1 or value.shape[0] != x.shape[0]:
            raise DataError(f"{path}: extra array '{name}' must be named other than 'x' and "
                            f"have one entry per trajectory ({x.shape[0]}), got {value.shape}")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        # Fletcher-32 checksums per chunk: flipped bytes are caught on read, not trained on
        f.create_dataset("x", data=x, chunks=(1, *x.shape[1:]), fletcher32=True)
        for name, value in extras.items():
            f.create_dataset(name, data=value, fletcher32=True)
        attrs = asdict(meta)
        attrs["params"] = json.dumps(meta.params, sort_keys=True)
        f.attrs.update(schema=SCHEMA, **attrs)


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise DataError(f"{path}: not a readable HDF5 file (truncated or corrupt?): {err}") from None


def _metadata(f: h5py.File, path: Path, simulator: str | None) -> Metadata:
    missing = [k for k in _REQUIRED if k not in f.attrs]
    if "schema" in f.attrs and int(f.attrs["schema"]) != SCHEMA:
        raise DataError(f"{path}: schema version {int(f.attrs['schema'])}, expected {SCHEMA}")
    if missing:
        raise DataError(f"{path}: not a physdiff trajectory file (missing attributes "
                        f"{', '.join(missing)})")
    if "x" not in f:
        raise DataError(f"{path}: missing dataset 'x' (trajectories)")
    a = f.attrs
    meta = Metadata(simulator=str(a["simulator"]), dt=float(a["dt"]), g=float(a["g"]),
                    n_steps=int(a["n_steps"]), seed=int(a["seed"]), split=str(a["split"]),
                    norm_mean=float(a["norm_mean"]), norm_std=float(a["norm_std"]),
                    version=str(a["version"]), params=json.loads(str(a["params"])))
    if simulator is not None and meta.simulator != simulator:
        raise DataError(f"{path}: data from simulator '{meta.simulator}', expected '{simulator}'")
    shape = f["x"].shape
    if len(shape) < 3 or shape[1] != meta.n_steps + 1:
        raise DataError(f"{path}: dataset 'x' has shape {shape}, expected "
                        f"(N, n_steps + 1 = {meta.n_steps + 1}, *state)")
    return meta


def read_metadata(path: Path, simulator: str | None = None) -> tuple[Metadata, tuple[int, ...]]:
    """Validate a file and return its metadata and the shape of `x`, without reading the data."""
    path = Path(path)
    with _open(path) as f:
        try:
            return _metadata(f, path, simulator), tuple(f["x"].shape)
        except (KeyError, OSError, RuntimeError) as err:
            raise DataError(f"{path}: corrupt HDF5 file ({err})") from None


def up_to_date(path: Path, meta: Metadata, shape: tuple[int, ...]) -> bool:
    """Whether `path` holds trajectories of shape `shape` made with `meta` (the code version may
    differ: same parameters and seed give the same data); False for a missing or unusable file.
    Generators use it to keep finished work."""
    try:
        old, old_shape = read_metadata(path, meta.simulator)
    except DataError:
        return False
    return replace(old, version=meta.version) == meta and old_shape == tuple(shape)


def _read_dataset(f: h5py.File, name: str, path: Path, limit: int | None) -> np.ndarray:
    """One dataset, with its Fletcher-32 checksums verified (files written by `write` carry
    them; HDF5 checks every chunk on read)."""
    try:
        return f[name][:limit] if limit is not None else f[name][()]
    except (KeyError, OSError, RuntimeError) as err:
        checksum = f[name].fletcher32 if name in f else False
        why = ("checksum mismatch: the file is corrupt" if checksum
               else "truncated or corrupt file")
        raise DataError(f"{path}: dataset '{name}' cannot be read ({why}: "
                        f"{str(err).splitlines()[0]})") from None


def read(path: Path, simulator: str | None = None, limit: int | None = None) -> Trajectories:
    """Read and validate a trajectory file (optionally only the first `limit` trajectories)."""
    path = Path(path)
    with _open(path) as f:
        try:
            meta = _metadata(f, path, simulator)
            names = ["x", *(k for k in f if k != "x" and isinstance(f[k], h5py.Dataset))]
        except (KeyError, OSError, RuntimeError) as err:
            raise DataError(f"{path}: corrupt HDF5 file ({err})") from None
        arrays = {name: _read_dataset(f, name, path, limit) for name in names}
    x, extras = arrays.pop("x"), arrays
    for name, value in {"x": x, **extras}.items():
        if name != "x" and (value.ndim < 1 or value.shape[0] != x.shape[0]):
            raise DataError(f"{path}: dataset '{name}' has shape {value.shape}, expected one "
                            f"entry per trajectory ({x.shape[0]}, ...)")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise DataError(f"{path}: dataset '{name}' contains NaN or Inf")
    return Trajectories(torch.from_numpy(x), meta,
                        {k: torch.from_numpy(np.asarray(v)) for k, v in extras.items()})
