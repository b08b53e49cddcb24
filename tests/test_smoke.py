"""Physical invariants of the smoke-64 simulator (simulators/smoke.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from simulators import smoke

RES = 64
H = smoke.DOMAIN / RES  # cell size


@pytest.fixture(scope="module")
def geometry() -> Tensor:
    return smoke.sample_obstacles(1, torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def trajectory(geometry: Tensor) -> Tensor:
    """25 frames from rest at 64², MacCormack: 20 with inflow, 5 after."""
    return smoke.rollout(smoke.initial_state(1, RES), geometry, 25)


def _smooth(a: Tensor, dim: int) -> Tensor:
    """[1, 2, 1] / 4 along dim, dropping the two edge entries."""
    n = a.shape[dim] - 2
    return (a.narrow(dim, 0, n) + 2 * a.narrow(dim, 1, n) + a.narrow(dim, 2, n)) / 4


def centred_divergence(v: Tensor) -> Tensor:
    """Divergence of centred velocities (2, H, W) that vanishes iff the MAC divergence does.

    With u_c = (u_{i-½} + u_{i+½}) / 2 (at_centers), the central difference of u_c in x is the
    [1, 2, 1]/4 average along x of the MAC differences D_x; smoothing it along y as well, and
    the y term along x, gives S_x S_y (D_x + D_y): the MAC divergence averaged over 3 × 3 cells.
    Shape (H − 2, W − 2): interior cells only.
    """
    dx = (v[0, :, 2:] - v[0, :, :-2]) / (2 * H)
    dy = (v[1, 2:, :] - v[1, :-2, :]) / (2 * H)
    return _smooth(dx, 0) + _smooth(dy, 1)


def test_projected_velocity_is_divergence_free(trajectory: Tensor, geometry: Tensor) -> None:
    mask = smoke.obstacle_mask(geometry, RES)
    near_obstacle = torch.nn.functional.max_pool2d(mask, 5, 1, 2)[0, 0, 1:-1, 1:-1] > 0
    for frame in (5, 15, 25):
        v = trajectory[0, frame, 1:]
        scale = v.abs().max() / H  # |v| / h: the divergence of an unprojected field
        div = centred_divergence(v)[~near_obstacle]
        # measured ~2e-6 relative (CG tolerance 1e-5); without the projection it is O(0.1)
        assert div.abs().max() < 1e-4 * scale, frame


def test_smoke_non_negative_and_conserved(trajectory: Tensor) -> None:
    s = trajectory[0, :, 0]
    # MacCormack's limiter clamps to the neighbourhood's range: measured min exactly 0
    assert s.min() >= -1e-3 * s.max()
    total = s.sum((-1, -2)) * H**2
    # the first frame adds r · (area of the inflow disc), up to its rasterisation (~1 %)
    inflow = smoke.INFLOW_RATE * math.pi * smoke.INFLOW_RADIUS**2
    assert abs(total[1] - inflow) < 0.05 * inflow
    # after the inflow stops (frame 20) and before smoke reaches the top rows, only advection
    # errors change the total: measured < 3 % over 5 frames (the inflow alone would add 20 %)
    assert s[20:, -RES // 8 :].max() < 1e-3 * s.max()
    assert (total[20:] - total[20]).abs().max() < 0.05 * total[20]


def test_no_flow_inside_obstacles(trajectory: Tensor, geometry: Tensor) -> None:
    mask = smoke.obstacle_mask(geometry, RES)
    v = trajectory[0, 1:, 1:]
    assert mask.sum() > 10
    assert v.abs().max() > 0.1  # the flow reached the upper half
    assert (v * mask).abs().max() < 1e-6 * v.abs().max()
    # the zeroing uses the mask, the projection PhiFlow's own obstacles: if the two disagreed
    # (e.g. x and y swapped), zeroing would cut flow through solid-by-mask cells and leave
    # divergence at the obstacles. Measured 8e-5 · |v| / h; with PhiFlow's obstacles
    # transposed 7e-4 to 1.5e-3
    for frame in (5, 15, 25):
        u = trajectory[0, frame, 1:]
        assert centred_divergence(u).abs().max() < 3e-4 * u.abs().max() / H, frame


def test_negative_dt_approximately_inverts(trajectory: Tensor, geometry: Tensor) -> None:
    x = trajectory[:, 20]  # inflow has stopped
    forward = smoke.rollout(x, geometry, 3, t0=0.2)
    back = smoke.rollout(forward[:, -1], geometry, 3, t0=0.23, dt=-1.0)[:, -1]
    change = forward[:, -1] - x
    # relative to what 3 frames changed (1 = no better than not stepping back). Measured at
    # 64²: smoke 0.24, all channels 0.33; the velocity round trip centred -> staggered ->
    # centred smooths, and semi-Lagrangian advection diffuses, in both directions.
    assert (back - x)[:, 0].norm() < 0.35 * change[:, 0].norm()
    assert (back - x).norm() < 0.5 * change.norm()


def test_gradient_matches_finite_differences() -> None:
    gen = torch.Generator().manual_seed(2)
    res = 32
    geometry = smoke.sample_obstacles(1, gen).double()
    x0 = smoke.rollout(
        smoke.initial_state(1, res, torch.float64), geometry, 8, mac_cormack=False
    )[:, -1]
    w = torch.randn(1, 3, res, res, generator=gen, dtype=torch.float64)

    def loss(s: Tensor) -> Tensor:
        x = torch.cat([s, x0[:, 1:]], 1)
        for k in range(3):
            x = smoke.step(x, geometry, 0.08 + 0.01 * k, mac_cormack=False)
        return (w * x).sum()

    s0 = x0[:, :1].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(s0), s0)
    eps = 1e-5
    for _ in range(3):
        d = torch.randn(s0.shape, generator=gen, dtype=torch.float64)
        fd = (loss(x0[:, :1] + eps * d) - loss(x0[:, :1] - eps * d)) / (2 * eps)
        # measured ≤ 2e-7 (CG tolerance 1e-10 in float64)
        assert abs((grad * d).sum() - fd) < 1e-4 * abs(fd)


def test_batch_of_16_matches_items_one_by_one() -> None:
    gen = torch.Generator().manual_seed(3)
    n = 16  # 16 · 64² > 46 340: needs the chunking
    assert n > smoke.max_chunk(RES)
    geometry = smoke.sample_obstacles(n, gen)
    x = smoke.initial_state(n, RES)
    # a smooth blob of smoke per item, low in the domain (a white-noise field costs ~8× the CG)
    c = (torch.rand(n, 2, 1, 1, generator=gen) * torch.tensor([60.0, 20.0])[:, None, None]) + 20
    yx = (torch.arange(RES) + 0.5) * H
    x[:, 0] = torch.exp(-((yx[None, :, None] - c[:, 1]) ** 2 + (yx - c[:, 0]) ** 2) / 200)
    batched = smoke.rollout(x, geometry, 2)[:, -1]
    single = torch.cat([smoke.rollout(x[i : i + 1], geometry[i : i + 1], 2)[:, -1] for i in range(n)])
    # different obstacles give different flows, and the batch reproduces each of them
    assert (batched[0, 1:] - batched[1, 1:]).abs().max() > 1e-2
    # CG (tolerance 1e-5) iterates until every item of a chunk converges: items differ ~1e-4
    assert (batched - single).abs().max() < 1e-3 * single.abs().max()


def test_sample_obstacles_reproducible_in_upper_half() -> None:
    a = smoke.sample_obstacles(64, torch.Generator().manual_seed(4))
    b = smoke.sample_obstacles(64, torch.Generator().manual_seed(4))
    c = smoke.sample_obstacles(64, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    kind, x, y, sx, sy = a.unbind(-1)
    boxes, spheres = (kind[:, :2] == 1).sum(1), (kind[:, 2:] == 2).sum(1)
    assert boxes.min() >= 1 and boxes.max() == 2 and spheres.min() >= 1 and spheres.max() == 2
    present = kind > 0
    half_height = torch.where(kind == 1, sy / 2, sx)
    assert (y - half_height)[present].min() >= smoke.DOMAIN / 2
    assert (y + half_height)[present].max() <= smoke.DOMAIN
    assert ((x - torch.where(kind == 1, sx / 2, sx))[present] >= 0).all()
    mask = smoke.obstacle_mask(a, RES)
    assert mask[..., : RES // 2, :].sum() == 0 and mask[..., RES // 2 :, :].sum() > 0


def test_obstacle_mask_matches_geometry() -> None:
    box = [1.0, 30.0, 70.0, 30.0, 10.0]  # wide and flat: catches an x / y transposition
    sphere = [2.0, 70.0, 60.0, 8.0, 8.0]
    geometry = torch.tensor([[box, sphere, [0.0] * 5]])
    mask = smoke.obstacle_mask(geometry, RES)[0, 0]
    rows, cols = mask.nonzero().unbind(-1)
    centres = (torch.stack([rows, cols], -1) + 0.5) * H  # (y, x)
    in_box = ((centres[:, 1] - 30).abs() <= 15) & ((centres[:, 0] - 70).abs() <= 5)
    in_sphere = (centres[:, 1] - 70) ** 2 + (centres[:, 0] - 60) ** 2 <= 64
    assert (in_box | in_sphere).all()
    # areas agree with the geometry up to the cells along the boundary
    area = mask.sum() * H**2
    exact = 30 * 10 + math.pi * 8**2
    perimeter = 2 * (30 + 10) + 2 * math.pi * 8
    assert abs(area - exact) < perimeter * H
    box_cells = mask[:, : RES // 2]
    assert box_cells.any(0).sum() > 2 * box_cells.any(1).sum()  # wider (x) than tall (y)
