"""The script layer's registry: how each simulator plugs into the library (drift, network, data).

Scripts (generate.py, train.py, infer.py, benchmarks/) import this; the library and the
simulators never do. Every system offers the same methods (see `HeatSystem`); the N-body toy
lives in nbody_system.py, the smoke flow in smoke_system.py. A system may need a per-trajectory
*condition* besides the state (smoke: the obstacle geometry): `condition` extracts it from a
file's extra arrays, and the drifts, the score and the noise are bound to it per batch.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

import physdiff
from nbody_system import NBodySystem
from physdiff import metrics
from physdiff.data import Metadata
from physdiff.networks import PeriodicScoreNet
from physdiff.noise import residual_spectra, spectral_noise
from physdiff.samplers import Noise
from physdiff.sde import Drift, as_drift
from simulators import heat
from smoke_system import SmokeSystem
from system_base import Unconditioned

__all__ = ["SIMULATORS", "HeatSystem", "NBodySystem", "SmokeSystem", "System", "augment_periodic", "code_version",
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
class HeatSystem(Unconditioned):
    """Stochastic heat diffusion (simulators/heat.py); states (B, 1, H, W), normalised units."""

    meta: Metadata
    state_shape: tuple[int, ...]  # (1, H, W)
    name = "heat"

    def step(self, x: Tensor) -> Tensor:
        """Noise-free forward step S_dt."""
        return heat.step(x, self.meta.dt)

    def physics_drift(self, kind: str = "true", physics_net: nn.Module | None = None,
                      condition: None = None) -> Drift:
        """P with backward Euler step 2x − S(x) (method.md §2, diffusion); kind 'none' drops the
        physics (the network alone learns the reverse step)."""
        if kind == "true":
            return as_drift(partial(heat.step, dt=self.meta.dt), self.meta.dt)
        if kind == "none":
            return lambda x, t: torch.zeros_like(x)
        raise ValueError(f"--physics {kind}: heat supports 'true' and 'none'")

    def physics_net(self, width: int) -> nn.Module:
        raise ValueError("--physics learned: not available for heat (the exact step is known)")

    def calibrate(self, drift_for: Callable[[None], Drift], trajectories: Tensor,
                  condition: None = None) -> Tensor:
        """Per-step Fourier power of the one-step residual, (K, 1, H, W) (physdiff/noise.py)."""
        return residual_spectra(drift_for(None), trajectories, self.meta.times(), self.meta.dt)

    def noise(self, calibration: Tensor | None, condition: None = None) -> Noise | None:
        """Calibrated spectral noise, or None for the textbook g √dt z."""
        return spectral_noise(calibration) if calibration is not None else None

    def score_net(self, width: int, depth: int, spectral: bool = True,
                  physics: str = "true") -> nn.Module:
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

    def evaluate(self, x_0: Tensor, x_T: Tensor, samples: Tensor | None = None,
                 point: Tensor | None = None, exact: Any = None,
                 paths: Tensor | None = None) -> dict[str, Any]:
        """Metrics of posterior samples (B, n, *state) and/or a point estimate (B, *state)
        against the truth x_0 (B, *state) (method.md §5). With `exact` (the exact posterior of
        x_T) also per-band variance ratios and interval coverage. `paths` is not used."""
        out: dict[str, Any] = {}
        clean_T = self.forward_noise_free(x_0)
        if point is not None:
            out["mse"] = metrics.mse(point, x_0)
            out["recon_mse"] = metrics.mse(self.forward_noise_free(point), clean_T)
            out["spectral_error"] = metrics.spectral_error(point, x_0)
        if samples is not None:
            truth = x_0[:, None].expand_as(samples)
            out["mse_per_sample"] = metrics.mse(samples, truth)
            out["mse_of_mean"] = metrics.mse(samples.mean(1), x_0)
            out["recon_mse"] = metrics.mse(self.forward_noise_free(samples), clean_T[:, None])
            out["spectral_error"] = metrics.spectral_error(samples, truth)
            out["spread"] = samples.std(1).mean().item()
        if samples is not None and exact is not None:
            fields_ = samples[:, :, 0]  # single-channel fields (B, n, H, W)
            h, w = fields_.shape[-2:]
            for (lo, hi), mask in zip(metrics.BANDS, metrics.band_masks(h, w), strict=True):
                if not mask.any():  # a grid too small to have modes in this band
                    continue
                name = f"[{lo:g},{hi:g}{']' if hi == metrics.BANDS[-1][1] else ')'}"
                out[f"var_ratio {name}"] = metrics.band_variance_ratio(fields_, exact.variance,
                                                                       mask)
                comp = metrics.fourier_components(fields_, mask)
                true_comp = metrics.fourier_components(x_0[:, 0], mask)
                out[f"coverage90 {name}"] = metrics.interval_coverage(comp, true_comp, 0.9)
        return out


System = HeatSystem | NBodySystem | SmokeSystem
SIMULATORS: dict[str, type[System]] = {"heat": HeatSystem, "nbody": NBodySystem,
                                       "smoke": SmokeSystem}


def system_for(meta: Metadata, state_shape: tuple[int, ...]) -> System:
    if meta.simulator not in SIMULATORS:
        raise ValueError(f"unknown simulator '{meta.simulator}' (known: {', '.join(SIMULATORS)})")
    return SIMULATORS[meta.simulator](meta, tuple(state_shape))
