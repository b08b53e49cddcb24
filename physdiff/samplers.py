"""Reverse-time samplers (docs/method.md §4): plain functions of a drift, a state and a time grid.

They stay differentiable; the caller decides on `torch.no_grad`. A decreasing grid `ts` runs
reverse time from ts[0] = T down to ts[-1] = 0. To draw n posterior samples of B observations,
repeat the observations (`repeat_samples`) and run one batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchdiffeq import odeint

from physdiff.sde import Drift

__all__ = [
    "Corrector",
    "Noise",
    "euler_maruyama",
    "langevin_corrector",
    "probability_flow",
    "randn_like",
    "repeat_samples",
    "white_noise",
]

# (x: (B, *), i: step index, generator) -> increment added on the step ts[i] -> ts[i+1]
Noise = Callable[[Tensor, int, "torch.Generator | None"], Tensor]
# (x: (B, *), t: (B,), generator) -> corrected x
Corrector = Callable[[Tensor, Tensor, "torch.Generator | None"], Tensor]


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """z ~ N(0, I) of x's shape, dtype and device, drawn with `generator` (every noise draw of
    the samplers and noise models goes through here, so a seed reproduces them)."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def white_noise(ts: Tensor, g: float) -> Noise:
    """The Brownian increment of the SDE: g √|t_{i+1} − t_i| z, z ~ N(0, I)."""
    scales = g * (ts[1:] - ts[:-1]).abs().sqrt()
    return lambda x, i, generator: scales[i] * randn_like(x, generator)


def euler_maruyama(
    drift: Drift,
    x: Tensor,
    ts: Tensor,
    g: float,
    generator: torch.Generator | None = None,
    noise: Noise | None = None,
    corrector: Corrector | None = None,
    return_path: bool = False,
) -> Tensor:
    """Integrate dx = f(x, t) dt + g dW̄ along ts (decreasing for reverse time).

    Step i: x ← x + (t_{i+1} − t_i) f(x, t_i) + noise_i, then optionally a corrector at t_{i+1}
    (skipped at the final time, where no score was trained). With f = P − g² s_θ and the
    physics drift of `as_drift`, one step is P̃⁻¹(x) + dt g² s_θ(x, t) + g √dt z (docs/method.md §2).

    Arguments:
        drift: Reverse drift f(x, t), c = 1.
        x: Start states at ts[0], shape (B, *).
        ts: Time grid, shape (N + 1,).
        noise: Increment model; default `white_noise(ts, g)`. Pass `lambda x, i, gen: 0` for the
            noise-free conditional-mean path.
        return_path: Return every state, shape (N + 1, B, *), instead of the last, (B, *).
    """
    noise = noise if noise is not None else white_noise(ts, g)
    path = [x]
    for i in range(len(ts) - 1):
        t = ts[i].expand(x.shape[0])
        x = x + (ts[i + 1] - ts[i]) * drift(x, t) + noise(x, i, generator)
        if corrector is not None and i < len(ts) - 2:
            x = corrector(x, ts[i + 1].expand(x.shape[0]), generator)
        if return_path:
            path.append(x)
    return torch.stack(path) if return_path else x


def probability_flow(drift: Drift, x: Tensor, ts: Tensor, method: str = "euler",
                     return_path: bool = False) -> Tensor:
    """Solve the probability-flow ODE dx/dt = P − ½ g² s_θ along ts with torchdiffeq.

    Arguments:
        drift: The ODE drift (c = 1/2).
        x: States at ts[0], shape (B, *).
        ts: Time grid, shape (N + 1,), decreasing for reverse time.

    Returns:
        The state at ts[-1], (B, *), or every state, (N + 1, B, *).
    """
    path = odeint(lambda t, y: drift(y, t.expand(y.shape[0])), x, ts, method=method)
    return path if return_path else path[-1]


def langevin_corrector(score: Drift, snr: float = 0.1) -> Corrector:
    """One Langevin step per time: x ← x + ε s(x, t) + √(2ε) z, ε = 2 (r ‖z‖ / ‖s‖)².

    The step size follows Song et al. (2021, Algorithm 4) with signal-to-noise ratio r, with the
    norms averaged over the batch as in their code: one ε for the whole batch. A per-sample ε,
    computed from that sample's own ‖s(x)‖, would change the chain's invariant density from π to
    ∝ ‖x‖² π^{d/(d+2)} (tested in tests/test_samplers.py). Note that the corrector targets the
    marginal p_t, not p(x_t | x_T): in posterior sampling from one observation it pulls towards
    the prior marginal, so keep r small.

    References:
        Song et al. (2021), Score-Based Generative Modeling through SDEs, arXiv:2011.13456
    """

    def correct(x: Tensor, t: Tensor, generator: torch.Generator | None) -> Tensor:
        s = score(x, t)
        z = randn_like(x, generator)
        s_norm = s.flatten(1).norm(dim=1).mean()
        z_norm = z.flatten(1).norm(dim=1).mean()
        eps = 2 * (snr * z_norm / s_norm.clamp_min(1e-12)) ** 2
        return x + eps * s + (2 * eps).sqrt() * z

    return correct


def repeat_samples(x: Tensor, n: int) -> Tensor:
    """(B, *) -> (B·n, *), each observation repeated n times consecutively; undo with
    `.reshape(B, n, *)`."""
    return x.repeat_interleave(n, dim=0)

