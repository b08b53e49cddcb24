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

The approximate inverse step of docs/method.md §2 is `step` with dt < 0: advection runs backwards and
buoyancy is subtracted; the inflow is not subtracted (it is added only for dt > 0), since the
reverse task starts after the inflow has stopped (t ≥ 0.2) and the learned score absorbs the
rest.

References:
    Holl et al. (2020), Learning to Control PDEs with Differentiable Physics, arXiv:2001.07457
    Holzschuh et al. (2023), Solving Inverse Physics Problems with Score Matching, arXiv:2301.10250
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from phi import field as phifield
from phi import geom
from phi import math as phimath
from phi.physics import advect, fluid
from phi.torch import TORCH
from torch import Tensor

from simulators import smoke_pressure

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

DOMAIN = 100.0  # side of the square domain
BUOYANCY = 0.1  # upward acceleration per unit smoke
INFLOW_CENTRE = (50.0, 10.0)
INFLOW_RADIUS = 5.0
INFLOW_RATE = 0.2  # smoke added per frame in inflow cells
INFLOW_END = 0.2  # physical time until which the inflow is added
FRAME_TIME = 0.01  # physical time of one frame (simulator dt = 1)
_SPARSE_LIMIT = 46_340  # batch · H · W above this overflows PhiFlow's int32 sparse index
_FAR = -1e3  # position of unused obstacle rows: far outside the domain


def initial_state(
    batch: int, resolution: int = 64, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Zero smoke and velocity, shape (B, 3, resolution, resolution)."""
    return torch.zeros(batch, 3, resolution, resolution, dtype=dtype)


def sample_obstacles(
    n: int,
    generator: torch.Generator | None = None,
    box_size: tuple[float, float] = (6.0, 20.0),
    sphere_radius: tuple[float, float] = (3.0, 8.0),
    margin: float = 5.0,
    boxes: tuple[int, int] = (1, 2),
    spheres: tuple[int, int] = (1, 2),
) -> Tensor:
    """Draw boxes and spheres per simulation (counts uniform in `boxes`, `spheres`, inclusive;
    default 1–2 of each), entirely in the upper half y ≥ 50.

    Sizes are uniform in the given ranges (box extents per axis, sphere radii); centres are
    uniform such that each obstacle lies in [margin, 100 − margin] × [50, 100 − margin].
    Obstacles may overlap each other.

    Arguments:
        n: Number of simulations.
        generator: CPU generator for reproducibility.

    Returns:
        Geometry, shape (n, max boxes + max spheres, 5), rows [kind, x, y, size_x, size_y] (see
        module docstring): the first max-boxes rows are boxes, the rest spheres; rows beyond a
        simulation's count have kind 0.
    """
    if not (0 <= boxes[0] <= boxes[1] and 0 <= spheres[0] <= spheres[1]):
        raise ValueError(f"obstacle counts: expected 0 <= min <= max, got boxes {boxes}, "
                         f"spheres {spheres}")
    nb, ns = boxes[1], spheres[1]

    def uniform(low: float | Tensor, high: float | Tensor, shape: tuple[int, ...]) -> Tensor:
        u = torch.rand(shape, generator=generator, dtype=torch.float64)
        return low + (high - low) * u

    def count(low: int, high: int, rows: int) -> Tensor:  # (n, rows) presence
        k = torch.randint(low, high + 1, (n, 1), generator=generator)
        return torch.arange(rows)[None, :] < k

    half_box = uniform(*box_size, (n, nb, 2)) / 2  # (n, box, axis)
    box_x = uniform(margin + half_box[..., 0], DOMAIN - margin - half_box[..., 0], (n, nb))
    box_y = uniform(DOMAIN / 2 + half_box[..., 1], DOMAIN - margin - half_box[..., 1], (n, nb))
    radius = uniform(*sphere_radius, (n, ns))
    sphere_x = uniform(margin + radius, DOMAIN - margin - radius, (n, ns))
    sphere_y = uniform(DOMAIN / 2 + radius, DOMAIN - margin - radius, (n, ns))
    kind_box = torch.where(count(*boxes, nb), 1.0, 0.0)
    kind_sphere = torch.where(count(*spheres, ns), 2.0, 0.0)
    rows = [torch.stack([kind_box, box_x, box_y, 2 * half_box[..., 0], 2 * half_box[..., 1]], -1),
            torch.stack([kind_sphere, sphere_x, sphere_y, radius, radius], -1)]
    geometry = torch.cat(rows, dim=1)
    return torch.where(geometry[..., :1] > 0, geometry, 0.0).float()


def obstacle_mask(geometry: Tensor, resolution: int = 64) -> Tensor:
    """Solid mask: 1 in cells whose centre lies inside a box or sphere of the geometry.

    Arguments:
        geometry: Obstacles, shape (B, n_max, 5) (module docstring).

    Returns:
        Mask in {0, 1}, shape (B, 1, resolution, resolution), dtype of geometry.
    """
    h = DOMAIN / resolution
    c = (torch.arange(resolution, dtype=geometry.dtype, device=geometry.device) + 0.5) * h
    y, x = c[:, None], c[None, :]  # row i ↔ y_i, column j ↔ x_j
    kind, cx, cy, sx, sy = (geometry[..., k, None, None] for k in range(5))  # (B, n, 1, 1)
    in_box = ((x - cx).abs() <= sx / 2) & ((y - cy).abs() <= sy / 2) & (kind == 1)
    in_sphere = ((x - cx) ** 2 + (y - cy) ** 2 <= sx**2) & (kind == 2)
    return (in_box | in_sphere).any(dim=1, keepdim=True).to(geometry.dtype)


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


def _inflow(state: Tensor, t: float | Tensor, dt: float, inflow_rate: float) -> Tensor:
    """r · dt per item where t < 0.2 and dt > 0, else 0; shape (B,), float64."""
    t = torch.as_tensor(t, dtype=torch.float64).expand(state.shape[0])
    # frames are 0.01 apart: the margin keeps t = 0.2 (as 0.2000001 or 0.1999999) out
    return torch.where(t < INFLOW_END - 1e-6, inflow_rate * dt, 0.0) if dt > 0 else torch.zeros_like(t)


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
    """`_advect_fields` jit-compiled, one per scheme and dtype (as `_jitted`)."""
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
