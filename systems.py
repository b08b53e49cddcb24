"""The script layer's registry: how each simulator plugs into the library (drift, network, data).

Scripts (generate.py, train.py, infer.py, benchmarks/) import this; the library and the
simulators never do. Only the heat system exists so far.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

import physdiff
from physdiff.data import Metadata
from physdiff.networks import PeriodicScoreNet
from physdiff.sde import Drift, as_drift
from simulators import heat

__all__ = ["SIMULATORS", "HeatSystem", "System", "augment_periodic", "code_version",
           "pick_device", "system_for"]


def code_version() -> str:
    """physdiff's version plus the git commit of the checkout, when there is one ('+dirty' if
    the tree has uncommitted changes)."""
    root = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                                capture_output=True, check=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True, timeout=5, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return physdiff.__version__
    return f"{physdiff.__version__}+g{commit}{'.dirty' if dirty else ''}"


def pick_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine")
    return device


def augment_periodic(x: Tensor, generator: torch.Generator) -> Tensor:
    """A random symmetry of the periodic square (rotation by k·90°, flip, translation), the same
    for the whole batch, applied to the last two dims of x (..., H, W) with H = W."""
    draws = torch.randint(0, 1 << 30, (4,), generator=generator).tolist()
    x = torch.rot90(x, draws[0] % 4, dims=(-2, -1))
    if draws[1] % 2:
        x = x.flip(-1)
    return torch.roll(x, (draws[2] % x.shape[-2], draws[3] % x.shape[-1]), dims=(-2, -1))


@dataclass(frozen=True)
class HeatSystem:
    """Stochastic heat diffusion (simulators/heat.py); states (B, 1, H, W), normalised units."""

    meta: Metadata
    state_shape: tuple[int, ...]  # (1, H, W)
    name = "heat"

    def step(self, x: Tensor) -> Tensor:
        """Noise-free forward step S_dt."""
        return heat.step(x, self.meta.dt)

    def physics_drift(self) -> Drift:
        """P with backward Euler step 2x − S(x) (method.md §2, diffusion)."""
        return as_drift(partial(heat.step, dt=self.meta.dt), self.meta.dt)

    def score_net(self, width: int, depth: int, spectral: bool = True) -> nn.Module:
        channels, h, w = self.state_shape
        return PeriodicScoreNet(channels, (h, w), t_max=self.meta.t_final,
                                out_scale=1 / (self.meta.g * math.sqrt(self.meta.dt)),
                                width=width, depth=depth, spectral=spectral)

    def forward_noise_free(self, x_0: Tensor) -> Tensor:
        """S_T(x_0): the noise-free forward map to T, for reconstruction MSE."""
        return heat.step(x_0, self.meta.t_final)

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        return augment_periodic(x, generator)

    def prior(self) -> heat.GaussianPrior:
        _, h, w = self.state_shape
        return heat.GaussianPrior.from_normalisation(
            h, w, float(self.meta.params["exponent"]), self.meta.norm_mean, self.meta.norm_std)

    def exact_posterior(self, x_T: Tensor) -> heat.Posterior:
        """p(x_0 | x_T) for x_T (B, 1, H, W); mean (B, H, W)."""
        return heat.posterior(x_T[:, 0], self.prior(), self.meta.n_steps, self.meta.dt,
                              self.meta.g)


System = HeatSystem
SIMULATORS: dict[str, type[HeatSystem]] = {"heat": HeatSystem}


def system_for(meta: Metadata, state_shape: tuple[int, ...]) -> System:
    if meta.simulator not in SIMULATORS:
        raise ValueError(f"unknown simulator '{meta.simulator}' (known: {', '.join(SIMULATORS)})")
    return SIMULATORS[meta.simulator](meta, tuple(state_shape))
