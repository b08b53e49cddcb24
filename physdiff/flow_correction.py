"""A per-mode linear correction of the learned reverse step, for the probability-flow ODE of
fields on a periodic grid (docs/method.md §4).

The c = ½ flow is neutral to per-step gain errors: a mode whose learned conditional-mean step
m_θ(y) = y − Δt f(y, t_{k+1}) is off by a few per cent keeps that error at every one of the K
steps, and the errors multiply. Where the reverse kernel is linear and diagonal in Fourier space
(heat: linear physics, stationary Gaussian data), the exact step is ŷ ↦ G_k ŷ per mode, so the
least-squares fit of the residual on ŷ over training pairs,

    β_k = Σ r̂_k ŷ* / Σ |ŷ|²,   r_k = x_k − m_θ(x_{k+1}),   ŷ = fft2(x_{k+1}),

is what the learned step lacks on mode k, and m_θ + ifft2(β_k ŷ) is the best linear step. As a
score: s' = s_θ + ifft2(β_k ŷ) / (Δt g²), which `corrected_score` returns. It cannot repair a
step that is non-linear in y; it is meant for the networks of the one-step stage (the flow
networks of physdiff/cli/train_run.py), whose step is nearly linear there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from physdiff.noise import residual_batches
from physdiff.sde import Drift

__all__ = ["BLOW_UP", "corrected_score", "held_out_choice", "mode_gain_correction"]

BLOW_UP = 10.0  # a case whose flow MSE exceeds this × the median case's has blown up


@torch.no_grad()
def mode_gain_correction(drift: Drift, trajectories: Tensor, times: Tensor, dt: float,
                         batch_size: int = 256) -> Tensor:
    """β_k per Fourier mode of the last two dims, fitted on training trajectories.

    Arguments:
        drift: The learned reverse drift f (c = 1) whose step is corrected.
        trajectories: Data (N, K + 1, *state), states ending in (H, W).
        times: t_0..t_K, shape (K + 1,).

    Returns:
        β as real and imaginary parts, float32, shape (K, 2, *state): index k for the step
        t_{k+1} -> t_k.
    """
    k_plus_1, shape = trajectories.shape[1], trajectories.shape[2:]
    cross = torch.zeros((k_plus_1 - 1, *shape), dtype=torch.complex128)
    power = torch.zeros((k_plus_1 - 1, *shape), dtype=torch.float64)
    for y, r, b in residual_batches(drift, trajectories, times, dt, batch_size):
        y_hat, r_hat = torch.fft.fft2(y.double()), torch.fft.fft2(r.double())
        cross += (r_hat * y_hat.conj()).reshape(b, k_plus_1 - 1, *shape).sum(0).cpu()
        power += y_hat.abs().square().reshape(b, k_plus_1 - 1, *shape).sum(0).cpu()
    beta = cross / power.clamp_min(1e-12)
    return torch.stack([beta.real, beta.imag], dim=1).float()


def corrected_score(score: Drift, correction: Tensor, dt: float, g: float) -> Drift:
    """s'(y, t) = s(y, t) + Re ifft2(β_k fft2(y)) / (Δt g²) with k the step that starts at t
    (t = t_{k+1}; times between grid points take the nearest step)."""
    beta = torch.complex(correction[:, 0].double(), correction[:, 1].double())
    steps = beta.shape[0]

    def apply(y: Tensor, t: Tensor) -> Tensor:
        k = ((t.double() / dt).round().long() - 1).clamp(0, steps - 1).cpu()
        b = beta[k].to(y.device)
        fix = torch.fft.ifft2(b * torch.fft.fft2(y.double())).real.to(y.dtype)
        return score(y, t) + fix / (dt * g * g)

    return apply


@torch.no_grad()
def held_out_choice(flow: Callable[[bool], Tensor], x_0: Tensor) -> dict[str, Any]:
    """Keep the fitted correction only where it lowers the flow's mean squared error on held-out
    cases whose x_0 is known. The fit is least squares on training pairs; it can still make the
    flow worse, because a network's step is not exactly linear and the neutral c = ½ flow
    compounds what the fit misses (heat-32, training seed 0: 1.09 → 1.12 × the exact-kernel
    oracle on test states; 0.064 → 0.22 on 468 validation cases). MSE against x_0 cannot fault
    a flow that shrinks towards the posterior mean (a score too large does: it lowers the MSE
    below the exact flow's); the criterion is there to catch a correction that spreads or
    diverges the flow, which it does.

    Arguments:
        flow: corrected -> the flow's reconstructions of x_0 (N, *state), with or without the
            correction.
        x_0: The cases' true initial states (N, *state).

    Returns:
        A JSON-able record: 'kept', 'cases', the mean MSE 'corrected' and 'uncorrected', and
        'blown_up', the cases of the kept variant whose MSE exceeds BLOW_UP × the median case's
        (the flow diverged there; the mean path and the samples do not).
    """
    per = {}
    for corrected in (True, False):
        err = (flow(corrected).double().cpu() - x_0.double().cpu()).square().flatten(1).mean(1)
        per[corrected] = torch.where(torch.isfinite(err), err, torch.full_like(err, torch.inf))
    kept = bool(per[True].mean() < per[False].mean())
    chosen = per[kept]
    return {"kept": kept, "cases": int(x_0.shape[0]),
            "corrected": _finite_or_none(per[True].mean()),
            "uncorrected": _finite_or_none(per[False].mean()),
            "blown_up": int((chosen > BLOW_UP * chosen.median()).sum())}


def _finite_or_none(value: Tensor) -> float | None:
    return float(value) if torch.isfinite(value) else None
