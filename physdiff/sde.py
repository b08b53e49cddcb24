"""Drifts as callables, and their composition into reverse-time drifts (docs/method.md §2).

Every drift has the signature (x: (B, *), t: (B,)) -> (B, *). The reverse step from t to
s = t − dt is x_s = x_t − dt · f(x_t, t); an Euler step of the ODE dx/dt = f on a decreasing
time grid is exactly that.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["Drift", "as_drift", "expand_like", "from_inverse_step", "reverse_drift",
           "tweedie_score"]

Drift = Callable[[Tensor, Tensor], Tensor]


def expand_like(t: Tensor, x: Tensor) -> Tensor:
    """(B,) -> (B, 1, ..., 1), broadcastable against x of shape (B, *)."""
    return t.reshape(*t.shape, *([1] * (x.ndim - t.ndim)))


def as_drift(step: Callable[[Tensor], Tensor], dt: float) -> Drift:
    """The rate of a forward simulator step x -> x': P(x) = (x' − x) / dt.

    Its reverse step (explicit Euler with −dt) is x − dt P(x) = 2x − S(x), the negated forward
    increment that docs/method.md §2 prescribes for diffusion.
    """
    return lambda x, t: (step(x) - x) / dt


def from_inverse_step(inverse_step: Callable[[Tensor], Tensor], dt: float) -> Drift:
    """The drift whose explicit reverse Euler step is a given approximate inverse P̃⁻¹:
    (x − P̃⁻¹(x)) / dt.

    Use it for a simulator run with −dt (advection) or a learned inverse.
    """
    return lambda x, t: (x - inverse_step(x)) / dt


def reverse_drift(physics: Drift, score: Drift, g: float, c: float = 1.0) -> Drift:
    """Reverse-time drift f(x, t) = P(x, t) − c g² s(x, t).

    c = 1 gives the reverse SDE (and, without noise, the conditional-mean path that the losses
    train); c = 1/2 gives the probability-flow ODE.
    """
    return lambda x, t: physics(x, t) - c * g**2 * score(x, t)


def tweedie_score(step: Callable[[Tensor], Tensor], reverse: Drift, dt: float, g: float) -> Drift:
    """∇log p_{t}(x) from a learned reverse step, for a chain x_{k+1} = S(x_k) + g √dt z.

    Tweedie's formula for the additive Gaussian forward noise gives, exactly and for any prior,
    ∇log p_{k+1}(y) = (E[S(x_k) | y] − y) / (g² dt). With the learned conditional mean
    m(y) = y − dt f(y, t) (the c = 1 reverse step, `reverse` = f) and S linear,
    E[S(x_k) | y] = S(m(y)), so this is the score the one-step loss implies, without the
    first-order-in-dt error of reading s_θ itself as ∇log p_t (s_θ is defined through the
    approximate inverse P̃⁻¹, which is inexact where one step contracts a mode strongly: for heat
    s_θ → 2 / (1 + a) × the true score on a mode contracted by a = e^{−|k|² dt}). For non-linear S
    it is first order in the spread of x_k | y.
    """
    return lambda x, t: (step(x - dt * reverse(x, t)) - x) / (g**2 * dt)
