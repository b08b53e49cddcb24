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

import torch
from torch import Tensor

from physdiff.noise import residual_batches
from physdiff.sde import Drift

__all__ = ["corrected_score", "mode_gain_correction"]


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
