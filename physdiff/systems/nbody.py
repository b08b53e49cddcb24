"""The gravitational N-body toy (simulators/nbody.py) as a physdiff System: drifts, networks,
noise, metrics, dataset generation and figures.

State (B, N, 4): x, y, vx, vy per body, raw units (G = 1). The SDE's noise acts on velocities
only, so the score has no position components (the reverse drift is P − G Gᵀ ∇log p with
G = diag(0, 0, g, g)): the score network's position outputs are masked to zero whenever a physics
drift moves the positions. Physics drifts (`--physics`):
- true: the leapfrog step with −dt, which inverts the noise-free forward step exactly;
- learned: the same integrator with a learned pairwise central force P_φ (`PairwiseForce`,
  Newton's third law by construction), anchored by the forward one-step loss;
- none: no physics; the network alone learns the whole reverse step (a baseline).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from physdiff import calibration, metrics, plots
from physdiff.checks import UsageError, non_negative, positive
from physdiff.data import Metadata
from physdiff.nets import PairwiseForce, SetScoreNet
from physdiff.noise import diagonal_noise, residual_power
from physdiff.samplers import Noise, randn_like
from physdiff.sde import Drift, from_inverse_step, tweedie_score
from physdiff.systems.base import InferenceResult, System
from physdiff.systems.generation import (
    CHUNK,
    SPLITS,
    Part,
    generate_in_parts,
    randn_per_simulation,
)
from simulators import nbody

__all__ = ["NBodySystem"]

PHYSICS = ("true", "learned", "none")


@dataclass(frozen=True)
class NBodySystem(System):
    """2D gravitational N-body toy (simulators/nbody.py); states (B, N, 4)."""

    name: ClassVar[str] = "nbody"
    physics_kinds: ClassVar[tuple[str, ...]] = PHYSICS
    # 19 samples: the 50 % and 90 % rank intervals of SBC are then exact; paths are small
    default_samples: ClassVar[int] = 19
    keep_paths: ClassVar[bool] = True
    generate_defaults: ClassVar[dict[str, float | int]] = {"t_final": 1.0, "steps": 20, "g": 0.1}
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        # a 2-layer set transformer of width 64 (pass --physics learned / none for the
        # joint-physics and network-only models)
        "nbody": {"stages": "1:3000,4:600", "batch_size": 64, "lr": 1e-3, "width": 64,
                  "depth": 2},
    }

    @property
    def masses(self) -> Tensor:
        return torch.tensor(self.meta.params["masses"], dtype=torch.float64)

    @property
    def softening(self) -> float:
        return float(self.meta.params["softening"])

    @property
    def substeps(self) -> int:
        return int(self.meta.params["substeps"])

    def gravity(self, like: Tensor) -> Any:
        return nbody.gravity(self.masses.to(like), self.softening)

    def step(self, x: Tensor) -> Tensor:
        """Noise-free forward step S_dt."""
        return nbody.leapfrog(x, self.meta.dt, self.gravity(x), self.substeps)

    def physics_drift(self, kind: str = "true", physics_net: nn.Module | None = None,
                      condition: None = None) -> Drift:
        dt, sub = self.meta.dt, self.substeps
        if kind == "true":
            return from_inverse_step(lambda x: nbody.leapfrog(x, -dt, self.gravity(x), sub), dt)
        if kind == "learned":
            if physics_net is None:
                raise ValueError("--physics learned: no physics network given")
            return from_inverse_step(lambda x: nbody.leapfrog(x, -dt, physics_net, sub), dt)
        return super().physics_drift(kind, physics_net, condition)

    def forward_step(self, physics_net: nn.Module) -> Any:
        """The learned forward step S_φ (for the anchoring loss)."""
        return lambda x: nbody.leapfrog(x, self.meta.dt, physics_net, self.substeps)

    def physics_net(self, width: int) -> nn.Module:
        # zero force at the start and a feature scale that is not the data's softening: the force
        # is learned from the trajectories, not handed over
        return PairwiseForce(self.masses.float(), width=width, depth=2, softening_init=0.3,
                             strength_init=0.0)

    def score_net(self, width: int, depth: int, spectral: bool = True,
                  physics: str = "true") -> nn.Module:
        mask = torch.tensor([1.0, 1.0, 1.0, 1.0] if physics == "none" else [0.0, 0.0, 1.0, 1.0])
        return SetScoreNet(4, self.masses.float(), t_max=self.meta.t_final,
                           out_scale=1 / (self.meta.g * math.sqrt(self.meta.dt)),
                           out_mask=mask, width=width, depth=depth)

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A random rotation (and reflection) of the whole system, the same for the batch."""
        u = torch.rand(2, generator=generator, dtype=torch.float64)
        angle = 2 * math.pi * float(u[0])
        c, s = math.cos(angle), math.sin(angle)
        rot = torch.tensor([[c, -s], [s, c]], dtype=x.dtype)
        if u[1] < 0.5:
            rot = rot @ torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=x.dtype)
        pos, vel = x[..., :2] @ rot.T, x[..., 2:] @ rot.T
        return torch.cat([pos, vel], dim=-1)

    def calibrate(self, drift_for: Callable[[None], Drift], trajectories: Tensor,
                  condition: None = None) -> Tensor:
        """Per-step, per-component variance of the one-step residual, (K, N, 4)."""
        return residual_power(drift_for(None), trajectories, self.meta.times(),
                              self.meta.dt).float()

    def noise(self, calibration_: Tensor | None, condition: None = None) -> Noise:
        """Calibrated diagonal noise, or the SDE's own g √dt z on the velocities."""
        if calibration_ is not None:
            return diagonal_noise(calibration_)
        scale = self.meta.g * math.sqrt(self.meta.dt)

        def white(x: Tensor, i: int, generator: torch.Generator | None) -> Tensor:
            z = randn_like(x, generator)
            return torch.cat([torch.zeros_like(z[..., :2]), scale * z[..., 2:]], dim=-1)

        return white

    def end_state_score(self, model: Any, condition: None = None) -> Drift:
        """∇log p_T for the partial-observation sampler: on velocities, where the forward noise
        acts (g √dt on each velocity), Tweedie's (S(m_θ(x))_v − v) / (g² dt) from the learned
        reverse step (exact up to S's curvature over one step's spread); on positions, which the
        noise does not reach, no score (flat: the position likelihood is far sharper)."""
        tweedie = tweedie_score(self.step, model.drift(c=1.0), self.meta.dt, self.meta.g)

        def score(x: Tensor, t: Tensor) -> Tensor:
            s = tweedie(x, t)
            return torch.cat([torch.zeros_like(s[..., :2]), s[..., 2:]], dim=-1)

        return score

    def evaluate(self, truth: Tensor, x_T: Tensor, *, samples: Tensor | None = None,
                 point: Tensor | None = None, condition: None = None, exact: Any = None,
                 paths: Tensor | None = None, index: int = 0) -> dict[str, Any]:
        """Metrics of posterior samples (B, n, N, 4) and/or a point estimate (B, N, 4) against
        the truth x_0 (B, N, 4), observed as x_T. Position MSE is the headline (issue 4); SBC and
        coverage treat every coordinate (positions and velocities of every body) as a parameter.
        SBC p-values: `sbc_p` pools every coordinate's rank into one χ² test (coordinates of one
        case are correlated, so it is conservative: too small); `sbc_p_per_coord_bonferroni`
        tests each coordinate over the independent cases and corrects for their number.
        `paths` (B, K + 1, N, 4), reverse paths in forward time order, adds energy and momentum
        changes along them. Reconstructions of x_0 only (index 0)."""
        x_0 = truth
        out: dict[str, Any] = {}
        m = self.masses.to(x_0)
        if point is not None:
            out["mse_pos"] = metrics.mse(point[..., :2], x_0[..., :2])
            out["mse"] = metrics.mse(point, x_0)
            out["resim_dist"] = _dist(self.forward_noise_free(point), x_T)
        if samples is not None:
            truth = x_0[:, None].expand_as(samples)
            out["mse_pos_per_sample"] = metrics.mse(samples[..., :2], truth[..., :2])
            out["mse_pos_of_mean"] = metrics.mse(samples.mean(1)[..., :2], x_0[..., :2])
            out["mse_per_sample"] = metrics.mse(samples, truth)
            out["spread_pos"] = samples[..., :2].std(1).mean().item()
            flat, flat_truth = samples.flatten(2).double(), x_0.flatten(1).double()
            n = samples.shape[1]
            ranks = calibration.sbc_ranks(flat, flat_truth, torch.Generator().manual_seed(0))
            for level in (0.5, 0.9):  # order-statistic intervals: nominal exact (n = 19: 0.5, 0.9)
                cov, nominal = calibration.rank_coverage(ranks, n, level)
                out[f"coverage{round(level * 100)}"] = cov
                out[f"coverage{round(level * 100)}_nominal"] = nominal
            if any((n + 1) % b == 0 for b in range(2, 21)):  # χ² needs equal-width rank bins
                out["sbc_chi2"], out["sbc_p"] = calibration.chi2_uniformity(ranks, n)
                # one test per coordinate (cases are independent), Bonferroni over coordinates
                per_coord = [calibration.chi2_uniformity(ranks[:, d], n)[1]
                             for d in range(ranks.shape[1])]
                out["sbc_p_per_coord_bonferroni"] = min(1.0, len(per_coord) * min(per_coord))
            out["sbc_ks"], out["sbc_ks_p"] = calibration.ks_uniformity(
                ranks, n, torch.Generator().manual_seed(1))
            out["resim_dist"] = _dist(self.forward_noise_free(samples), x_T[:, None])
        if paths is not None:
            energy = nbody.energy(paths.double(), m.double(), self.softening)
            mom = nbody.momentum(paths.double(), m.double())
            out["energy_change"] = (energy - energy[:, -1:]).abs().mean().item()
            out["momentum_change"] = (mom - mom[:, -1:]).norm(dim=-1).mean().item()
        return out

    def evaluate_reference(self, truth: Tensor, x_T: Tensor, trajectories: Tensor
                           ) -> dict[str, Any]:
        """The data's own trajectories as the reference for energy / momentum changes."""
        return self.evaluate(truth, x_T, point=truth, paths=trajectories)

    # ----------------------------------------------------------------- data generation
    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--bodies", type=positive(int), default=5)
        group.add_argument("--masses", default="equal",
                           help="'equal' (1/N each) or a comma list of N positive masses")
        group.add_argument("--softening", type=positive(float), default=0.1,
                           help="Plummer softening")
        group.add_argument("--substeps", type=positive(int), default=10,
                           help="leapfrog substeps per step")
        group.add_argument("--radius", type=positive(float), default=1.0,
                           help="prior disk radius")
        group.add_argument("--velocity-scale", type=non_negative(float), default=0.3,
                           help="prior velocity std per component")

    @classmethod
    def generate(cls, args: argparse.Namespace, system_id: str, version: str) -> None:
        """Positions uniform in a disk, Gaussian velocities, centre of mass at rest at the
        origin; leapfrog with `substeps` substeps per step and velocity kicks g √dt z; raw
        units (normalisation 0 / 1). Each trajectory draws its initial state, then its kicks,
        from its own generator (`simulation_generator`); made in parts of CHUNK trajectories
        (shards, resume, join: physdiff/systems/generation.py)."""
        masses = parse_masses(args.masses, args.bodies)
        dt = args.t_final / args.steps
        m = torch.tensor(masses, dtype=torch.float64)
        params = {"bodies": args.bodies, "masses": masses, "softening": args.softening,
                  "substeps": args.substeps, "radius": args.radius,
                  "velocity_scale": args.velocity_scale, "t_final": args.t_final, "G": 1.0,
                  "integrator": "leapfrog (kick-drift-kick)",
                  "noise": "velocity kicks g sqrt(dt) z", "seeding": "per trajectory"}
        counts = dict(zip(SPLITS, (args.n_train, args.n_valid, args.n_test), strict=True))
        metas = {split: Metadata(simulator=system_id, dt=dt, g=args.g, n_steps=args.steps,
                                 seed=args.seed, split=split, norm_mean=0.0, norm_std=1.0,
                                 version=version, params=params) for split in SPLITS}
        acceleration = nbody.gravity(m, args.softening)
        scale = args.g * math.sqrt(dt)

        def simulate(part: Part) -> tuple[Tensor, dict[str, Tensor]]:
            gens = part.generators(args.seed)
            x = torch.cat([nbody.sample_prior(1, args.bodies, m, gen, radius=args.radius,
                                              velocity_scale=args.velocity_scale)
                           for gen in gens])  # (n, N, 4), float64
            states = [x]
            for _ in range(args.steps):
                x = nbody.leapfrog(x, dt, acceleration, args.substeps)
                kick = scale * randn_per_simulation(gens, (args.bodies, 2))
                x = torch.cat([x[..., :2], x[..., 2:] + kick], dim=-1)
                states.append(x)
            return torch.stack(states, dim=1).float(), {}

        generate_in_parts(args.out, metas, counts, (args.bodies, 4), simulate, CHUNK,
                          args.shard, args.join,
                          label="nbody", blowup=" (the integration blew up: reduce --t-final, "
                          "or raise --substeps or --softening)")

    # ----------------------------------------------------------------- figures
    def figures(self, out: Path, result: InferenceResult) -> list[str]:
        """posterior.png (observed bodies, true x_0, posterior clouds, reverse paths) and, when
        the truth is known, sbc_ranks.png (rank histogram over every coordinate)."""
        x_T, samples = result.x_T.cpu(), result.samples["0"].cpu()
        truth = None if result.truth is None else result.truth["0"].cpu()
        paths = result.paths.cpu() if result.paths is not None else None
        k = min(4, x_T.shape[0])
        plots.nbody_posterior(out / "posterior.png", x_T[:k], samples[:k],
                              None if truth is None else truth[:k],
                              None if paths is None else paths[:k])
        if truth is None:
            return ["posterior.png"]
        n = samples.shape[1]
        ranks = calibration.sbc_ranks(samples.flatten(2).double(), truth.flatten(1).double(),
                                      torch.Generator().manual_seed(0))
        n_bins = n + 1 if n < 40 else max(d for d in range(1, 41) if (n + 1) % d == 0)
        plots.rank_histogram(out / "sbc_ranks.png", calibration.rank_histogram(ranks, n, n_bins),
                             n, f"SBC: {ranks.shape[0]} cases x {ranks.shape[1]} coordinates")
        return ["posterior.png", "sbc_ranks.png"]


def parse_masses(text: str, n_bodies: int) -> list[float]:
    """'equal' -> 1/N each, or a comma list of N positive finite masses."""
    if text == "equal":
        return [1.0 / n_bodies] * n_bodies
    try:
        masses = [float(m) for m in text.split(",")]
    except ValueError:
        masses = []
    if len(masses) != n_bodies or not all(m > 0 and math.isfinite(m) for m in masses):
        raise UsageError(f"--masses {text!r}: expected 'equal' or {n_bodies} positive numbers "
                         "(one per body, --bodies)")
    return masses


def _dist(x: Tensor, y: Tensor) -> float:
    """Mean over bodies of the Euclidean distance between positions."""
    return (x[..., :2].double() - y[..., :2].double()).norm(dim=-1).mean().item()
