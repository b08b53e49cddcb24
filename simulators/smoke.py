"""smoke-64: buoyancy-driven smoke with obstacles, on PhiFlow, exchanging plain torch tensors.

The system (docs/method.md §8, smoke-64), on the domain [0, 100]² with walls (v·n = 0) left, right and bottom and an open top
(zero-gradient velocity, p = 0):

    s ← A_s(s, v, dt) + r dt · 1[t < 0.2] · 1_inflow        A_s: MacCormack (or semi-Lagrangian)
    v ← A_v(v, v, dt) + dt · 0.1 · s ê_y                     A_v: semi-Lagrangian
    v ← v − ∇p,  ∇·(∇p) = ∇·v with v·n = 0 at walls and obstacles      (pressure projection)

with s the smoke density, v the velocity (staggered inside the step), the inflow 1_inflow the
fraction of each cell covered by the sphere at (50, 10) of radius 5, added at rate
r = 0.2 per frame (the rate of PhiFlow's smoke-plume demo; docs/method.md §8), and one
frame = simulator dt 1 = physical time 0.01.

State convention: a tensor (B, 3, H, W) of smoke, v_x, v_y, all sampled at cell centres; index
[..., i, j] is the cell centred at x = (j + ½)·100/W, y = (i + ½)·100/H (row 0 at the bottom,
gravity along −y, so buoyancy points to increasing i). Inside a step the velocity is resampled to
the staggered (MAC) grid by linear interpolation between the two neighbouring centres (wall faces
are 0) and back by averaging the two faces of a cell. The round trip centred → staggered →
centred is therefore not exact: it applies a [¼, ½, ¼] filter along each component's own axis.
Trajectories from `rollout` are stored centred, so each step starts from the filtered velocity.

Obstacle geometry: a tensor (B, n_max, 5) of rows [kind, x, y, size_x, size_y] in domain units;
kind 0 = no obstacle (the row is ignored), 1 = axis-aligned box with centre (x, y) and full
extents (size_x, size_y), 2 = sphere with centre (x, y) and radius size_x (size_y is ignored, set
to size_x by `sample_obstacles`). The solid mask (B, 1, H, W) is 1 in cells whose centre lies in
a box or sphere (`obstacle_mask`); velocities are 0 there after every step. (The projection
itself sees PhiFlow's volume fractions of the same shapes; the two agree up to boundary cells.)

Traps (measured with PhiFlow 3.4): the step is split at the pressure solve. Advection, inflow and buoyancy
are a `phi.math.jit_compile`d function, traced once per (shape, dtype, advection scheme) and
cached here; everything that varies (state, inflow, dt) is an argument, never a captured tensor.
It runs with `torch.jit.optimized_execution(False)`: TorchScript's optimised graph gave wrong
gradients from the second call on. The projection (simulators/smoke_pressure.py) uses PhiFlow's
masks and masked Laplacian, factorised once per geometry and solved, with its exact adjoint, in
torch for a batch whose items have different obstacles (PhiML can neither transpose that batched
matrix for gradients nor index it beyond batch·H·W > 46 340). The open top makes the pressure
system regular except in fluid pockets the obstacles enclose, which smoke_pressure pins.
`step_phiflow` keeps PhiFlow's own CG solve (chunked; item by item with gradients) as the
reference.

Modules: this one holds the step (`step`, `rollout`) and the projection's PhiFlow set-up per
geometry; the constants, initial state, obstacle sampler and mask are in simulators/smoke_setup.py,
the PhiFlow advection frame and the reference `step_phiflow` (with `max_chunk`) in
simulators/smoke_phiflow.py, the pressure projection in simulators/smoke_pressure.py (its two
solvers in simulators/smoke_pressure_solvers.py). All public names are importable from here.

The approximate inverse step of docs/method.md §2 is `step` with dt < 0: advection runs backwards and
buoyancy is subtracted; the inflow is not subtracted (it is added only for dt > 0), since the
reverse task starts after the inflow has stopped (t ≥ 0.2) and the learned score absorbs the
rest.

References:
    Holl et al. (2020), Learning to Control PDEs with Differentiable Physics, arXiv:2001.07457
    Holzschuh et al. (2023), Solving Inverse Physics Problems with Score Matching, arXiv:2301.10250
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any

import torch
from phi import field as phifield
from phi import geom
from phi import math as phimath
from torch import Tensor

from simulators import smoke_pressure
from simulators.smoke_phiflow import (
    _WALLS,
    _advected,
    _obstacle_arguments,
    _obstacle_geometries,
    _phiflow_context,
    max_chunk,
    step_phiflow,
)
from simulators.smoke_setup import (  # noqa: F401 (re-exported)
    BUOYANCY,
    DOMAIN,
    FRAME_TIME,
    INFLOW_CENTRE,
    INFLOW_END,
    INFLOW_RADIUS,
    INFLOW_RATE,
    _inflow,
    initial_state,
    obstacle_mask,
    sample_obstacles,
)

__all__ = [
    "BUOYANCY",
    "DOMAIN",
    "FRAME_TIME",
    "INFLOW_END",
    "INFLOW_RATE",
    "initial_state",
    "max_chunk",
    "obstacle_mask",
    "rollout",
    "sample_obstacles",
    "step",
    "step_phiflow",
]

# PhiML builds torch sparse CSR matrices for the pressure solve; torch announces, once per
# process, that CSR support is beta and that invariant checks are off. Both are expected here.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


def _advect_fields(
    state: phimath.Tensor,
    fluid_mask: phimath.Tensor,
    inflow: phimath.Tensor,
    dt: phimath.Tensor,
    mac_cormack: bool,
) -> tuple[phimath.Tensor, phimath.Tensor, phimath.Tensor]:
    """`_advected` as values: smoke (b, x, y), v_x faces (b, x − 1, y), v_y faces (b, x, y)."""
    smoke, velocity = _advected(state, fluid_mask, inflow, dt, mac_cormack)
    vx, vy = phimath.unstack(velocity.values, "~vector")  # staggered: one shape per component
    return smoke.values, vx, vy


def _phiflow_geometry(geometry: Tensor, resolution: int) -> tuple[phifield.Field, list[Any]]:
    """A zero staggered velocity and the obstacles (batch dim b) for geometry (B, n_max, 5);
    call inside `_phiflow_context`."""
    b, vector, obstacles = phimath.batch("b"), phimath.channel(vector="x,y"), phimath.instance("obstacles")
    lower, upper, centre, radius = _obstacle_arguments(geometry)
    r = phimath.spatial(x=resolution, y=resolution)
    velocity = phifield.StaggeredGrid(0, _WALLS, bounds=geom.Box(x=DOMAIN, y=DOMAIN), resolution=r)
    return velocity, _obstacle_geometries(
        phimath.wrap(lower, b, obstacles, vector), phimath.wrap(upper, b, obstacles, vector),
        phimath.wrap(centre, b, obstacles, vector), phimath.wrap(radius, b, obstacles))


def _projections(geometry: Tensor, resolution: int, dtype: torch.dtype) -> list[smoke_pressure.Projection]:
    """The cached pressure projection of each geometry (B, n_max, 5), keyed by the geometry's
    bytes in the state's dtype (what the obstacles are built from), resolution and dtype; the
    masks of all missing geometries come from one batched PhiFlow call, in float64."""
    g = geometry.detach().to("cpu", dtype)
    keys = [(row.numpy().tobytes(), resolution, str(dtype)) for row in g]
    missing = {k: i for i, k in enumerate(keys) if smoke_pressure.lookup(k) is None}
    if missing:
        with _phiflow_context(torch.float64):
            velocity, shapes = _phiflow_geometry(g[list(missing.values())].double(), resolution)
            keep, hard, active = smoke_pressure.masks(velocity, shapes)
            spacing = DOMAIN / resolution
            faces = [c.native("b,y,x") for f in (keep, hard) for c in phimath.unstack(f, "~vector")]
            active = active.native("b,y,x")
        for j, key in enumerate(missing):
            smoke_pressure.store(key, smoke_pressure.build(*(f[j] for f in faces), active[j], spacing))
    return [smoke_pressure.lookup(k) for k in keys]


def _phiflow_matrix(geometry: Tensor, resolution: int) -> Any:
    """PhiFlow's own masked Laplacian for one geometry (n_max, 5), scipy, float64 (for tests)."""
    with _phiflow_context(torch.float64):
        velocity, shapes = _phiflow_geometry(geometry[None].double(), resolution)
        return smoke_pressure.phiflow_matrix(velocity, [s.b[0] for s in shapes])


