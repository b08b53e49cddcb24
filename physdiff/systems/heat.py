"""Stochastic heat diffusion on a periodic grid (simulators/heat.py) as a physdiff System: its
drift, network, calibrated spectral noise, exact posterior, metrics, dataset generation and
figures. States (B, 1, H, W) in normalised units (docs/method.md §8, heat-32)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from physdiff import metrics, plots
from physdiff.checks import UsageError, finite, positive
from physdiff.conditioning import fourier_preconditioner
from physdiff.data import Metadata
from physdiff.flow_correction import corrected_score, mode_gain_correction
from physdiff.gaussian_start import end_state_spectrum
from physdiff.nets import PeriodicScoreNet
from physdiff.noise import residual_spectra, spectral_noise
from physdiff.observations import Operator, dense_matrix
from physdiff.samplers import Noise
from physdiff.sde import Drift, as_drift, tweedie_score
from physdiff.systems.base import InferenceResult, System
from physdiff.systems.generation import (
    CHUNK,
    SPLITS,
    Part,
    generate_in_parts,
    randn_per_simulation,
    simulation_generator,
)
from simulators import heat

__all__ = ["HeatSystem", "ObservedPosterior", "augment_periodic"]


def augment_periodic(x: Tensor, generator: torch.Generator) -> Tensor:
    """A random symmetry of the periodic square (rotation by k·90°, flip, translation), the same
    for the whole batch, applied to the last two dims of x (..., H, W) with H = W."""
    draws = torch.randint(0, 1 << 30, (4,), generator=generator).tolist()
    x = torch.rot90(x, draws[0] % 4, dims=(-2, -1))
    if draws[1] % 2:
        x = x.flip(-1)
    return torch.roll(x, (draws[2] % x.shape[-2], draws[3] % x.shape[-1]), dims=(-2, -1))


@dataclass(frozen=True)
class ObservedPosterior:
    """Exact p(x_0 | y) of a partial observation (simulators/heat.py `observed_posterior`):
    mean (M, H, W), per-mode variance E|x̂_0 − m̂|² (H, W) (the diagonal of F Σ Fᴴ, comparable
    with sample variances mode by mode although Σ is not stationary) and the dense Gaussian."""

    mean: Tensor
    variance: Tensor
    dense: heat.DenseGaussian

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws per observation, (M, n, H, W), float64."""
        return self.dense.sample(n, generator)


def mode_variance(covariance: Tensor, h: int, w: int) -> Tensor:
    """diag(F Σ Fᴴ) (H, W) of a covariance Σ (HW, HW) on row-major fields, F the unnormalised
    fft2 as a matrix: E|x̂_k − m̂_k|² in fft2 units."""
    f = torch.fft.fft2(torch.eye(h * w, dtype=torch.float64).reshape(-1, h, w)).reshape(h * w, -1)
    f = f.T  # f[k, q] = exp(−i k·q): row k of the fft2 matrix
    return (f @ covariance.to(f.dtype) * f.conj()).sum(1).real.reshape(h, w)


