"""The System interface: everything the generic pipelines (generate / train / infer, the library
API) ask of a physical system. One subclass per system; a new system is new files only.

A System instance is bound to one dataset's metadata and state shape. Methods take an optional
per-trajectory *condition* (e.g. obstacle geometry (B, n, 5); None for systems that need
nothing besides the state): the pipelines extract it once with `condition(extras, source)` and
pass it, batch by batch, to the drift, the score, the noise and the metrics.

What a subclass must provide: `name`, `score_net`, `physics_drift` (at least kind 'true'),
`calibrate`, `noise`, `evaluate`, and, to make datasets, `add_arguments` and `generate`.
Everything else has a default that fits a system without condition, exact posterior or figures.
See docs/method.md §2-§5 for the maths and examples/burgers/ for a complete plug-in.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from physdiff.data import Metadata
from physdiff.samplers import Noise
from physdiff.sde import Drift

__all__ = ["InferenceResult", "System", "zero_drift"]


def zero_drift(x: Tensor, t: Tensor) -> Tensor:
    """The drift of `--physics none`: no physics, the network alone learns the reverse step."""
    return torch.zeros_like(x)


@dataclass
class InferenceResult:
    """What infer computed, handed to `System.figures`.

    Per report label (see `System.report_times`): samples (M, n, *state), ode and mean_path
    (M, *state), truth (M, *state) when known. `trajectories` (M, K + 1, *state) are the data's
    own trajectories when observations come from a dataset split; `paths` (M, n, K + 1, *state)
    the reverse SDE paths in forward time order when the system keeps them.
    """

    model: Any  # physdiff.model.Model
    x_T: Tensor
    condition: Tensor | None
    samples: dict[str, Tensor]
    ode: dict[str, Tensor]
    mean_path: dict[str, Tensor]
    truth: dict[str, Tensor] | None = None
    trajectories: Tensor | None = None
    paths: Tensor | None = None
    exact: Any = None
    exact_samples: Tensor | None = None
    ode_distance: Tensor | None = None  # (M,) PF-ODE point's distance over the samples' spread
    noise: str = "calibrated"
    seed: int = 0
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class System:
    """A physical system as physdiff sees it; subclass per system (see the module docstring)."""

    meta: Metadata
    state_shape: tuple[int, ...]

    name: ClassVar[str] = ""
    physics_kinds: ClassVar[tuple[str, ...]] = ("true", "none")
    # infer.py's defaults: posterior samples per observation, samples integrated at once, and
    # whether the reverse paths are stored (small states only)
    default_samples: ClassVar[int] = 16
    default_batch_size: ClassVar[int] = 512
    keep_paths: ClassVar[bool] = False
    # Langevin steps of the x_T | y chains for partial observations (infer.py --langevin-steps)
    default_langevin_steps: ClassVar[int] = 2000
    # train.py --preset NAME: flag defaults tuned for this system (besides the generic 'tiny')
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # generate.py's defaults for the flags every system has: --t-final, --steps, --g
    generate_defaults: ClassVar[dict[str, float | int]] = {"t_final": 1.0, "steps": 20, "g": 0.1}

    # ----------------------------------------------------------------- data generation
    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        """Add the system's own generate.py flags (its physics parameters) to `group`."""

    @classmethod
    def generate(cls, args: argparse.Namespace, system_id: str, version: str) -> None:
        """Write args.out/{train,valid,test}.h5 (physdiff.data.write) with Metadata whose
        `simulator` is `system_id`, keeping splits that are already up to date.

        `args` holds the flags every system has: out (Path), n_train, n_valid, n_test (ints
        >= 1, n_train >= 2), t_final (> 0), steps (int > 0), g (>= 0), seed (int), shard
        ((I, N) or None) and join (bool) for generation in parts (generation.py), with
        `generate_defaults` filled in, plus the system's own flags from `add_arguments`.
        Check parameters and raise UsageError before writing anything."""
        raise NotImplementedError(f"system '{cls.name}' cannot generate data")

    # ----------------------------------------------------------------- physics and networks
    def condition(self, extras: dict[str, Tensor], source: str) -> Tensor | None:
        """What the drift needs besides the state, from a file's per-trajectory arrays
        (`source` names the file in errors); None for a system that needs nothing."""
        return None

    def physics_drift(self, kind: str = "true", physics_net: nn.Module | None = None,
                      condition: Tensor | None = None) -> Drift:
        """The physics drift P whose explicit reverse Euler step is the approximate inverse P̃⁻¹
        (docs/method.md §2); kind 'none' is the zero drift."""
        if kind == "none":
            return zero_drift
        raise ValueError(f"--physics {kind}: {self.name} supports {', '.join(self.physics_kinds)}")

    def step(self, x: Tensor) -> Tensor:
        """The noise-free forward step S_dt, (B, *state) -> (B, *state), for systems without
        a condition (a system with one has its own signature)."""
        raise NotImplementedError(f"system '{self.name}' has no unconditioned step")

    def forward_noise_free(self, x_0: Tensor) -> Tensor:
        """S_T(x_0): `step` applied n_steps times, for re-simulation metrics; systems with a
        closed-form map to T override it."""
        x = x_0
        for _ in range(self.meta.n_steps):
            x = self.step(x)
        return x

    def physics_net(self, width: int) -> nn.Module:
        """A network P_φ for `--physics learned`."""
        raise ValueError(f"--physics learned: not available for {self.name}")

    def forward_step(self, physics_net: nn.Module) -> Callable[[Tensor], Tensor]:
        """The learned forward step S_φ, for the anchoring loss of `--physics learned`."""
        raise ValueError(f"--physics learned: not available for {self.name}")

    def score_net(self, width: int, depth: int, spectral: bool = True,
                  physics: str = "true") -> nn.Module:
        """A fresh score network s_θ for this state shape."""
        raise NotImplementedError

    def score_fn(self, net: nn.Module, condition: Tensor | None = None) -> Drift:
        """The score network as a drift (x, t) -> s, bound to a batch's condition."""
        return net

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """A random symmetry of the system applied to windows (B, S + 1, *state); none here."""
        return x

    def calibrate(self, drift_for: Callable[[Tensor | None], Drift], trajectories: Tensor,
                  condition: Tensor | None = None) -> Tensor:
        """The reverse-step noise calibration (docs/method.md §5) from training trajectories
        (N, K + 1, *state); `drift_for(condition)` is the trained c = 1 reverse drift."""
        raise NotImplementedError

    def noise(self, calibration: Tensor | None, condition: Tensor | None = None) -> Noise | None:
        """Reverse-step noise from the calibration, or (calibration None) the textbook g √dt z;
        None means the sampler's own white noise."""
        return None

    def flow_correction(self, drift_for: Callable[[Tensor | None], Drift],
                        trajectories: Tensor, condition: Tensor | None = None) -> Tensor | None:
        """A correction of the learned reverse step for the probability-flow ODE, fitted on
        training trajectories (N, K + 1, *state) with the c = 1 drift of the networks the flow
        uses, or None (default: none). `corrected_flow_score` applies it."""
        return None

    def corrected_flow_score(self, score: Drift, correction: Tensor) -> Drift:
        """The flow's score with the `flow_correction` applied (systems that give one)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- inference and report
    def report_times(self) -> dict[str, int]:
        """Reconstructed times: label -> forward time index; the first is the headline."""
        return {"0": 0}

    def exact_posterior(self, x_T: Tensor) -> Any:
        """p(x_0 | x_T) in closed form (an object with mean, variance, sample(n, gen)), or None."""
        return None

    def exact_observed_posterior(self, operator: Any, y: Tensor, sigma: Tensor) -> Any:
        """p(x_0 | y) in closed form for y = A(x_T) + σ_y ε (an object with mean (M, *field),
        per-mode variance and sample(n, gen) as `exact_posterior`'s), or None.

        Arguments:
            operator: A (a physdiff.observations.Operator).
            y: Observations (M, *obs).
            sigma: σ_y broadcasting against one observation (as `check_observed` returns it).
        """
        return None

    def end_state_preconditioner(self, model: Any, operator: Any, sigma: Tensor
                                 ) -> Callable[[Tensor], Tensor] | None:
        """A symmetric positive linear map R (B, *state) -> (B, *state) with R² close to the
        covariance of p(x_T | y), for the Langevin sampler of physdiff.conditioning; None for
        none (plain Langevin). Arguments as in `exact_observed_posterior`, `model` the loaded
        physdiff.model.Model.

        Default: the diagonal R² = 1 / (1 / var + diag(Aᵀ A) / σ_y²) from the per-coordinate
        variance of the training end states (`end_state_statistics`), with diag(AᵀA) by
        Hutchinson's estimator over 16 fixed Rademacher probes (exact for a mask); None when the
        checkpoint has no such variance."""
        stats = getattr(model, "end_state", None)
        if not stats or "variance" not in stats:
            return None
        variance = stats["variance"].to(torch.float64)
        probes = torch.randint(0, 2, (16, *variance.shape),
                               generator=torch.Generator().manual_seed(0)).double() * 2 - 1
        with torch.enable_grad():
            z = probes.clone().requires_grad_(True)
            residual = operator(z) / sigma.to(torch.float64)
            (ata_z,) = torch.autograd.grad(residual, z, grad_outputs=residual)
        precision = (probes * ata_z).mean(0).clamp_min(0)
        scale = (1 / (1 / variance.clamp_min(1e-12) + precision)).sqrt()

        def apply(v: Tensor) -> Tensor:
            return v * scale.to(device=v.device, dtype=v.dtype)

        return apply

    def end_state_statistics(self, x_T: Tensor) -> dict[str, Tensor] | None:
        """Statistics of training end states (N, *state) that train.py stores in the checkpoint
        (`Model.end_state`) for the partial-observation sampler. Default: the per-coordinate
        mean and variance. Fields on a periodic grid add {'spectrum': (C, H, W)} with a scalar
        mean per channel (`physdiff.gaussian_start`)."""
        x = x_T.to(torch.float64)
        return {"mean": x.mean(0).float().cpu(), "variance": x.var(0).float().cpu()}

    def end_state_gaussian(self, model: Any) -> tuple[Tensor, Tensor] | None:
        """(mean, spectrum) of a stationary Gaussian approximation of p_T to start the end-state
        chains at exact draws of its conditional (`physdiff.gaussian_start`), or None."""
        stats = getattr(model, "end_state", None)
        if not stats or "spectrum" not in stats:
            return None
        return stats["mean"], stats["spectrum"]

    def end_state_score(self, model: Any, condition: Tensor | None = None) -> Drift | None:
        """∇log p_T as a drift (x, t) -> score for the end-state sampler of partial
        observations, or None to use s_θ(·, T) itself. A system whose forward noise is additive,
        white and of scale g on every component, with a linear (or nearly linear) step, returns
        `physdiff.sde.tweedie_score(step, model.drift(c=1.0, condition=...), dt, g)`."""
        return None

    def evaluate(self, truth: Tensor, x_T: Tensor, *, samples: Tensor | None = None,
                 point: Tensor | None = None, condition: Tensor | None = None,
                 exact: Any = None, paths: Tensor | None = None, index: int = 0
                 ) -> dict[str, Any]:
        """Metrics of posterior samples (B, n, *state) or a point estimate (B, *state) of the
        state at forward time index `index` against the truth there (B, *state), given the
        observed x_T (B, *state). `exact`: the exact posterior where one exists; `paths`
        (B', K + 1, *state): reverse paths in forward time order, for path metrics."""
        raise NotImplementedError

    def evaluate_reference(self, truth: Tensor, x_T: Tensor, trajectories: Tensor
                           ) -> dict[str, Any] | None:
        """Metrics of the data's own trajectories, printed as the reference row, or None."""
        return None

    def figures(self, out: Path, result: InferenceResult) -> list[str]:
        """Write figures of an inference result into `out`; return the file names written."""
        return []