@functools.cache
def _jitted_advect(mac_cormack: bool, dtype: torch.dtype) -> Callable[..., tuple[phimath.Tensor, ...]]:
    """`_advect_fields` jit-compiled, one per scheme and dtype (as smoke_phiflow._jitted)."""
    return phimath.jit_compile(functools.partial(_advect_fields, mac_cormack=mac_cormack))


def _step_projected(state: Tensor, geometry: Tensor, inflow: Tensor, dt: float,
                    mac_cormack: bool, solver: str) -> Tensor:
    """`step` through `_advect_fields` (jitted PhiFlow) and smoke_pressure.project (torch)."""
    resolution = state.shape[-1]
    fluid_mask = 1 - obstacle_mask(geometry.to(state.dtype), resolution)  # (B, 1, H, W)
    projections = _projections(geometry, resolution, state.dtype)
    b, native = phimath.batch("b"), "b,y,x"
    with _phiflow_context(state.dtype), torch.jit.optimized_execution(False):
        fields = _jitted_advect(mac_cormack, state.dtype)(
            phimath.wrap(state.transpose(-1, -2), b, phimath.channel(c="s,vx,vy"),
                         phimath.spatial("x,y")),
            phimath.wrap(fluid_mask[:, 0].transpose(-1, -2), b, phimath.spatial("x,y")),
            phimath.wrap(inflow, b),
            phimath.wrap(torch.tensor(dt, dtype=state.dtype, device=state.device)),
        )
        s, vx, vy = (f.native(native) for f in fields)
    ux, uy = smoke_pressure.project(vx, vy, projections, solver)
    return torch.stack([s, ux * fluid_mask[:, 0], uy * fluid_mask[:, 0]], 1)


