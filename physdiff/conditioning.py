"""Posterior sampling from partial, noisy observations y = A(x_T) + σ_y ε (docs/method.md §6).

y depends on x_0 only through x_T, so p(x_0 | y) = ∫ p(x_0 | x_T) p(x_T | y) dx_T, sampled in two
stages: draw x_T ~ p(x_T | y) ∝ p(y | x_T) p_T(x_T) by Langevin dynamics on the score
s_θ(x, T) + ∇log p(y | x) (`sample_end_states`), then run the reverse SDE from each draw
(`sample_posterior_observed`). y observes x_T itself, so the likelihood is exact at T and, unlike
diffusion posterior sampling, nothing is approximated at intermediate times.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from physdiff.gaussian_start import (
    diagonal_conditional_draws,
    fourier_multiplier,
    gaussian_conditional_draws,
)
from physdiff.model import Model, sample_posterior
from physdiff.observations import Identity, Operator, as_operator, check_observed
from physdiff.observations import likelihood_score as _likelihood_score
from physdiff.samplers import randn_like, repeat_samples
from physdiff.sde import expand_like

__all__ = ["Diagnostics", "fourier_preconditioner", "sample_end_states", "sample_posterior_observed", "split_rhat"]

Score = Callable[[Tensor], Tensor]  # x: (B, *state) -> ∇log p(x): (B, *state)
STATISTICS = ("mean", "norm", "misfit")


@dataclass(frozen=True)
class Diagnostics:
    """Convergence of the end-state chains, per observation.

    rhat: split-R̂ (M, 3) of the per-chain traces of `statistics` over the kept (post burn-in)
        steps: the state's mean over components, its norm, and the misfit
        ‖(y − A(x)) / σ_y‖² / numel(y). Values near 1 (< 1.01–1.05) mean the chains agree.
    step_size: The Langevin step ε (M,) of the sampling phase.
    curvature: The estimated largest curvature q_max of −log p(x_T | y) (M,), ε = factor / q_max.
    """

    rhat: Tensor
    step_size: Tensor
    curvature: Tensor
    statistics: tuple[str, ...] = STATISTICS

    @property
    def max_rhat(self) -> float:
        return float(self.rhat.max())


def split_rhat(traces: Tensor) -> Tensor:
    """Split-R̂ of traces (..., chains, draws) -> (...).

    Each chain is cut in two halves of L draws; with W the mean within-half variance and B/L the
    variance of the half means, R̂ = √(((L − 1)/L · W + B/L) / W). Constant traces give 1.

    References:
        Gelman et al. (2013), Bayesian Data Analysis, 3rd ed., §11.4;
        Vehtari et al. (2021), Rank-normalization, folding, and localization: an improved R̂,
        Bayesian Analysis 16(2).
    """
    half = traces.shape[-1] // 2
    if half < 2:
        raise ValueError(f"split-R̂ needs at least 4 draws per chain, got {traces.shape[-1]}")
    chains = torch.cat([traces[..., :half], traces[..., half:2 * half]], dim=-2)
    within = chains.var(-1).mean(-1)
    between = half * chains.mean(-1).var(-1)
    pooled = (half - 1) / half * within + between / half
    return torch.where(within > 0, (pooled / within.clamp_min(1e-300)).sqrt(),
                       torch.ones_like(within))


def fourier_preconditioner(spectrum: Tensor) -> Score:
    """R: x ↦ Re ifft2(√(D / HW) · fft2(x)) over the last two dims, for a spectrum D (H, W) in
    unnormalised fft2 units (E|x̂_k|², as in simulators/heat.py); R² is the stationary covariance
    with that spectrum.

    For Langevin on p(x_T | y) of a periodic field, a good choice is the spectrum of the Gaussian
    whose precision is the prior's plus the likelihood's averaged over pixels,
    D_k = HW / (HW / S_k + ρ / σ_y²), with S_k the spectrum of p_T (e.g. E|x̂_T|² of training data)
    and ρ the observed fraction of pixels: on 8×8 heat with a 25 % mask and σ_y = 0.05 it lowers
    the condition number of the target from about 1500 to about 100.
    """
    return fourier_multiplier(spectrum, 0.5)


def _largest_curvature(score: Score, x: Tensor, precondition: Score, iterations: int,
                       generator: torch.Generator | None) -> Tensor:
    """Power iteration for the largest |eigenvalue| of −R ∇s(x) R per row of x (B, *) -> (B,),
    with Hessian-vector products by finite differences of the score (one extra score call per
    iteration; exact for a Gaussian target)."""
    flat = x.flatten(1)
    # a displacement far above round-off yet small against the state's scale
    rel = 1e-3 if x.dtype in (torch.float32, torch.float16, torch.bfloat16) else 1e-6
    size = rel * (flat.norm(dim=1) + math.sqrt(flat.shape[1]))
    s_0 = score(x)
    v = randn_like(x, generator)
    q = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for _ in range(iterations):
        v = v / expand_like(v.flatten(1).norm(dim=1).clamp_min(1e-30), v)
        step = expand_like(size, x) * precondition(v)
        hv = -precondition(score(x + step) - s_0) / expand_like(size, x)
        q = hv.flatten(1).norm(dim=1)
        v = hv
    return q


def _leimkuhler_matthews(score: Score, x: Tensor, eps: Tensor, steps: int,
                         precondition: Score, generator: torch.Generator | None,
                         record: Callable[[Tensor, int], None] | None = None) -> Tensor:
    """steps of x ← x + ε R² s(x) + √(ε/2) R (ξ_j + ξ_{j+1}); eps (B,) per row."""
    e = expand_like(eps, x)
    xi = randn_like(x, generator)
    for j in range(steps):
        xi_next = randn_like(x, generator)
        x = x + precondition(e * precondition(score(x)) + (e / 2).sqrt() * (xi + xi_next))
        xi = xi_next
        if record is not None:
            record(x, j)
    return x


def sample_end_states(
    prior_score: Score,
    operator: Operator | Callable[[Tensor], Tensor] | None,
    y: Tensor,
    sigma: float | Tensor,
    n: int,
    generator: torch.Generator | None = None,
    steps: int = 2000,
    *,
    state_shape: Sequence[int] | None = None,
    init: Tensor | None = None,
    init_scale: float = 1.0,
    step_factor: float = 0.5,
    burn_in: float = 0.5,
    precondition: Score | None = None,
    power_iterations: int = 30,
) -> tuple[Tensor, Diagnostics]:
    r"""n draws of x_T ~ p(x_T | y) ∝ p(y | x_T) p_T(x_T) per observation, from n chains.

    The target's score is s(x) = prior_score(x) + J_A(x)ᵀ (y − A(x)) / σ_y² (docs/method.md §6).
    Each chain runs the Leimkuhler–Matthews discretisation of overdamped Langevin dynamics,

        x_{j+1} = x_j + ε R² s(x_j) + √(ε/2) R (ξ_j + ξ_{j+1}),   ξ_j ~ N(0, I),

    with an optional symmetric positive preconditioner R (default I), and returns its final state.

    Why this sampler:
      - No Metropolis correction (MALA): its accept ratio needs log p_T, and a score network
        gives only the gradient. So the sampler must be unadjusted and its bias small by itself.
      - Leimkuhler–Matthews instead of Euler–Maruyama (ULA) at the same cost (one score call per
        step): for a Gaussian target its invariant law is exact for every stable step (εq < 2
        for every curvature q), where ULA inflates the variance along curvature q by
        1 / (1 − εq/2); for smooth non-Gaussian targets its bias is O(ε²) instead of O(ε).
        p(x_T | y) is exactly Gaussian for heat with linear A and nearly so when p_T is.
      - Step size from the target itself: ε = step_factor / q_max, with q_max the largest
        curvature of −log p(x_T | y) estimated by power iteration on finite differences of the
        score, per observation (the largest over its chains). It covers both the stiffness of
        the prior score (high modes that the physics contracts) and that of the likelihood,
        ‖A‖² / σ_y², which grows as σ_y → 0. It is estimated at the start and again after the
        burn-in, where the chains are typical.
      - Several independent chains from an over-dispersed start (`init` + init_scale · N(0, I))
        make split-R̂ meaningful, and their final states are independent draws.
    The cost is the condition number: the slowest direction (curvature q_min) relaxes by
    ε q_min = step_factor · q_min / q_max per step, so `steps` must be several times
    q_max / (step_factor · q_min); R̂ tells when it was not. A preconditioner R ≈ Σ^{1/2} of the
    target removes that factor (for heat: a Fourier multiplier).

    Arguments:
        prior_score: ∇log p_T, e.g. s_θ(·, T); (B, *state) -> (B, *state).
        operator: A (an `Operator`, a callable (B, *state) -> (B, *obs), or None for Identity).
        y: Observations, shape (M, *obs).
        sigma: σ_y: scalar, per observed channel, or broadcasting to *obs; σ_y = 0 only with
            Identity (then every draw is y and nothing is run).
        n: Chains (= draws) per observation.
        steps: Langevin steps per chain; the first `burn_in` fraction is discarded for R̂.
            0 with an `init` and init_scale = 0 returns the start draws as they are.
        state_shape: The state's shape; needed when the operator does not imply it.
        init: Start states (M, *state) or (M, n, *state); default zeros. init_scale · N(0, I) is
            added to spread the chains.
        step_factor: ε q_max, below 2 (the stability limit for a Gaussian target).
        precondition: R, a symmetric positive linear map (B, *state) -> (B, *state).

    Returns:
        Draws of x_T, shape (M, n, *state), in y's dtype, and the `Diagnostics`.

    References:
        B. Leimkuhler, C. Matthews (2013), Rational construction of stochastic numerical methods
        for molecular sampling, Appl. Math. Res. Express 2013(1), 34–56.
    """
    operator = as_operator(operator)
    if state_shape is None:
        state_shape = operator.state_shape(tuple(y.shape[1:]))
        if state_shape is None:
            raise ValueError(f"{operator!r} does not imply the state's shape: pass state_shape")
    state_shape = tuple(state_shape)
    sig = check_observed(operator, y, sigma, state_shape)
    if steps == 0 and init is not None and init_scale == 0:
        return _start_draws(y, n, state_shape, init, generator)
    _check_settings(n, steps, step_factor, burn_in)
    if isinstance(operator, Identity) and (sig == 0).all():
        return _observed_exactly(y, n)
    precondition = precondition if precondition is not None else (lambda v: v)
    x = _start_states(y, n, state_shape, init, init_scale, generator)
    return _run_chains(prior_score, operator, y, sig, x, generator, steps, step_factor, burn_in,
                       precondition, power_iterations)


def _start_draws(y: Tensor, n: int, state_shape: tuple[int, ...], init: Tensor,
                 generator: torch.Generator | None) -> tuple[Tensor, Diagnostics]:
    """The start draws themselves (e.g. exact draws of a Gaussian approximation's conditional,
    physdiff/gaussian_start.py): no chain ran, so R̂ and ε are NaN."""
    m = y.shape[0]
    draws = _start_states(y, n, state_shape, init, 0.0, generator)
    nan = torch.full((m,), math.nan)
    return (draws.reshape(m, n, *state_shape),
            Diagnostics(torch.full((m, len(STATISTICS)), math.nan), nan, nan))


def _observed_exactly(y: Tensor, n: int) -> tuple[Tensor, Diagnostics]:
    """Every draw is y itself (a noiseless Identity observation)."""
    m = y.shape[0]
    draws = y[:, None].expand(m, n, *y.shape[1:]).clone()
    ones, zeros = torch.ones(m, len(STATISTICS)), torch.zeros(m)
    return draws, Diagnostics(ones, zeros, torch.full((m,), math.inf))


def _run_chains(prior_score: Score, operator: Operator, y: Tensor, sig: Tensor, x: Tensor,
                generator: torch.Generator | None, steps: int, step_factor: float,
                burn_in: float, precondition: Score, power_iterations: int
                ) -> tuple[Tensor, Diagnostics]:
    """Run the n chains per observation from their start states x (M·n, *state): burn-in, a new
    step size, then the kept steps with R̂ traces (`sample_end_states`)."""
    m, n = y.shape[0], x.shape[0] // y.shape[0]
    y_rep = repeat_samples(y, n)
    likelihood = _likelihood_score(operator, y_rep, sig)

    def score(x: Tensor) -> Tensor:
        return prior_score(x) + likelihood(x)

    def step_size(x: Tensor) -> tuple[Tensor, Tensor]:
        q = _largest_curvature(score, x, precondition, power_iterations, generator)
        q = q.reshape(m, n).amax(1)
        if not torch.isfinite(q).all() or (q <= 0).any():
            raise ValueError("the target's curvature is not finite and positive: check the "
                             "prior score and the operator")
        return step_factor / q, q

    kept = steps - int(burn_in * steps)
    eps, _ = step_size(x)
    x = _leimkuhler_matthews(score, x, repeat_samples(eps, n), steps - kept, precondition,
                             generator)
    _check_finite(x, step_factor)
    eps, q = step_size(x)

    thin = max(1, kept // 512)  # R̂ needs some hundreds of draws, not every step
    traces: list[Tensor] = []

    def record(x: Tensor, j: int) -> None:
        if (kept - 1 - j) % thin == 0:
            residual = (y_rep - operator(x)) / sig.to(device=x.device, dtype=x.dtype)
            flat = x.flatten(1)
            traces.append(torch.stack([flat.mean(1), flat.norm(dim=1),
                                       residual.flatten(1).square().mean(1)], dim=-1))

    x = _leimkuhler_matthews(score, x, repeat_samples(eps, n), kept, precondition, generator,
                             record)
    _check_finite(x, step_factor)
    stats = torch.stack(traces, dim=-1).reshape(m, n, len(STATISTICS), -1)
    rhat = split_rhat(stats.transpose(1, 2).double()).to(y.dtype)
    return x.reshape(m, n, *x.shape[1:]), Diagnostics(rhat, eps, q)


def _check_settings(n: int, steps: int, step_factor: float, burn_in: float) -> None:
    """One-line errors for sampler settings that cannot work."""
    if n < 1 or steps < 8:
        raise ValueError(f"n = {n}, steps = {steps}: expected n >= 1 and steps >= 8")
    if not 0 < step_factor < 2:
        raise ValueError(f"step_factor {step_factor}: expected 0 < step_factor < 2")
    if not 0 <= burn_in < 1:
        raise ValueError(f"burn_in {burn_in}: expected 0 <= burn_in < 1")
    kept = steps - int(burn_in * steps)
    if kept < 4:
        raise ValueError(f"steps = {steps} with burn_in = {burn_in} keep {kept} < 4 steps")


def _start_states(y: Tensor, n: int, state_shape: tuple[int, ...], init: Tensor | None,
                  init_scale: float, generator: torch.Generator | None) -> Tensor:
    """The chains' start: `init` ((M, *state) or (M, n, *state); zeros if None) plus
    init_scale · N(0, I), flattened to (M·n, *state)."""
    m = y.shape[0]
    x = torch.zeros((m * n, *state_shape), dtype=y.dtype, device=y.device)
    if init is not None:
        init = init.to(device=y.device, dtype=y.dtype)
        if tuple(init.shape) == (m, *state_shape):
            init = repeat_samples(init, n)
        elif tuple(init.shape) == (m, n, *state_shape):
            init = init.reshape(m * n, *state_shape)
        else:
            raise ValueError(f"init has shape {tuple(init.shape)}, expected {(m, *state_shape)} "
                             f"or {(m, n, *state_shape)}")
        x = x + init
    return x + init_scale * randn_like(x, generator)


def _check_finite(x: Tensor, step_factor: float) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"the end-state chains diverged (step_factor {step_factor}): lower it "
                         "or pass a preconditioner")


def _system_defaults(model: Model, op: Operator, y: Tensor, sigma: float | Tensor, n: int,
                     generator: torch.Generator, langevin: dict[str, Any],
                     spread: float = 0.1) -> dict[str, Any]:
    """The system's preconditioner and chain start where the caller gave none (linear A):
    exact draws of a stationary Gaussian's conditional (fields), else draws of the training
    end states' per-coordinate Gaussian's conditional with the prior deviation scaled by
    `spread` (1: exact draws of that conditional)."""
    state_shape = tuple(model.system.state_shape)
    sig = check_observed(op, y, sigma, state_shape).to(y.device)
    out = dict(langevin)
    if "precondition" not in out:
        out["precondition"] = model.system.end_state_preconditioner(model, op, sig.cpu())
    if "init" in out:
        return out
    start = model.system.end_state_gaussian(model)
    stats = model.end_state or {}
    if start is not None and op.linear:  # docs/method.md §6, the Gaussian start
        mean, spectrum = (v.to(y.device) for v in start)
        out["init"], _ = gaussian_conditional_draws(mean, spectrum, op, y, sig, n, generator)
        out.setdefault("init_scale", 0.0)
    elif "variance" in stats and op.linear:
        out["init"], _ = diagonal_conditional_draws(stats["mean"], stats["variance"], op, y,
                                                    sig, n, generator, spread=spread)
        out.setdefault("init_scale", 0.0)
    return out


@torch.no_grad()
def sample_posterior_observed(
    model: Model,
    operator: Operator | Callable[[Tensor], Tensor] | None,
    y: Tensor,
    sigma: float | Tensor,
    n: int,
    generator: torch.Generator,
    steps: int = 2000,
    noise: str = "calibrated",
    condition: Tensor | None = None,
    batch_size: int = 512,
    keep: Sequence[int] | None = None,
    **langevin: Any,
) -> tuple[Tensor, Tensor, Diagnostics]:
    """n draws of x_0 ~ p(x_0 | y) per observation with a trained `physdiff.model.Model`:
    x_T from `sample_end_states` with the system's end-state score as prior score, then one
    reverse-SDE path (`physdiff.model.sample_posterior`) from each x_T.

    The prior score is `System.end_state_score` where the system gives one (heat: the score
    Tweedie's formula implies from the learned reverse step and the forward step,
    `physdiff.sde.tweedie_score`), else s_θ(·, T) itself, which is trained on the last step of
    each trajectory only and is the score to first order in Δt (docs/method.md §6).

    Arguments:
        model: A loaded `physdiff.model.Model`.
        y: Observations (M, *obs); sigma, steps and `langevin` as in `sample_end_states`.
        condition: What the system needs besides the state (M, *), e.g. obstacle geometry.
        keep: Forward time indices: return the states there, (M, n, len(keep), *state), instead
            of x_0 (as in `physdiff.model.sample_posterior`).

    Returns:
        x_0 draws (M, n, *state) (or the kept states), the x_T draws they started from
        (M, n, *state), diagnostics.
    """
    state_shape = tuple(model.system.state_shape)
    device = next(model.score.parameters()).device
    y = torch.as_tensor(y, dtype=torch.float32).to(device)
    cond = None if condition is None else repeat_samples(condition.to(device), n)
    score = (model.system.end_state_score(model, cond)
             or model.system.score_fn(model.score, cond))
    t_end = model.meta.times()[-1].to(device, torch.float32)

    def prior_score(x: Tensor) -> Tensor:
        return score(x, t_end.expand(x.shape[0]))

    op = as_operator(operator)
    gaussian = (model.system.end_state_gaussian(model) is not None
                or "variance" in (model.end_state or {}))
    if steps == 0 and ("init" in langevin or not gaussian or not op.linear):
        raise ValueError("Langevin steps 0 (the Gaussian start alone) needs a linear operator "
                         "and end-state statistics in the checkpoint (train.py stores them; "
                         "an older checkpoint has none: retrain, or pass Langevin steps > 0)")
    # With no Langevin steps the start draws are the x_T posterior: exact draws of the
    # per-coordinate Gaussian's conditional. As a start for chains they stay near its mean
    # instead: independent per-coordinate noise is far off what the score network has seen.
    langevin = _system_defaults(model, op, y, sigma, n, generator, langevin,
                                spread=1.0 if steps == 0 else 0.1)
    x_T, diagnostics = sample_end_states(prior_score, operator, y, sigma, n, generator, steps,
                                         state_shape=state_shape, **langevin)
    x_0 = sample_posterior(model, x_T.reshape(-1, *state_shape), 1, generator, noise,
                           batch_size=batch_size, condition=cond, keep=keep)
    return x_0.reshape(y.shape[0], n, *x_0.shape[2:]), x_T, diagnostics
