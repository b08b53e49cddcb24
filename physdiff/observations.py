"""Observation operators and likelihood scores for partial, noisy observations (docs/method.md §6).

The observation model is y = A(x_T) + σ_y ε, ε ~ N(0, I), with A differentiable. An operator maps
a batch of states (B, *state) to observations (B, *obs) and knows which state shapes it accepts
(`observed_shape`). The log-likelihood is log p(y | x) = −½ ‖(y − A(x)) / σ_y‖² + const and its
score, by autograd, J_A(x)ᵀ (y − A(x)) / σ_y², which is Aᵀ (y − A x) / σ_y² for linear A.

σ_y is a scalar, one value per observed channel (dim 0 of one observation, shape (C_obs,)), or a
tensor that broadcasts against one observation (*obs). It must be > 0, except that σ_y = 0 with
`Identity` means a full noise-free observation, x_T = y. A noise-free *partial* observation is
refused: p(x_T | y) is then concentrated on a set of measure zero and Langevin dynamics on it
would need an infinitely small step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "AvgPool",
    "ChannelSubset",
    "Function",
    "Identity",
    "Mask",
    "Matrix",
    "Operator",
    "as_operator",
    "check_observed",
    "dense_matrix",
    "likelihood_score",
]

Shape = tuple[int, ...]


class Operator:
    """A differentiable observation operator A: states (B, *state) -> observations (B, *obs).

    Subclasses implement `__call__` and `observed_shape`; `linear` says whether A is linear (then
    `dense_matrix` can build it and the likelihood score is exactly Aᵀ (y − A x) / σ²).
    """

    linear: bool = True

    def __call__(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def observed_shape(self, state_shape: Sequence[int]) -> Shape:
        """The shape of one observation for states of shape `state_shape`; a one-line
        ValueError if the operator cannot take such states."""
        raise NotImplementedError

    def state_shape(self, observed_shape: Sequence[int]) -> Shape | None:
        """The state shape implied by an observation's shape, or None if it is not implied."""
        return None

    def __repr__(self) -> str:
        return type(self).__name__


class Identity(Operator):
    """A(x) = x: a full observation (σ_y = 0 allowed: then x_T = y)."""

    def __call__(self, x: Tensor) -> Tensor:
        return x

    def observed_shape(self, state_shape: Sequence[int]) -> Shape:
        return tuple(state_shape)

    def state_shape(self, observed_shape: Sequence[int]) -> Shape:
        return tuple(observed_shape)


class Mask(Operator):
    """A(x) = m ⊙ x with a 0/1 mask m: keeps the components where m = 1 and zeroes the rest.

    Observations have the state's shape; their entries where m = 0 are ignored (fill them with 0).
    The mask has the state's shape, or size 1 along a dim to share it (e.g. (1, H, W) for a
    pixel mask over every channel).
    """

    def __init__(self, mask: Tensor) -> None:
        mask = torch.as_tensor(mask)
        if mask.ndim == 0 or mask.numel() == 0:
            raise ValueError(f"mask has shape {tuple(mask.shape)}, expected the state's shape")
        if not ((mask == 0) | (mask == 1)).all():
            raise ValueError("mask must contain only 0 and 1 (1 = observed)")
        if not mask.any():
            raise ValueError("mask observes nothing (all zeros)")
        self.mask = mask

    def __call__(self, x: Tensor) -> Tensor:
        return x * self.mask.to(device=x.device, dtype=x.dtype)

    def observed_shape(self, state_shape: Sequence[int]) -> Shape:
        shape = tuple(self.mask.shape)
        if len(shape) != len(state_shape) or any(
                m not in (1, s) for m, s in zip(shape, state_shape, strict=True)):
            raise ValueError(f"mask has shape {shape}, expected the state shape "
                             f"{tuple(state_shape)} (or size 1 along a shared dim)")
        return tuple(state_shape)

    def state_shape(self, observed_shape: Sequence[int]) -> Shape:
        return tuple(observed_shape)

    def __repr__(self) -> str:
        return f"Mask({int(self.mask.sum())} of {self.mask.numel()} observed)"


