"""Where the code runs and which code it is: device selection and the code version that every
dataset and checkpoint records."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import torch

import physdiff

__all__ = ["code_version", "pick_device"]


@functools.cache
def code_version() -> str:
    """physdiff's version plus the git commit of the checkout, when it runs from one ('.dirty' if
    the tree has uncommitted changes); the bare version in an installed wheel. Read once per
    process: a run of hours records the code it started with, not a commit made meanwhile."""
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return physdiff.__version__
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                                capture_output=True, check=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True, timeout=5,
                               check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return physdiff.__version__
    return f"{physdiff.__version__}+g{commit}{'.dirty' if dirty else ''}"


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cpu', 'cuda', 'cuda:N' otherwise; a one-line
    ValueError naming --device for anything else."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name}: expected auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device
