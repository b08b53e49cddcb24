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

from physdiff import metrics
from physdiff.data import Metadata
from physdiff.noise import spectral_noise
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
    noise_spectra: Tensor | None
    config: dict[str, Any]

    def drift(self, c: float = 1.0, score: Drift | None = None) -> Drift:
        return reverse_drift(self.system.physics_drift(), score or self.score, self.meta.g, c)

    def times(self, device: torch.device) -> Tensor:
        """Reverse grid t_K .. t_0, float32 on device."""
        return self.meta.times().flip(0).to(device, torch.float32)


def load_model(path: Path, device: torch.device) -> Model:
    state = load_checkpoint(path)
    meta = Metadata(**state["meta"])
    system = system_for(meta, tuple(state["state_shape"]))
    cfg = state["config"]
    score = system.score_net(cfg["width"], cfg["depth"], cfg["spectral"])
    try:
        score.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the network its config describes "
                              f"({str(err).splitlines()[0]})") from None
    score.to(device).eval()
    return Model(score, system, meta, state.get("noise_spectra"), cfg)


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
                     batch_size: int = 512, progress: bool = True) -> Tensor:
    """n reverse-SDE samples of x_0 for each observation: (B, *state) -> (B, n, *state).

    noise: 'calibrated' (per-step residual spectra stored in the checkpoint) or 'white'
    (g √dt z, the textbook reverse SDE).
    """
    device = x_T.device
    ts = model.times(device)
    if noise == "calibrated":
        if model.noise_spectra is None:
            raise CheckpointError("checkpoint has no noise calibration (training did not finish)"
                                  "; use --noise white or finish training with --resume")
        noise_fn = spectral_noise(model.noise_spectra.to(device))
    elif noise == "white":
        noise_fn = None
    else:
        raise ValueError(f"--noise {noise}: expected 'calibrated' or 'white'")
    corrector = langevin_corrector(model.score, corrector_snr) if corrector_snr > 0 else None
    drift = model.drift(c=1.0)
    flat = repeat_samples(x_T, n)
    out = []
    for start in tqdm(range(0, flat.shape[0], batch_size), desc="reverse SDE", unit="batch",
                      disable=None if progress else True):
        out.append(euler_maruyama(drift, flat[start:start + batch_size], ts, model.meta.g,
                                  generator, noise_fn, corrector))
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
             point: Tensor | None = None, exact: Any = None) -> dict[str, Any]:
    """Metrics of posterior samples (B, n, *state) and/or a point estimate (B, *state) against
    the truth x_0 (B, *state) observed as x_T (method.md §5). With `exact` (the system's exact
    posterior of x_T, heat only) also per-band variance ratios and interval coverage.
    """
    out: dict[str, Any] = {}
    clean_T = system.forward_noise_free(x_0)
    if point is not None:
        out["mse"] = metrics.mse(point, x_0)
        out["recon_mse"] = metrics.mse(system.forward_noise_free(point), clean_T)
        out["spectral_error"] = metrics.spectral_error(point, x_0)
    if samples is not None:
        truth = x_0[:, None].expand_as(samples)
        out["mse_per_sample"] = metrics.mse(samples, truth)
        out["mse_of_mean"] = metrics.mse(samples.mean(1), x_0)
        out["recon_mse"] = metrics.mse(system.forward_noise_free(samples), clean_T[:, None])
        out["spectral_error"] = metrics.spectral_error(samples, truth)
        out["spread"] = samples.std(1).mean().item()
    if samples is not None and exact is not None:
        fields_ = samples[:, :, 0]  # single-channel fields (B, n, H, W)
        h, w = fields_.shape[-2:]
        for (lo, hi), mask in zip(metrics.BANDS, metrics.band_masks(h, w), strict=True):
            if not mask.any():  # a grid too small to have modes in this band
                continue
            name = f"[{lo:g},{hi:g}{']' if hi == metrics.BANDS[-1][1] else ')'}"
            out[f"var_ratio {name}"] = metrics.band_variance_ratio(fields_, exact.variance, mask)
            comp = metrics.fourier_components(fields_, mask)
            true_comp = metrics.fourier_components(x_0[:, 0], mask)
            out[f"coverage90 {name}"] = metrics.interval_coverage(comp, true_comp, 0.9)
    return out