class ChannelSubset(Operator):
    """A(x) = x[:, channels]: observes some channels (dim 1 of a batch) completely."""

    def __init__(self, channels: Sequence[int]) -> None:
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 0 or len(set(channels)) != len(channels):
            raise ValueError(f"channels {channels}: expected distinct non-negative indices")
        self.channels = channels

    def __call__(self, x: Tensor) -> Tensor:
        return x[:, self.channels]

    def observed_shape(self, state_shape: Sequence[int]) -> Shape:
        if len(state_shape) < 1 or max(self.channels) >= state_shape[0]:
            raise ValueError(f"channels {self.channels}: expected indices below the state's "
                             f"channel count, state shape {tuple(state_shape)}")
        return (len(self.channels), *state_shape[1:])

    def __repr__(self) -> str:
        return f"ChannelSubset({self.channels})"


class AvgPool(Operator):
    """A(x): the mean over non-overlapping factor × factor blocks of the last two dims,
    (..., H, W) -> (..., H / factor, W / factor)."""

    def __init__(self, factor: int) -> None:
        if int(factor) != factor or factor < 1:
            raise ValueError(f"pooling factor {factor}: expected a positive integer")
        self.factor = int(factor)

    def __call__(self, x: Tensor) -> Tensor:
        f, (h, w) = self.factor, x.shape[-2:]
        return x.reshape(*x.shape[:-2], h // f, f, w // f, f).mean((-3, -1))

    def observed_shape(self, state_shape: Sequence[int]) -> Shape:
        f = self.factor
        if len(state_shape) < 2 or state_shape[-2] % f or state_shape[-1] % f:
            raise ValueError(f"AvgPool({f}): expected states (..., H, W) with H and W divisible "
                             f"by {f}, got {tuple(state_shape)}")
        return (*state_shape[:-2], state_shape[-2] // f, state_shape[-1] // f)

    def __repr__(self) -> str:
        return f"AvgPool({self.factor})"


class Matrix(Operator):
    """A(x) = a · vec(x): a dense linear operator (m, D) on states flattened row-major."""

    def __init__(self, a: Tensor) -> None:
        if a.ndim != 2:
            raise ValueError(f"matrix has shape {tuple(a.shape)}, expected (m, D)")
        self.a = a

    def __call__(self, x: Tensor) -> Tensor:
        return x.flatten(1) @ self.a.to(device=x.device, dtype=x.dtype).T

    def observed_shape(self, state_shape: Sequence[int]) -> Shape:
        if math.prod(state_shape) != self.a.shape[1]:
            raise ValueError(f"matrix has shape {tuple(self.a.shape)}, expected "
                             f"(m, {math.prod(state_shape)}) for states {tuple(state_shape)}")
        return (self.a.shape[0],)


class Function(Operator):
    """Any differentiable callable fn: (B, *state) -> (B, *obs) as an operator. Declare
    `linear=True` only if it is linear (enables `dense_matrix`)."""

    def __init__(self, fn: Callable[[Tensor], Tensor], linear: bool = False) -> None:
        self.fn = fn
        self.linear = linear

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def observed_shape(self, state_shape: Sequence[int]) -> Shape:
        probe = torch.zeros((2, *state_shape))
        try:
            with torch.no_grad():
                out = self.fn(probe)
        except (RuntimeError, ValueError, TypeError, IndexError) as err:  # shape mismatches
            raise ValueError(f"operator {self.fn!r} failed on states of shape "
                             f"{tuple(state_shape)}: {str(err).splitlines()[0]}") from None
        if not isinstance(out, Tensor) or out.ndim < 1 or out.shape[0] != 2:
            raise ValueError(f"operator {self.fn!r}: expected a tensor (B, *obs) keeping the "
                             "batch dim")
        return tuple(out.shape[1:])

    def __repr__(self) -> str:
        return f"Function({self.fn!r})"


def as_operator(operator: Operator | Callable[[Tensor], Tensor] | None) -> Operator:
    """An Operator as is, None as Identity, any other callable wrapped as a nonlinear Function."""
    if operator is None:
        return Identity()
    if isinstance(operator, Operator):
        return operator
    if callable(operator):
        return Function(operator)
    raise ValueError(f"operator {operator!r}: expected an Operator or a callable")


def dense_matrix(operator: Operator, state_shape: Sequence[int],
                 dtype: torch.dtype = torch.float64) -> Tensor:
    """The matrix (m, D) of a linear operator on row-major flattened states and observations,
    built by applying it to the D unit states."""
    if not operator.linear:
        raise ValueError(f"{operator!r} is not linear: it has no matrix")
    d = math.prod(state_shape)
    basis = torch.eye(d, dtype=dtype).reshape(d, *state_shape)
    return operator(basis).reshape(d, -1).T.contiguous()


def _noise_scale(sigma: float | Tensor, observed_shape: Shape) -> Tensor:
    """σ_y as a tensor that broadcasts against a batch (B, *obs): a scalar -> (), one per channel
    (C_obs,) -> (C_obs, 1, ..., 1), else it must broadcast against *obs."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    if sigma.ndim == 1 and len(observed_shape) > 1 and sigma.shape[0] == observed_shape[0] > 1:
        sigma = sigma.reshape(-1, *([1] * (len(observed_shape) - 1)))
    try:
        ok = torch.broadcast_shapes(sigma.shape, observed_shape) == torch.Size(observed_shape)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"sigma has shape {tuple(sigma.shape)}, expected a scalar, one value "
                         f"per observed channel or a shape broadcasting to {observed_shape}")
    if not torch.isfinite(sigma).all():
        raise ValueError("sigma contains NaN or Inf")
    return sigma


def check_observed(operator: Operator, y: Tensor, sigma: float | Tensor,
                       state_shape: Sequence[int]) -> Tensor:
    """One-line ValueErrors for observations that do not fit: y (M, *obs) of the operator's
    observed shape and finite; σ_y > 0, or σ_y = 0 with Identity.

    Returns:
        σ_y broadcastable against y's batch (`_noise_scale`), float64.
    """
    expected = operator.observed_shape(state_shape)
    if y.ndim == 0 or y.shape[0] == 0:
        raise ValueError("y: no observations (expected shape (M, *obs))")
    if tuple(y.shape[1:]) != expected:
        raise ValueError(f"y has observation shape {tuple(y.shape[1:])}, expected {expected} "
                         f"({operator!r} of states {tuple(state_shape)})")
    if not torch.isfinite(y).all():
        bad = int((~torch.isfinite(y)).sum())
        raise ValueError(f"y contains {bad} NaN or Inf entries (Mask: fill unobserved entries "
                         "with 0)")
    s = _noise_scale(sigma, expected)
    if (s < 0).any() or ((s == 0).any() and not isinstance(operator, Identity)):
        raise ValueError(f"sigma must be > 0 with {operator!r} (a noise-free partial "
                         "observation makes the posterior degenerate)")
    if isinstance(operator, Identity) and (s == 0).any() and not (s == 0).all():
        raise ValueError("sigma must be all > 0, or all 0 for a full noise-free observation")
    return s


def likelihood_score(operator: Operator | Callable[[Tensor], Tensor], y: Tensor,
                     sigma: float | Tensor) -> Callable[[Tensor], Tensor]:
    """The likelihood score x ↦ ∇_x log p(y | x) = J_A(x)ᵀ (y − A(x)) / σ_y², by autograd.

    For linear A this is exactly Aᵀ (y − A x) / σ_y². The gradient is taken of
    −½ Σ ((y − A(x)) / σ_y)² summed over the batch; rows are independent, so row b of the result
    is the score of observation b. Under `torch.no_grad` it still works (autograd is switched on
    locally); if x requires grad and grad mode is on, the result is differentiable in x.

    Arguments:
        operator: A, states (B, *state) -> observations (B, *obs).
        y: Observations, shape (B, *obs) or (1, *obs) for one shared by every row.
        sigma: σ_y > 0: scalar, per observed channel (C_obs,) or broadcasting to *obs.

    Returns:
        A callable (B, *state) -> (B, *state).
    """
    operator = as_operator(operator)
    if not torch.isfinite(y).all():
        raise ValueError(f"y contains {int((~torch.isfinite(y)).sum())} NaN or Inf entries")
    s = _noise_scale(sigma, tuple(y.shape[1:]))
    if not (s > 0).all():
        raise ValueError("sigma must be > 0 for a likelihood score (sigma = 0 with Identity "
                         "means x_T = y: there is nothing to sample)")

    def score(x: Tensor) -> Tensor:
        graph = torch.is_grad_enabled() and x.requires_grad
        with torch.enable_grad():
            x_ = x if graph else x.detach().requires_grad_(True)
            y_ = y.to(device=x.device, dtype=x.dtype)
            residual = (y_ - operator(x_)) / s.to(device=x.device, dtype=x.dtype)
            (grad,) = torch.autograd.grad(-0.5 * residual.square().sum(), x_, create_graph=graph)
        return grad

    return score
