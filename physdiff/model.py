"""A trained model and the reverse samplers run on it in batches: load a checkpoint, draw
posterior samples, reconstruct (docs/method.md §4). Used by infer.py, the benchmarks and the
library API (physdiff.load)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from physdiff.data import DataError, Metadata, Trajectories, read
from physdiff.samplers import euler_maruyama, langevin_corrector, probability_flow, repeat_samples
from physdiff.sde import Drift, reverse_drift
from physdiff.systems import System, SystemLoadError, for_data
from physdiff.systems import get as get_system
from physdiff.systems.base import zero_drift
from physdiff.training import CheckpointError, load_checkpoint

__all__ = ["Model", "check_observations", "load_model", "read_split", "reconstruct",
           "sample_posterior", "timed"]


@dataclass
class Model:
    score: nn.Module
    system: System
    meta: Metadata
    noise_spectra: Tensor | None  # the noise calibration (residual spectra or variances)
    config: dict[str, Any]
    physics_net: nn.Module | None = None
    end_state: dict[str, Tensor] | None = None  # the system's statistics of training x_T
    # the networks as they stood after the one-step stage, for the probability-flow ODE
    # (`flow_drift`; docs/method.md §4); None: the ODE uses the final networks
    flow_score: nn.Module | None = None
    flow_physics: nn.Module | None = None
    flow_correction: Tensor | None = None  # the system's fitted correction of the flow's step

    @property
    def physics(self) -> str:
        return self.config.get("physics", "true")

    def normalise(self, x_raw: Tensor) -> Tensor:
        """Raw-unit states -> the training data's normalised units."""
        return (x_raw - self.meta.norm_mean) / self.meta.norm_std

    def drift(self, c: float = 1.0, score: Drift | None = None,
              condition: Tensor | None = None) -> Drift:
        """Reverse drift P − c g² s, bound to a batch's condition (None for most systems)."""
        physics = self.system.physics_drift(self.physics, self.physics_net, condition)
        return reverse_drift(physics, score or self.system.score_fn(self.score, condition),
                             self.meta.g, c)

    def flow_drift(self, condition: Tensor | None = None, c: float = 0.5,
                   corrected: bool = True) -> Drift:
        """The probability-flow drift P − ½ g² s with the networks kept after the one-step
        stage where the checkpoint has them (multi-step training fits c = 1 rollouts and moves
        s_θ away from the score the neutral c = ½ flow needs), and the system's fitted
        correction of their step where it has one (docs/method.md §4). `c` and `corrected`
        give the same networks' other drifts (the correction is fitted on their c = 1 step)."""
        kept = self.flow_score is not None
        score = self.system.score_fn(self.flow_score if kept else self.score, condition)
        if corrected and self.flow_correction is not None:
            score = self.system.corrected_flow_score(score, self.flow_correction)
        physics = self.system.physics_drift(self.physics, self.flow_physics if kept
                                            else self.physics_net, condition)
        return reverse_drift(physics, score, self.meta.g, c)

    def times(self, device: torch.device, stop: int = 0) -> Tensor:
        """Reverse grid t_K .. t_stop, float32 on device."""
        return self.meta.times()[stop:].flip(0).to(device, torch.float32)


def load_model(path: Path, device: torch.device | str = "cpu", system: str | None = None
               ) -> Model:
    """A checkpoint's networks, system and noise calibration on `device`; `system` overrides
    the system the checkpoint records (a name or package.module:Class)."""
    state = load_checkpoint(path)
    meta = Metadata(**state["meta"])
    cfg = state["config"]
    system_ = for_data(meta, tuple(state["state_shape"]), system or cfg.get("system"))
    try:
        score, physics_net = networks(system_, cfg, state["model"], state.get("physics"),
                                      device)
        flow = state.get("flow")
        flow_score, flow_physics = (networks(system_, cfg, flow["score"], flow["physics"],
                                             device) if flow else (None, None))
    except (RuntimeError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: weights do not fit the networks its config describes "
                              f"({str(err).splitlines()[0]})") from None
    return Model(score, system_, meta, state.get("noise_spectra"), cfg, physics_net,
                 state.get("end_state"), flow_score, flow_physics,
                 state.get("flow_correction") if (state.get("flow_choice") or {}).get("kept", True)
                 else None)


