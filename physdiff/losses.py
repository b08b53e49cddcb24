"""One-step and multi-step losses (docs/method.md §3): pure functions of a reverse drift and data.

Both losses are divided by g² dt, the variance of one step of forward noise per component. At the
optimum of the one-step loss its value is E Var(x_k | x_{k+1}) / (g² dt), which is ≈ 1 for modes
that the physics barely changes: a readable floor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torchdiffeq import odeint

from physdiff.sde import Drift

__all__ = ["forward_loss", "multi_step_loss", "one_step_loss", "reverse_rollout"]


def one_step_loss(drift: Drift, x_prev: Tensor, x_next: Tensor, t_next: Tensor, dt: float,
                  g: float) -> Tensor:
    r"""L_1 = E ‖x_k − [x_{k+1} − dt f(x_{k+1}, t_{k+1})]‖² / (g² dt).

    With f = P − g² s_θ this is E ‖x_k − P̃⁻¹(x_{k+1}) − dt g² s_θ‖²: its minimiser is
    E[x_k | x_{k+1}], which by Tweedie's formula makes s_θ the score ∇log p_t.

    Arguments:
        drift: Reverse drift f(x, t) with c = 1.
        x_prev: States x_k, shape (B, *).
        x_next: States x_{k+1}, shape (B, *).
        t_next: Times t_{k+1}, shape (B,).

    Returns:
        Mean loss per component, shape ().

    References:
        Holzschuh, Vegetti, Thuerey (2023), Solving inverse physics problems with score matching,
        arXiv:2301.10250
    """
    x_hat = x_next - dt * drift(x_next, t_next)
    return (x_prev - x_hat).square().mean() / (g**2 * dt)


def reverse_rollout(drift: Drift, x_end: Tensor, t_end: Tensor, n_steps: int, dt: float,
                    method: str = "euler") -> Tensor:
    """Integrate dx/dt = f(x, t) backwards from t_end over n_steps steps of dt with torchdiffeq.

    The batch may hold windows that end at different times, so the solver runs on the shared
    decreasing offset grid τ = 0, −dt, …, −n dt and the drift sees t_end + τ. With
    method='euler' each step is exactly x − dt f(x, t), the discrete reverse step; 'rk4',
    'midpoint', … integrate the same flow to higher order. Gradients flow through every step.

    Arguments:
        x_end: States at t_end, shape (B, *).
        t_end: Times, shape (B,).

    Returns:
        States at t_end − j dt for j = 1..n_steps, shape (B, n_steps, *).
    """
    taus = -dt * torch.arange(n_steps + 1, dtype=x_end.dtype, device=x_end.device)
    path = odeint(lambda tau, x: drift(x, t_end + tau), x_end, taus, method=method)
    return path[1:].transpose(0, 1)


def multi_step_loss(drift: Drift, window: Tensor, t_end: Tensor, dt: float, g: float,
                    method: str = "euler") -> Tensor:
    r"""L_S = E (1/S) Σ_{j=1..S} ‖x_{k−j} − x̂_{k−j}‖² / (g² dt), x̂ rolled out from x̂_k = x_k.

    The mean over j (docs/method.md §3) keeps the loss scale, and so the learning rate,
    unchanged when the curriculum lengthens the window. Use the c = 1 drift: the minimiser of a
    squared loss on deterministic rollouts is the conditional mean, which the c = 1 path represents
    (and, for linear-Gaussian problems, equals E[x_{k−j} | x_k] exactly); a c = 1/2 rollout would
    push the network towards twice the score.

    Arguments:
        window: Data x_{k−S}, …, x_k in time order, shape (B, S + 1, *).
        t_end: Times t_k of the last state, shape (B,).

    Returns:
        Mean loss per component and step, shape ().
    """
    n_steps = window.shape[1] - 1
    x_hat = reverse_rollout(drift, window[:, -1], t_end, n_steps, dt, method)
    target = window[:, :-1].flip(1)  # x_{k-1}, ..., x_{k-S}
    return (target - x_hat).square().mean() / (g**2 * dt)


def forward_loss(step: Callable[[Tensor], Tensor], x_prev: Tensor, x_next: Tensor, dt: float,
                 g: float) -> Tensor:
    r"""L_P = E ‖x_{k+1} − S_φ(x_k)‖² / (g² dt): the forward one-step loss that anchors a learned
    physics step S_φ (docs/method.md §3, joint physics). Its minimiser is E[x_{k+1} | x_k], the
    noise-free step, and its floor is the fraction of components that carry noise.

    Arguments:
        step: Learned forward step x_k -> x_{k+1} (differentiable in its parameters).
        x_prev, x_next: States x_k and x_{k+1}, shape (B, *).
    """
    return (x_next - step(x_prev)).square().mean() / (g**2 * dt)
