"""1D stochastic viscous Burgers (physdiff_burgers/simulator.py) as a physdiff System, written as a
third-party plug-in: drift, score network, calibrated spectral noise, symmetries, metrics,
dataset generation and figures. States (B, 1, N) in raw units (no normalisation)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import torch
from physdiff import metrics, plots
from physdiff.cli.common import UsageError, positive
from physdiff.data import Metadata, up_to_date, write
from physdiff.noise import residual_power, spectral_noise
from physdiff.samplers import Noise
from physdiff.sde import Drift, as_drift
from physdiff.systems import InferenceResult, System
from physdiff.systems.generation import SPLITS, simulate_in_chunks, split_generator
from torch import Tensor, nn

from physdiff_burgers import simulator
from physdiff_burgers.network import PeriodicScoreNet1d

__all__ = ["BurgersSystem", "reflect"]


def reflect(u: Tensor) -> Tensor:
    """u(x) -> −u(−x) on the grid x_j = 2π j / N: index j goes to −j mod N, (..., N) -> (..., N).

    Burgers is invariant under it: with v(x, t) = −u(−x, t), v_t = −u_t, v v_x = −u u_x and
    ν v_xx = −ν u_xx, all evaluated at −x, so v_t + v v_x − ν v_xx = −(u_t + u u_x − ν u_xx) = 0.
    The additive white noise and the prior (sample_prior) are invariant in law as well.
    """
    return -torch.roll(u.flip(-1), 1, dims=-1)


@dataclass(frozen=True)
class BurgersSystem(System):
    """u_t + u u_x = ν u_xx on [0, 2π) periodic, N points, additive noise g √dt z per step.

    Physics drift, kind 'true': P(x) = (S_dt(x) − x) / dt (`physdiff.sde.as_drift`), whose
    backward Euler step is the negated forward increment P̃⁻¹(x) = 2x − S_dt(x)
    (docs/method.md §2). Why this one rather than running the advection with −dt:
    - at these viscosities the high modes are diffusion-dominated (ν k² dt = 2.2 at k = 21 on the
      defaults), and running diffusion backwards is unstable; 2 − e^{−ν k² dt} < 2 per step is
      the bounded choice, as on heat;
    - for the advection it is as accurate as S_{−dt}: both invert S_dt to first order in dt,
      and the score absorbs the O(dt²) rest when it learns the conditional mean (§3);
    - it needs only the forward step, unsplit, is differentiable and costs one step.
    Kind 'none': no physics (the network alone learns the reverse step).
    """

    name: ClassVar[str] = "burgers"
    generate_defaults: ClassVar[dict[str, float]] = {"t_final": 1.0, "steps": 20, "g": 0.1}

    @property
    def viscosity(self) -> float:
        return float(self.meta.params["viscosity"])

    @property
    def substeps(self) -> int:
        return int(self.meta.params["substeps"])

    def step(self, x: Tensor) -> Tensor:
        """Noise-free forward step S_dt, (..., N) -> (..., N)."""
        return simulator.step(x, self.meta.dt, self.viscosity, self.substeps)

    # ----------------------------------------------------------------- physics and networks
    def physics_drift(self, kind: str = "true", physics_net: nn.Module | None = None,
                      condition: Tensor | None = None) -> Drift:
        """P with backward Euler step 2x − S_dt(x) (class docstring); 'none' drops the physics."""
        if kind == "true":
            return as_drift(self.step, self.meta.dt)
        return super().physics_drift(kind, physics_net, condition)

    def score_net(self, width: int, depth: int, spectral: bool = True,
                  physics: str = "true") -> nn.Module:
        channels, points = self.state_shape
        return PeriodicScoreNet1d(channels, points, t_max=self.meta.t_final,
                                  out_scale=1 / (self.meta.g * math.sqrt(self.meta.dt)),
                                  width=width, depth=depth, spectral=spectral)

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A random symmetry, the same for the batch of windows (B, S + 1, 1, N): u -> −u(−x)
        with probability ½ (see `reflect`), then a periodic translation by a random number of
        grid points."""
        draws = torch.randint(0, 1 << 30, (2,), generator=generator).tolist()
        if draws[0] % 2:
            x = reflect(x)
        return torch.roll(x, draws[1] % x.shape[-1], dims=-1)

    def calibrate(self, drift_for: Callable[[Tensor | None], Drift], trajectories: Tensor,
                  condition: Tensor | None = None) -> Tensor:
        """Per-step Fourier power of the one-step residual, (K, 1, N), float64: the statistics
        are translation invariant, so the residual covariance is diagonal in Fourier space
        (docs/method.md §5)."""
        return residual_power(drift_for(None), trajectories, self.meta.times(), self.meta.dt,
                              transform=torch.fft.fft)

    def noise(self, calibration: Tensor | None, condition: Tensor | None = None) -> Noise | None:
        """Calibrated spectral noise, or None for the textbook g √dt z."""
        return spectral_noise(calibration, dims=1) if calibration is not None else None

    # ----------------------------------------------------------------- metrics
    def evaluate(self, truth: Tensor, x_T: Tensor, *, samples: Tensor | None = None,
                 point: Tensor | None = None, condition: Tensor | None = None,
                 exact: Any = None, paths: Tensor | None = None, index: int = 0
                 ) -> dict[str, Any]:
        """Metrics of posterior samples (B, n, 1, N) and/or a point estimate (B, 1, N) against
        the truth x_0 (B, 1, N) (docs/method.md §7):
        - mse (point), mse_per_sample and mse_of_mean (samples);
        - resim_mse: ‖S_T(x̂) − S_T(x_0)‖², both forward maps noise-free;
        - spectral_error: mean |log|x̂_k| − log|x̂_0,k|| over k = 1..min(10, modes, N/2) (above
          the prior's modes the truth is zero);
        - spread: posterior std, averaged over points and observations;
        - coverage90: fraction of the true u_0(x_j) inside the samples' central 90 % interval
          (a perfect sampler gives about 0.81 with 16 samples, method.md §7).
        Reconstructions of x_0 only (index 0); `condition`, `exact` and `paths` are not used."""
        x_0 = truth
        out: dict[str, Any] = {}
        clean_T = self.forward_noise_free(x_0)
        # metrics.spectral_error reads (..., H, W) fields; states (..., 1, N) are H = 1, W = N
        top = min(10, int(self.meta.params.get("modes", 10)), x_0.shape[-1] // 2)
        bins = range(1, top + 1)
        if point is not None:
            out["mse"] = metrics.mse(point, x_0)
            out["resim_mse"] = metrics.mse(self.forward_noise_free(point), clean_T)
            out["spectral_error"] = metrics.spectral_error(point, x_0, bins)
        if samples is not None:
            truth_ = x_0[:, None].expand_as(samples)
            out["mse_per_sample"] = metrics.mse(samples, truth_)
            out["mse_of_mean"] = metrics.mse(samples.mean(1), x_0)
            out["resim_mse"] = metrics.mse(self.forward_noise_free(samples), clean_T[:, None])
            out["spectral_error"] = metrics.spectral_error(samples, truth_, bins)
            if samples.shape[1] > 1:
                out["spread"] = samples.std(1).mean().item()
                out["coverage90"] = metrics.interval_coverage(
                    samples.flatten(2).double(), x_0.flatten(1).double(), 0.9)
        return out

    # ----------------------------------------------------------------- data generation
    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--points", type=positive(int), default=64,
                           help="grid points N on [0, 2π), >= 8 (%(default)s)")
        group.add_argument("--viscosity", type=positive(float), default=0.1,
                           help="viscosity ν (%(default)s)")
        group.add_argument("--modes", type=positive(int), default=8,
                           help="prior: modes k = 1..modes, amplitude ∝ 1/k (%(default)s)")
        group.add_argument("--amplitude", type=positive(float), default=0.5,
                           help="prior: standard deviation of u_0(x) (%(default)s)")
        group.add_argument("--substeps", type=positive(int), default=4,
                           help="RK4 substeps per step, %(default)s (CFL: dt/substeps · max|u| "
                           "· N/3 <= 2.83)")

    @classmethod
    def generate(cls, args: argparse.Namespace, system_id: str, version: str) -> None:
        """Random smooth periodic u_0 (simulator.sample_prior), then the pseudo-spectral step plus
        g √dt z; raw units (normalisation 0 / 1: normalising u would change the advection
        coefficient of the equation)."""
        k_max = simulator.max_wavenumber(args.points)
        if args.points < 8:
            raise UsageError(f"--points {args.points}: expected at least 8")
        if args.modes > k_max:
            raise UsageError(f"--modes {args.modes}: at most {k_max} with --points "
                             f"{args.points} (the 2/3 rule keeps |k| <= {k_max})")
        dt = args.t_final / args.steps
        params = {"points": args.points, "viscosity": args.viscosity, "modes": args.modes,
                  "amplitude": args.amplitude, "substeps": args.substeps,
                  "t_final": args.t_final, "domain": "[0, 2pi) periodic",
                  "scheme": "pseudo-spectral, 2/3 rule, integrating-factor RK4",
                  "noise": "additive g sqrt(dt) z per step"}
        counts = dict(zip(SPLITS, (args.n_train, args.n_valid, args.n_test), strict=True))
        for i, split in enumerate(SPLITS):
            path = args.out / f"{split}.h5"
            meta = Metadata(simulator=system_id, dt=dt, g=args.g, n_steps=args.steps,
                            seed=args.seed, split=split, norm_mean=0.0, norm_std=1.0,
                            version=version, params=params)
            if up_to_date(path, meta, (counts[split], args.steps + 1, 1, args.points)):
                print(f"{path}: up to date, kept")
                continue
            u_0 = simulator.sample_prior(counts[split], args.points, args.modes, args.amplitude,
                                         split_generator(args.seed, i))[:, None]  # (n, 1, N)
            rollout = partial(simulator.rollout, n_steps=args.steps, dt=dt, g=args.g,
                              viscosity=args.viscosity, substeps=args.substeps)
            try:
                x = simulate_in_chunks(rollout, u_0, split_generator(args.seed, 100 + i), split)
            except ValueError:
                raise UsageError("non-finite states: the simulation blew up (raise --substeps "
                                 "or --viscosity, or lower --amplitude)") from None
            cfl = simulator.cfl_number(x.abs().max().item(), dt, args.points, args.substeps)
            if cfl > simulator.RK4_LIMIT:
                need = math.ceil(args.substeps * cfl / simulator.RK4_LIMIT)
                raise UsageError(f"CFL number {cfl:.2f} > {simulator.RK4_LIMIT:.2f}: the step is "
                                 f"unstable; use --substeps {need} or more")
            write(path, x.float(), meta)
            print(f"{path}: {counts[split]} trajectories, {args.steps} steps of dt={dt:g}, "
                  f"{args.points} points, CFL number {cfl:.2f}")

    # ----------------------------------------------------------------- figures
    def figures(self, out: Path, result: InferenceResult) -> list[str]:
        """posterior.png: for the first observations, the observed u_T, the true u_0, posterior
        samples (thin lines), the posterior mean and a ±2 std band."""
        import matplotlib.pyplot as plt  # after physdiff.plots, which selects the Agg backend

        x_T, samples = result.x_T.cpu()[:, 0], result.samples["0"].cpu()[:, :, 0]
        truth = None if result.truth is None else result.truth["0"].cpu()[:, 0]
        k = min(4, x_T.shape[0])
        grid = 2 * math.pi * torch.arange(x_T.shape[-1]) / x_T.shape[-1]
        fig, axes = plt.subplots(1, k, figsize=(3.4 * k, 3.0), squeeze=False, sharey=True)
        for i, ax in enumerate(axes[0]):
            mean = samples[i].mean(0)
            for s in samples[i]:
                ax.plot(grid, s, color="tab:blue", lw=0.4, alpha=0.35)
            if samples.shape[1] > 1:
                std = samples[i].std(0)
                ax.fill_between(grid, mean - 2 * std, mean + 2 * std, color="tab:blue",
                                alpha=0.15, lw=0, label="±2 std")
            ax.plot(grid, mean, color="tab:blue", lw=1.6, label="posterior mean")
            if truth is not None:
                ax.plot(grid, truth[i], color="k", lw=1.4, label="true u_0")
            ax.plot(grid, x_T[i], color="tab:red", ls="--", lw=1.2, label="observed u_T")
            ax.set_xlabel("x")
            ax.set_title(f"observation {i + 1}", fontsize=9)
        axes[0, 0].set_ylabel("u")
        axes[0, 0].legend(fontsize=7)
        fig.tight_layout()
        plots.save_figure(fig, out / "posterior.png")
        return ["posterior.png"]