def networks(system_: System, cfg: dict[str, Any], score_state: dict[str, Tensor],
             physics_state: dict[str, Tensor] | None, device: torch.device | str
             ) -> tuple[nn.Module, nn.Module | None]:
    """The score network (and learned physics network, where the config has one) a training
    config describes, with the given weights, on `device`, in eval mode."""
    physics = cfg.get("physics", "true")
    score = system_.score_net(cfg["width"], cfg["depth"], cfg["spectral"], physics)
    score.load_state_dict(score_state)
    physics_net = None
    if physics == "learned":
        physics_net = system_.physics_net(cfg["physics_width"])
        physics_net.load_state_dict(physics_state)
        physics_net.to(device).eval()
    return score.to(device).eval(), physics_net


def read_split(path: Path, model: Model, limit: int | None = None) -> Trajectories:
    """A dataset split to test a model on: same simulator, dt, steps and g as its training
    data, or one clear error."""
    data = read(path, limit=limit)
    if data.meta.simulator != model.meta.simulator and type(model.system) is not _class_of(
            data.meta.simulator, path):
        raise DataError(f"{path}: data from system '{data.meta.simulator}', the checkpoint was "
                        f"trained on '{model.meta.simulator}' ({type(model.system).__name__})")
    if (data.meta.dt, data.meta.n_steps, data.meta.g) != (
            model.meta.dt, model.meta.n_steps, model.meta.g):
        raise DataError(f"{path}: dt, steps, g = {data.meta.dt}, {data.meta.n_steps}, "
                        f"{data.meta.g}; the checkpoint was trained on {model.meta.dt}, "
                        f"{model.meta.n_steps}, {model.meta.g}")
    return data


def _class_of(spec: str, path: Path) -> type | None:
    """The System class a dataset names (an entry-point name and a package.module:Class spec
    can name the same class), or None if it cannot be loaded."""
    try:
        return get_system(spec)
    except SystemLoadError:
        return None


def check_observations(x_T: Tensor, model: Model, source: str) -> None:
    """One clear error for observations the model cannot take."""
    if x_T.ndim == 0 or x_T.shape[0] == 0:
        raise ValueError(f"{source}: no observations")
    expected = tuple(model.system.state_shape)
    if tuple(x_T.shape[1:]) != expected:
        raise ValueError(f"{source}: observed states have shape {tuple(x_T.shape[1:])}, the "
                         f"checkpoint expects {expected}")
    if not torch.isfinite(x_T).all():
        bad = int((~torch.isfinite(x_T)).flatten(1).any(1).sum())
        raise ValueError(f"{source}: {bad} observed state(s) contain NaN or Inf")


