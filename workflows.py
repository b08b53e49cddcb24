"""Script-layer workflows shared by infer.py and the benchmarks: load a trained model, run the
reverse samplers in batches, and score the results (against the exact posterior where one exists).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from physdiff.data import Metadata
from physdiff.samplers import euler_maruyama, langevin_corrector, probability_flow, repeat_samples
from physdiff.sde import Drift, reverse_drift
from physdiff.training import CheckpointError, load_checkpoint
from systems import System, system_for

__all__ = ["Model", "evaluate", "load_model", "reconstruct", "sample_posterior"]


@dataclass
class Model:
    score: nn.Module
    system: System
    meta: Metadata
    noise_spectra: Tensor | None  # the noise calibration (residual spectra or variances)
    config: dict[str, Any]
    physics_net: nn.Module | None = None

    @property
    def physics(self) -> str:
        return self.config.get("physics", "true")

    def drift(self, c: float = 1.0, score: Drift | None = None) -> Drift:
        physics = self.system.physics_drift(self.physics, self.physics_net)
        return reverse_drift(physics, score or self.score, self.meta.g, c)

    def times(self, device: torch.device) -> Tensor:
        """Reverse grid t_K .. t_0, float32 on device."""
        return self.meta.times().flip(0).to(device, torch.float32)


def load_model(path: Path, device: torch.device) -> Model:
    state = load_checkpoint(path)
    meta = Metadata(**state["meta"])
    system = system_for(meta, tuple(state["state_shape"]))
    cfg = state["config"]
    physics = cfg.get("physics", "true")
    score = system.score_net(cfg["width"], cfg["depth"], cfg["spectral"], physics)
    physics_net = system.physics_net(cfg["physics_width"]) if physics == "learned" else None
    try:
        score.load_state_dict(state["model"])
        if physics_net is not None:
            physics_net.load_state_dict(state["physics"])
            physics_net.to(device).eval()
    except (RuntimeError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the networks its config describes "
                              f"({str(err).splitlines()[0]})") from None
    score.to(device).eval()
    return Model(score, system, meta, state.get("noise_spectra"), cfg, physics_net)


def check_observations(x_T: Tensor, model: Model, source: str) -> None:
    """One clear error for observations the model cannot take."""
    expected = tuple(model.system.state_shape)
    if tuple(x_T.shape[1:]) != expected:
        raise ValueError(f"{source}: observed states have shape {tuple(x_T.shape[1:])}, the "
                         f"checkpoint expects {expected}")
    if not torch.isfinite(x_T).all():
        bad = int((~torch.isfinite(x_T)).flatten(1).any(1).sum())
        raise ValueError(f"{source}: {bad} observed state(s) contain NaN or Inf")


@torch.no_grad()
def sample_posterior(model: Model, x_T: Tensor, n: int, generator: torch.Generator,
                     noise: str = "calibrated", corrector_snr: float = 0.0,
                     batch_size: int = 512, progress: bool = True,
                     return_paths: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """n reverse-SDE samples of x_0 for each observation: (B, *state) -> (B, n, *state).

    noise: 'calibrated' (the per-step residual covariance stored in the checkpoint) or 'white'
    (the SDE's own g √dt z). With return_paths, also the whole reverse paths in forward time
    order, (B, n, K + 1, *state).
    """
    device = x_T.device
    ts = model.times(device)
    if noise == "calibrated":
        if model.noise_spectra is None:
            raise CheckpointError("checkpoint has no noise calibration (training did not finish)"
                                  "; use --noise white or finish training with --resume")
        noise_fn = model.system.noise(model.noise_spectra.to(device))
    elif noise == "white":
        noise_fn = model.system.noise(None)
    else:
        raise ValueError(f"--noise {noise}: expected 'calibrated' or 'white'")
    corrector = langevin_corrector(model.score, corrector_snr) if corrector_snr > 0 else None
    drift = model.drift(c=1.0)
    flat = repeat_samples(x_T, n)
    out = []
    for start in tqdm(range(0, flat.shape[0], batch_size), desc="reverse SDE", unit="batch",
                      disable=None if progress else True):
        path = euler_maruyama(drift, flat[start:start + batch_size], ts, model.meta.g,
                              generator, noise_fn, corrector, return_path=return_paths)
        out.append(path.flip(0).transpose(0, 1) if return_paths else path)
    if return_paths:
        paths = torch.cat(out).reshape(x_T.shape[0], n, *out[0].shape[1:])
        return paths[:, :, 0], paths
    return torch.cat(out).reshape(x_T.shape[0], n, *x_T.shape[1:])


@torch.no_grad()
def reconstruct(model: Model, x_T: Tensor, kind: str, method: str = "euler",
                batch_size: int = 512) -> Tensor:
    """Deterministic reconstructions of x_0, (B, *state) -> (B, *state).

    kind 'ode': the probability-flow ODE (c = 1/2) with torchdiffeq `method`;
    kind 'mean': the noise-free c = 1 path, which iterates the learned conditional means (for
    linear-Gaussian physics it is the posterior mean E[x_0 | x_T]).
    """
    ts = model.times(x_T.device)
    out = []
    for xb in x_T.split(batch_size):
        if kind == "ode":
            out.append(probability_flow(model.drift(c=0.5), xb, ts, method))
        elif kind == "mean":
            out.append(euler_maruyama(model.drift(c=1.0), xb, ts, model.meta.g,
                                      noise=lambda x, i, gen: torch.zeros_like(x)))
        else:
            raise ValueError(f"unknown reconstruction '{kind}'")
    return torch.cat(out)


def timed(fn: Callable[[], Tensor]) -> tuple[Tensor, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def evaluate(system: System, x_0: Tensor, x_T: Tensor, samples: Tensor | None = None,
             point: Tensor | None = None, exact: Any = None,
             paths: Tensor | None = None) -> dict[str, Any]:
    """The system's metrics of posterior samples (B, n, *state) and/or a point estimate
    (B, *state) against the truth x_0 (B, *state) observed as x_T (see each system's
    `evaluate`)."""
    return system.evaluate(x_0, x_T, samples=samples, point=point, exact=exact, paths=paths)