@dataclass(frozen=True)
class HeatSystem(System):
    """Stochastic heat diffusion (simulators/heat.py); states (B, 1, H, W), normalised units."""

    name: ClassVar[str] = "heat"
    generate_defaults: ClassVar[dict[str, float | int]] = {"t_final": 0.2, "steps": 32, "g": 0.1}
    # p_T is a stationary Gaussian, so the Gaussian start draws x_T | y exactly: Langevin steps
    # on the learned score can only add its error (benchmarks/heat_obs.py, README)
    default_langevin_steps: ClassVar[int] = 0
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # about 2 minutes on 2 CPU cores. Width 16 / depth 1 measured as the best speed-accuracy
        # trade (a 3×3 CNN plus the per-mode spectral branch); the multi-step stages at the
        # full learning rate helped more than at 0.1-0.2× (README, "Choices we measured").
        "demo": {"stages": "1:1500,4:300,8:200", "batch_size": 32, "lr": 1e-3, "width": 16,
                 "depth": 1},
        # the heat-32 benchmark model. The curriculum stops at 8 steps: a run that went on to 16
        # and 32 steps got an exact mean path but a degraded per-step kernel and unusable SDE
        # samples (README, "Choices we measured").
        "heat-32": {"stages": "1:5000,4:2500,8:2000", "batch_size": 32,
                    "lr": 1e-3, "width": 16, "depth": 1},
    }

    def step(self, x: Tensor) -> Tensor:
        """Noise-free forward step S_dt."""
        return heat.step(x, self.meta.dt)

    def physics_drift(self, kind: str = "true", physics_net: nn.Module | None = None,
                      condition: None = None) -> Drift:
        """P with explicit reverse Euler step 2x − S(x) (docs/method.md §2, diffusion); kind 'none' drops the
        physics (the network alone learns the reverse step)."""
        if kind == "true":
            return as_drift(partial(heat.step, dt=self.meta.dt), self.meta.dt)
        return super().physics_drift(kind, physics_net, condition)

    def calibrate(self, drift_for: Callable[[None], Drift], trajectories: Tensor,
                  condition: None = None) -> Tensor:
        """Per-step Fourier power of the one-step residual, (K, 1, H, W) (physdiff/noise.py)."""
        return residual_spectra(drift_for(None), trajectories, self.meta.times(), self.meta.dt)

    def flow_correction(self, drift_for: Callable[[None], Drift], trajectories: Tensor,
                        condition: None = None) -> Tensor:
        """Per-step, per-mode least-squares gains the learned step lacks (linear physics and
        Gaussian data make the exact step linear and diagonal in Fourier space;
        physdiff/flow_correction.py), (K, 2, 1, H, W)."""
        return mode_gain_correction(drift_for(None), trajectories, self.meta.times(),
                                    self.meta.dt)

    def corrected_flow_score(self, score: Drift, correction: Tensor) -> Drift:
        return corrected_score(score, correction, self.meta.dt, self.meta.g)

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

    def end_state_spectrum(self) -> Tensor:
        """S_k = λ_k² P_k + σ²_k (H, W), fft2 units: the covariance spectrum of x_T under the
        exact GRF prior pushed to T (λ_k = exp(−|k|² T), σ²_k = `heat.noise_spectrum`); the
        learned s_θ(·, T) approximates the score of this Gaussian."""
        _, h, w = self.state_shape
        n, dt, g = self.meta.n_steps, self.meta.dt, self.meta.g
        lam = torch.exp(-n * dt * heat.wavenumbers_squared(h, w))
        return lam**2 * self.prior().spectrum.double() + heat.noise_spectrum(h, w, n, dt, g)

    def end_state_preconditioner(self, model: Any, operator: Operator, sigma: Tensor
                                 ) -> Callable[[Tensor], Tensor]:
        """The Fourier multiplier R with spectrum D_k = HW / (HW / S_k + ρ / σ_y²)
        (physdiff.conditioning.fourier_preconditioner), S_k the training end states' spectrum
        the checkpoint stores (else `end_state_spectrum`, the exact prior's) and ρ / σ_y²
        the likelihood's precision averaged over the state's entries, tr(Aᵀ A / σ_y²) / D,
        estimated as E‖A z / σ_y‖² / D over 64 fixed white-noise probes z (Hutchinson)."""
        _, h, w = self.state_shape
        stats = getattr(model, "end_state", None) or {}
        s_k = stats["spectrum"][0] if "spectrum" in stats else self.end_state_spectrum()
        s_k = s_k.clamp_min(1e-12 * float(s_k.max()))  # g = 0 leaves the k = 0 mode at 0
        z = torch.randn((64, *self.state_shape), generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
        residual = operator(z) / sigma.to(torch.float64)
        precision = float(residual.square().flatten(1).sum(1).mean()) / z[0].numel()
        return fourier_preconditioner(h * w / (h * w / s_k + precision))

    def end_state_statistics(self, x_T: Tensor) -> dict[str, Tensor]:
        """Mean and Fourier spectrum of the training end states (a stationary field)."""
        mean, spectrum = end_state_spectrum(x_T)
        return super().end_state_statistics(x_T) | {"mean": mean.float().cpu(),
                                                    "spectrum": spectrum.cpu()}

    def end_state_score(self, model: Any, condition: None = None) -> Drift:
        """The score Tweedie's formula implies from the learned reverse step (the heat step is
        linear and its noise white and of scale g on every pixel: exact for an exact kernel)."""
        return tweedie_score(self.step, model.drift(c=1.0), self.meta.dt, self.meta.g)

    def exact_observed_posterior(self, operator: Operator, y: Tensor, sigma: Tensor
                                 ) -> ObservedPosterior | None:
        """Exact p(x_0 | y) for a linear A (dense (HW)² matrices: well under a second at 32²);
        None for a nonlinear A or a grid above 64², where they would take minutes and GBs."""
        _, h, w = self.state_shape
        if not operator.linear or h * w > 64 * 64:
            return None
        a = dense_matrix(operator, self.state_shape)
        sig = sigma.to(torch.float64).expand(y.shape[1:]).reshape(-1)
        dense = heat.observed_posterior(y.flatten(1), a, sig, self.prior(), self.meta.n_steps,
                                        self.meta.dt, self.meta.g)
        return ObservedPosterior(dense.mean, mode_variance(dense.covariance, h, w), dense)

    def evaluate(self, truth: Tensor, x_T: Tensor, *, samples: Tensor | None = None,
                 point: Tensor | None = None, condition: None = None, exact: Any = None,
                 paths: Tensor | None = None, index: int = 0) -> dict[str, Any]:
        """Metrics of posterior samples (B, n, *state) and/or a point estimate (B, *state)
        against the truth x_0 (B, *state) (docs/method.md §7). With `exact` (the exact posterior
        of x_T) also per-band variance ratios and interval coverage. Reconstructions of x_0 only
        (index 0); `condition` and `paths` are not used."""
        x_0 = truth
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
            if samples.shape[1] > 1:  # one sample per case has no spread
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

    # ----------------------------------------------------------------- data generation
    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--size", type=positive(int), default=32, help="grid size H = W (even)")
        group.add_argument("--exponent", type=finite(float), default=4.0,
                           help="GRF prior P(k) = |k|^-exponent")

    @classmethod
    def generate(cls, args: argparse.Namespace, system_id: str, version: str) -> None:
        """Gaussian random fields, normalised by the training split's scalar mean and std of the
        initial states (docs/method.md §8), then the exact spectral step plus g √dt z. Each
        trajectory draws its initial state, then its noise, from its own generator
        (`simulation_generator`); made in parts of CHUNK trajectories (shards, resume, join:
        physdiff/systems/generation.py). Every shard draws all training initial states first, so
        all compute the same normalisation."""
        if args.size % 2 or args.size < 4:
            raise UsageError(f"--size {args.size}: expected an even grid size >= 4")
        dt = args.t_final / args.steps
        counts = dict(zip(SPLITS, (args.n_train, args.n_valid, args.n_test), strict=True))

        def initial_states(gens: list[torch.Generator]) -> Tensor:  # (n, H, W), float64
            return torch.cat([heat.sample_prior(1, args.size, args.size, args.exponent, gen)
                              for gen in gens])

        x0_train = initial_states([simulation_generator(args.seed, SPLITS.index("train"), i)
                                   for i in range(counts["train"])])
        mean, std = x0_train.mean().item(), x0_train.std().item()
        if not math.isfinite(std) or std == 0:
            raise UsageError("degenerate dataset: zero or non-finite standard deviation")
        params = {"exponent": args.exponent, "size": args.size, "t_final": args.t_final,
                  "kappa": 1.0, "domain": "2pi-periodic square",
                  "seeding": "per trajectory"}
        metas = {split: Metadata(simulator=system_id, dt=dt, g=args.g, n_steps=args.steps,
                                 seed=args.seed, split=split, norm_mean=mean, norm_std=std,
                                 version=version, params=params) for split in SPLITS}
        scale = args.g * math.sqrt(dt)

        def simulate(part: Part) -> tuple[Tensor, dict[str, Tensor]]:
            gens = part.generators(args.seed)
            x = ((initial_states(gens) - mean) / std)[:, None]  # (n, 1, H, W)
            states = [x]
            for _ in range(args.steps):
                z = randn_per_simulation(gens, tuple(x.shape[1:]), x.dtype)
                x = heat.step(x, dt) + scale * z
                states.append(x)
            return torch.stack(states, dim=1).float(), {}

        generate_in_parts(args.out, metas, counts, (1, args.size, args.size), simulate, CHUNK,
                          args.shard, args.join,
                          label="heat")
        print(f"normalisation: mean={mean:.6g} std={std:.6g} (training split initial states)")

    # ----------------------------------------------------------------- figures
    def figures(self, out: Path, result: InferenceResult) -> list[str]:
        """posterior.png (truth / observed / posterior mean / exact mean / std / PF-ODE / samples)
        and spectra.png (radial power spectra of truth, samples, PF-ODE and exact samples)."""
        f = plots.to_fields
        x_T, samples, ode = result.x_T.cpu(), result.samples["0"].cpu(), result.ode["0"].cpu()
        truth = None if result.truth is None else result.truth["0"].cpu()
        k = min(4, x_T.shape[0])
        exact_mean = result.exact.mean[:k] if result.exact is not None else None
        plots.posterior_panels(out / "posterior.png", f(x_T[:k]), f(samples[:k]),
                               None if truth is None else f(truth[:k]), f(ode[:k]), exact_mean)
        curves = {"posterior samples": f(samples), "PF-ODE": f(ode)}
        if truth is not None:
            curves = {"truth": f(truth), **curves}
        if result.exact_samples is not None:
            curves["exact posterior samples"] = result.exact_samples
        plots.power_spectra(out / "spectra.png", curves)
        return ["posterior.png", "spectra.png"]
