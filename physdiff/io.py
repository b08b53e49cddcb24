"""Atomic file writes: every output goes to `<name>.tmp` first and is renamed when complete, so an
interrupted write never leaves a truncated file under the final name, and an earlier complete one
survives."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import h5py
from torch import Tensor

__all__ = ["atomic_path", "write_h5_atomic", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to `path` (same suffix, so writers that look at it still work);
    rename it to `path` when the block ends without error, delete it otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_h5_atomic(path: Path | str, arrays: Mapping[str, Tensor], attrs: Mapping[str, Any]
                    ) -> None:
    """Write tensors (name -> tensor) and attributes to an HDF5 file atomically."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, value in arrays.items():
            f.create_dataset(name, data=value.detach().cpu().numpy())
        f.attrs.update(attrs)