def step(
    state: Tensor,
    geometry: Tensor,
    t: float | Tensor,
    dt: float = 1.0,
    mac_cormack: bool = True,
    inflow_rate: float = INFLOW_RATE,
    *,
    pressure_solver: str = "auto",
) -> Tensor:
    """Advance one frame; dt < 0 is the approximate inverse step P̃⁻¹ (module docstring).

    The inflow r · dt · 1_inflow is added where t < 0.2 and dt > 0 (t is the physical time of the
    input state, frame · 0.01). The pressure projection is PhiFlow's (same masks and matrix), but
    solved by smoke_pressure: a factorisation cached per geometry, and an exact adjoint, for a
    whole batch with different obstacles per item.

    Arguments:
        state: Smoke, v_x, v_y at cell centres, shape (B, 3, H, W) with H = W.
        geometry: Obstacles, shape (B, n_max, 5).
        t: Physical time, a float or shape (B,).
        dt: Simulator time step per frame (1 = one frame forward, −1 = one frame back).
        mac_cormack: Advect smoke with MacCormack (default) or semi-Lagrangian (for gradients).
        inflow_rate: Smoke added per unit dt in the inflow cells (r).
        pressure_solver: "lu" (SuperLU, CPU), "cg" (batched CG in torch, any device), "auto"
            (lu on the CPU, cg elsewhere), or "phiflow" (`step_phiflow`, the reference).

    Returns:
        The next state, shape (B, 3, H, W), differentiable w.r.t. state (not the geometry).
    """
    if pressure_solver == "phiflow":
        return step_phiflow(state, geometry, t, dt, mac_cormack, inflow_rate)
    if pressure_solver == "auto":
        pressure_solver = "lu" if state.device.type == "cpu" else "cg"
    inflow = _inflow(state, t, dt, inflow_rate).to(state)
    return _step_projected(state, geometry, inflow, dt, mac_cormack, pressure_solver)


def rollout(
    state0: Tensor,
    geometry: Tensor,
    n_frames: int,
    t0: float = 0.0,
    dt: float = 1.0,
    mac_cormack: bool = True,
    inflow_rate: float = INFLOW_RATE,
) -> Tensor:
    """Simulate n_frames frames from state0 at physical time t0 (frame k at t0 + 0.01·k·dt).

    Arguments:
        state0: Initial states, shape (B, 3, H, W).
        geometry: Obstacles, shape (B, n_max, 5).

    Returns:
        Trajectories including state0, shape (B, n_frames + 1, 3, H, W).
    """
    states = [state0]
    for k in range(n_frames):
        t = t0 + k * dt * FRAME_TIME
        states.append(step(states[-1], geometry, t, dt, mac_cormack, inflow_rate))
    return torch.stack(states, dim=1)
