"""The PhiFlow side of the smoke step (simulators/smoke.py): PhiFlow's boundaries and obstacle
geometries, the advection frame (advection, inflow, buoyancy) that `smoke.step` jit-compiles,
the precision context, and `step_phiflow`, the reference step that keeps PhiFlow's own CG
pressure solve (make_incompressible).

`step_phiflow` is jit-compiled per (advection scheme, dtype) and run in chunks of `max_chunk`
items: PhiML builds per-sample obstacles into one sparse matrix whose int32 index overflows
beyond batch·H·W > 46 340, and whose implicit gradient it cannot transpose, so with gradients it
goes item by item through `_Step`, which recomputes the forward frame in the backward pass.
`smoke.step` re-exports `step_phiflow` and `max_chunk`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from phi import field as phifield
from phi import geom
from phi import math as phimath
from phi.physics import advect, fluid
from phi.torch import TORCH
from torch import Tensor

from simulators.smoke_setup import (
    BUOYANCY,
    DOMAIN,
    INFLOW_CENTRE,
    INFLOW_RADIUS,
    INFLOW_RATE,
    _inflow,
    obstacle_mask,
)

__all__ = ["max_chunk", "step_phiflow"]

_SPARSE_LIMIT = 46_340  # batch · H · W above this overflows PhiFlow's int32 sparse index
_FAR = -1e3  # position of unused obstacle rows: far outside the domain


def max_chunk(resolution: int) -> int:
    """Largest batch one projection can take with per-sample obstacles: 46 340 // (H·W)."""
    return max(1, _SPARSE_LIMIT // (resolution * resolution))


_WALLS = phimath.extrapolation.combine_sides(
    x=phimath.extrapolation.ZERO,
    y=(phimath.extrapolation.ZERO, phimath.extrapolation.ZERO_GRADIENT),  # open top
)


def _obstacle_geometries(lower: phimath.Tensor, upper: phimath.Tensor, centre: phimath.Tensor,
                         radius: phimath.Tensor) -> list[geom.Geometry]:
    return [geom.Box(lower, upper), geom.Sphere(centre, radius)]


def _advected(
    state: phimath.Tensor,
    fluid_mask: phimath.Tensor,
    inflow: phimath.Tensor,
    dt: phimath.Tensor,
    mac_cormack: bool,
) -> tuple[phifield.Field, phifield.Field]:
    """Smoke (centred) and velocity (staggered) after advection, inflow and buoyancy."""
    resolution = phimath.spatial(state)
    bounds = geom.Box(x=DOMAIN, y=DOMAIN)
    grid = functools.partial(phifield.CenteredGrid, bounds=bounds, resolution=resolution)
    velocity_c = phimath.rename_dims(
        state.c["vx,vy"] * fluid_mask, "c", phimath.channel(vector="x,y")
    )
    velocity = phifield.StaggeredGrid(
        grid(velocity_c, _WALLS), _WALLS, bounds=bounds, resolution=resolution
    )
    smoke = grid(state.c["s"], phimath.extrapolation.ZERO_GRADIENT)
    source = grid(geom.Sphere(phimath.vec(x=INFLOW_CENTRE[0], y=INFLOW_CENTRE[1]),
                              radius=INFLOW_RADIUS), phimath.extrapolation.ZERO_GRADIENT)
    advect_smoke = advect.mac_cormack if mac_cormack else advect.semi_lagrangian
    smoke = advect_smoke(smoke, velocity, dt) + inflow * source
    buoyancy = (smoke * phimath.vec(x=0.0, y=BUOYANCY)) @ velocity  # centred -> staggered
    velocity = advect.semi_lagrangian(velocity, velocity, dt) + dt * buoyancy
    return smoke, velocity


def _step_fields(
    state: phimath.Tensor,
    lower: phimath.Tensor,
    upper: phimath.Tensor,
    centre: phimath.Tensor,
    radius: phimath.Tensor,
    fluid_mask: phimath.Tensor,
    inflow: phimath.Tensor,
    dt: phimath.Tensor,
    mac_cormack: bool,
) -> phimath.Tensor:
    """One frame on PhiFlow tensors: state (b, c=s|vx|vy, x, y) -> same; see `step`."""
    smoke, velocity = _advected(state, fluid_mask, inflow, dt, mac_cormack)
    obstacles = _obstacle_geometries(lower, upper, centre, radius)
    tolerance = 1e-5 if state.dtype.precision == 32 else 1e-10  # FD gradient checks need float64
    solve = phimath.Solve("CG", tolerance, tolerance, max_iterations=2000)
    velocity, _ = fluid.make_incompressible(velocity, obstacles, solve)
    # PhiFlow rasterises obstacles as volume fractions, so cells whose centre is solid but that are
    # partly fluid keep a small velocity (≤ 4e-4 of max |v| measured): zero it, as the mask says
    velocity = velocity.at_centers().values * fluid_mask
    return phimath.stack(
        [smoke.values, velocity.vector["x"], velocity.vector["y"]],
        phimath.channel(c="s,vx,vy"),
    )


@functools.cache
def _jitted(mac_cormack: bool, dtype: torch.dtype) -> Callable[..., phimath.Tensor]:
    """The jit-compiled frame, one per advection scheme and dtype: PhiML keys its traces by
    shape, and reused a float64 trace for float32 inputs (which then fails in grid_sample)."""
    return phimath.jit_compile(functools.partial(_step_fields, mac_cormack=mac_cormack))


def _obstacle_arguments(geometry: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Geometry rows -> (box lower, box upper, sphere centre) (B, n, 2) and radius (B, n).

    Every row becomes a box and a sphere; the one of the wrong kind (and both for kind 0) is
    moved far outside the domain, so shapes stay fixed and one trace serves all geometries.
    """
    kind, x, y, sx, sy = geometry.unbind(-1)
    is_box, is_sphere = kind == 1, kind == 2
    far = torch.full_like(x, _FAR)
    lower = torch.stack([torch.where(is_box, x - sx / 2, far), torch.where(is_box, y - sy / 2, far)], -1)
    upper = torch.stack([torch.where(is_box, x + sx / 2, far), torch.where(is_box, y + sy / 2, far)], -1)
    centre = torch.stack([torch.where(is_sphere, x, far), torch.where(is_sphere, y, far)], -1)
    radius = torch.where(is_sphere, sx, torch.ones_like(sx))
    return lower, upper, centre, radius


def _step_chunk(
    state: Tensor, geometry: Tensor, inflow: Tensor, dt: float, mac_cormack: bool
) -> Tensor:
    """`step` on a batch small enough for one sparse pressure matrix; no gradient."""
    b = phimath.batch("b")
    vector = phimath.channel(vector="x,y")
    lower, upper, centre, radius = (t.to(state.dtype) for t in _obstacle_arguments(geometry))
    fluid_mask = 1 - obstacle_mask(geometry.to(state.dtype), state.shape[-1])
    if state.shape[0] == 1:
        # obstacles without a batch dim give an unbatched pressure matrix, whose implicit
        # gradient works; PhiML cannot transpose the batched one (see `step`)
        lower, upper, centre, radius = lower[0], upper[0], centre[0], radius[0]
        ob: tuple[phimath.Shape, ...] = ()
    else:
        ob = (b,)
    with _phiflow_context(state.dtype):
        out = _jitted(mac_cormack, state.dtype)(
            phimath.wrap(state.transpose(-1, -2), b, phimath.channel(c="s,vx,vy"),
                         phimath.spatial("x,y")),
            phimath.wrap(lower, *ob, phimath.instance("obstacles"), vector),
            phimath.wrap(upper, *ob, phimath.instance("obstacles"), vector),
            phimath.wrap(centre, *ob, phimath.instance("obstacles"), vector),
            phimath.wrap(radius, *ob, phimath.instance("obstacles")),
            phimath.wrap(fluid_mask.transpose(-1, -2), b, phimath.channel(c="m"),
                         phimath.spatial("x,y")).c[0],
            phimath.wrap(inflow, b),
            phimath.wrap(torch.tensor(dt, dtype=state.dtype)),
        )
    return out.native("b,c,y,x")


@contextlib.contextmanager
def _phiflow_context(dtype: torch.dtype) -> Iterator[None]:
    """Torch as PhiML's backend and the state's precision, for tracing and for backward passes.

    Without it, constants created inside PhiFlow (masks, the pressure matrix, adjoint vectors)
    are numpy float32: the trace then fails and float64 solves stall at float32 residuals.
    """
    with TORCH, phimath.precision(64 if dtype == torch.float64 else 32):
        yield


def _step_one(
    state: Tensor, geometry: Tensor, inflow: Tensor, dt: float, mac_cormack: bool
) -> Tensor:
    """One chunk, through `_Step` when a gradient is needed."""
    if torch.is_grad_enabled() and state.requires_grad:
        return _Step.apply(state, geometry, inflow, dt, mac_cormack)
    return _step_chunk(state, geometry, inflow, dt, mac_cormack)


class _Step(torch.autograd.Function):
    """A frame whose backward pass recomputes the forward inside `_phiflow_context`.

    PhiML's custom gradients (the implicit adjoint of the pressure solve) run when autograd
    calls them, after the caller's context has closed, and then use numpy as the default
    backend. Recomputing here (like checkpointing: one extra forward per backward) runs them
    inside the context. Gradients flow to the state only, not to the obstacles.
    """

    @staticmethod
    def forward(
        ctx: Any, state: Tensor, geometry: Tensor, inflow: Tensor, dt: float, mac_cormack: bool
    ) -> Tensor:
        ctx.save_for_backward(state, geometry, inflow)
        ctx.config = (dt, mac_cormack)
        return _step_chunk(state, geometry, inflow, dt, mac_cormack)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        state, geometry, inflow = ctx.saved_tensors
        with torch.enable_grad(), _phiflow_context(state.dtype):
            x = state.detach().requires_grad_(True)
            out = _step_chunk(x, geometry, inflow, *ctx.config)
            (grad_state,) = torch.autograd.grad(out, x, grad)
        return grad_state, None, None, None, None


def step_phiflow(
    state: Tensor,
    geometry: Tensor,
    t: float | Tensor,
    dt: float = 1.0,
    mac_cormack: bool = True,
    inflow_rate: float = INFLOW_RATE,
) -> Tensor:
    """`step` with PhiFlow's own CG pressure solve (make_incompressible): the reference.

    Batches larger than `max_chunk` are split into equal chunks (the last padded by repetition)
    so that one traced shape serves all of them. With gradients, items run one at a time and the
    backward pass recomputes the forward frame (`_Step`): about 3× the cost of a forward frame.
    """
    n = state.shape[0]
    inflow = _inflow(state, t, dt, inflow_rate)
    # PhiML 1.16 builds per-sample obstacles into one sparse matrix with batch dims as matrix
    # dims, and its implicit gradient fails to transpose that matrix (AssertionError "Dual
    # dimensions on both compressed and uncompressed dimensions"): with gradients, go one by one
    needs_grad = torch.is_grad_enabled() and state.requires_grad
    size = 1 if needs_grad else max_chunk(state.shape[-1])
    if n <= size:
        return _step_one(state, geometry, inflow.to(state.dtype), dt, mac_cormack)
    chunks = -(-n // size)
    size = -(-n // chunks)  # balanced chunks: 16 at 64² -> 2 × 8, not 11 + 5
    pad = chunks * size - n
    index = torch.cat([torch.arange(n), torch.full((pad,), n - 1)])
    out = [
        _step_one(state[i], geometry[i], inflow[i].to(state.dtype), dt, mac_cormack)
        for i in index.split(size)
    ]
    return torch.cat(out)[:n]