def _batches(x: Tensor, condition: Tensor | None, size: int
             ) -> list[tuple[Tensor, Tensor | None]]:
    cond = [None] * -(-x.shape[0] // size) if condition is None else condition.split(size)
    return list(zip(x.split(size), cond, strict=True))


def _end_only(keep: Sequence[int] | None, stop: int) -> bool:
    """Whether only the end state t_stop is wanted: then the sampler need not keep its path."""
    return keep is None or list(keep) == [stop]


def _as_kept(x: Tensor, keep: Sequence[int] | None) -> Tensor:
    """The end state (B, *) as `_keep` would return it: (B, 1, *) when keep was given."""
    return x if keep is None else x[:, None]


def _keep(path: Tensor, keep: Sequence[int] | None, stop: int = 0) -> Tensor:
    """A path t_K .. t_stop (reverse order) -> the states at forward time indices `keep`,
    (B, len(keep), *), or the whole path in forward order (B, K + 1 − stop, *) if keep is None."""
    forward = path.flip(0).transpose(0, 1)
    return forward if keep is None else forward[:, [k - stop for k in keep]]


@torch.no_grad()
def sample_posterior(model: Model, x_T: Tensor, n: int, generator: torch.Generator,
                     noise: str = "calibrated", corrector_snr: float = 0.0,
                     batch_size: int = 512, progress: bool = False,
                     return_paths: bool = False, condition: Tensor | None = None,
                     keep: Sequence[int] | None = None, stop: int = 0
                     ) -> Tensor | tuple[Tensor, Tensor]:
    """n reverse-SDE samples of x_0 for each observation: (B, *state) -> (B, n, *state).

    noise: 'calibrated' (the per-step residual covariance stored in the checkpoint) or 'white'
    (the SDE's own g √dt z). With return_paths, also the whole reverse paths in forward time
    order, (B, n, K + 1, *state); with `keep` (forward time indices), instead of x_0 the states
    at those indices, (B, n, len(keep), *state). `condition` (B, *) goes with the observations
    (e.g. obstacle geometry). `stop` > 0 ends the reverse path at t_stop instead of t_0 (then keep
    every index of `keep` >= stop).
    """
    device = x_T.device
    ts = model.times(device, stop)
    if noise == "calibrated" and model.noise_spectra is None:
        raise CheckpointError("checkpoint has no noise calibration (training did not finish)"
                              "; use --noise white or finish training with --resume")
    if noise not in ("calibrated", "white"):
        raise ValueError(f"--noise {noise}: expected 'calibrated' or 'white'")
    calibration = model.noise_spectra.to(device) if noise == "calibrated" else None
    flat = repeat_samples(x_T, n)
    flat_cond = None if condition is None else repeat_samples(condition.to(device), n)
    out = []
    for xb, cb in tqdm(_batches(flat, flat_cond, batch_size), desc="reverse SDE", unit="batch",
                       disable=None if progress else True):
        score = model.system.score_fn(model.score, cb)
        corrector = langevin_corrector(score, corrector_snr) if corrector_snr > 0 else None
        noise_fn = model.system.noise(calibration, cb)
        paths = return_paths or not _end_only(keep, stop)
        # inference mode: no version counters or view tracking on the many small steps
        with torch.inference_mode():
            path = euler_maruyama(model.drift(c=1.0, condition=cb), xb, ts, model.meta.g,
                                  generator, noise_fn, corrector, return_path=paths)
        out.append(_keep(path, keep, stop) if paths else _as_kept(path, keep))
    out_ = torch.cat(out)  # outside inference mode: an ordinary tensor that autograd may use
    out_ = out_.reshape(x_T.shape[0], n, *out_.shape[1:])
    if return_paths and keep is None:
        return out_[:, :, 0], out_
    return out_


@torch.no_grad()
def reconstruct(model: Model, x_T: Tensor, kind: str, method: str = "euler",
                batch_size: int = 512, condition: Tensor | None = None,
                keep: Sequence[int] | None = None, stop: int = 0) -> Tensor:
    """Deterministic reconstructions of x_0, (B, *state) -> (B, *state), or with `keep` the
    states at those forward time indices, (B, len(keep), *state).

    kind 'ode': the probability-flow ODE (c = 1/2) with torchdiffeq `method`;
    kind 'mean': the noise-free c = 1 path, which iterates the learned conditional means (for
    linear-Gaussian physics it is the posterior mean E[x_0 | x_T]);
    kind 'naive': the approximate inverse physics alone, no score and no noise (a baseline).
    `stop` as in `sample_posterior`.
    """
    ts = model.times(x_T.device, stop)
    out = []
    for xb, cb in _batches(x_T, condition, batch_size):
        paths = not _end_only(keep, stop)
        if kind == "ode":
            path = probability_flow(model.flow_drift(cb), xb, ts, method,
                                    return_path=paths)
        elif kind in ("mean", "naive"):
            score = zero_drift if kind == "naive" else None
            path = euler_maruyama(model.drift(c=1.0, score=score, condition=cb), xb, ts,
                                  model.meta.g, noise=lambda x, i, gen: torch.zeros_like(x),
                                  return_path=paths)
        else:
            raise ValueError(f"unknown reconstruction '{kind}'")
        out.append(_keep(path, keep, stop) if paths else _as_kept(path, keep))
    return torch.cat(out)


def timed(fn: Callable[[], Tensor]) -> tuple[Tensor, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0
