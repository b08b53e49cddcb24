"""smoke-64's set-up, shared by the step (simulators/smoke.py) and the PhiFlow layer
(simulators/smoke_phiflow.py): the constants, the initial state, the obstacle sampler and solid
mask, and the inflow per item. Pure torch; the conventions are in simulators/smoke.py's docstring.
"""

from __future__ import annotations

import torch
from torch import Tensor

DOMAIN = 100.0  # side of the square domain
BUOYANCY = 0.1  # upward acceleration per unit smoke
INFLOW_CENTRE = (50.0, 10.0)
INFLOW_RADIUS = 5.0
INFLOW_RATE = 0.2  # smoke added per frame in inflow cells
INFLOW_END = 0.2  # physical time until which the inflow is added
FRAME_TIME = 0.01  # physical time of one frame (simulator dt = 1)


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


def _inflow(state: Tensor, t: float | Tensor, dt: float, inflow_rate: float) -> Tensor:
    """r · dt per item where t < 0.2 and dt > 0, else 0; shape (B,), float64."""
    t = torch.as_tensor(t, dtype=torch.float64).expand(state.shape[0])
    # frames are 0.01 apart: the margin keeps t = 0.2 (as 0.2000001 or 0.1999999) out
    return torch.where(t < INFLOW_END - 1e-6, inflow_rate * dt, 0.0) if dt > 0 else torch.zeros_like(t)

