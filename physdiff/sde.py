"""Drifts as callables, and their composition into reverse-time drifts (docs/method.md §2).

Every drift has the signature (x: (B, *), t: (B,)) -> (B, *). The reverse step from t to
s = t − dt is x_s = x_t − dt · f(x_t, t); an Euler step of the ODE dx/dt = f on a decreasing
time grid is exactly that.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

__all__ = ["Drift", "as_drift", "expand_like", "from_inverse_step", "reverse_drift"]

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
