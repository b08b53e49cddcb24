"""The cached-factorisation pressure projection of the smoke step (simulators/smoke_pressure.py)
against PhiFlow's own CG solve (`smoke.step_phiflow`), finite differences and itself."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from simulators import smoke, smoke_pressure

RES = 16
H = smoke.DOMAIN / RES
F64 = torch.float64


def random_state(n: int, gen: torch.Generator, dtype: torch.dtype = F64) -> Tensor:
    """A smoke blob low in the domain and small random velocities, shape (n, 3, RES, RES)."""
    yx = (torch.arange(RES, dtype=dtype) + 0.5) * H
    c = torch.rand(n, 2, 1, 1, generator=gen, dtype=dtype) * 40 + 20
    blob = torch.exp(-((yx[:, None] - c[:, 1]) ** 2 + (yx - c[:, 0]) ** 2) / 300)
    v = 0.3 * torch.randn(n, 2, RES, RES, generator=gen, dtype=dtype)
    return torch.cat([blob[:, None], v], 1)


def ring(inner: float) -> Tensor:
    """Four boxes enclosing a square pocket of fluid of side ≈ inner around (47, 72): (1, 4, 5)."""
    x, y, w = 47.0, 72.0, 6.0  # centre, wall thickness
    half = inner / 2 + w / 2
    side = inner + 2 * w
    rows = [[1, x, y + half, side, w], [1, x, y - half, side, w],
            [1, x - half, y, w, side], [1, x + half, y, w, side]]
    return torch.tensor([rows], dtype=F64)


@pytest.fixture(scope="module")
def geometry() -> Tensor:
    return smoke.sample_obstacles(3, torch.Generator().manual_seed(11)).double()


def test_gradient_matches_finite_differences(geometry: Tensor) -> None:
    gen = torch.Generator().manual_seed(12)
    x0 = random_state(3, gen)
    x0 = smoke.step(x0, geometry, 0.1, mac_cormack=False)  # projected, then noise off the grid
    x0 = x0 + 1e-3 * torch.randn(x0.shape, generator=gen, dtype=F64)
    w = torch.randn(x0.shape, generator=gen, dtype=F64)

    def loss(x: Tensor) -> Tensor:
        for k in range(2):
            x = smoke.step(x, geometry, 0.1 + 0.01 * k, mac_cormack=False)
        return (w * x).sum()

    x = x0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x), x)
    eps = 1e-6
    for _ in range(3):
        d = torch.randn(x0.shape, generator=gen, dtype=F64)
        fd = (loss(x0 + eps * d) - loss(x0 - eps * d)) / (2 * eps)
        # semi-Lagrangian interpolation is piecewise linear: a kink within eps of a sample
        # point is the only error left (measured 1e-9 to 4e-5)
        assert abs((grad * d).sum() - fd) < 1e-4 * abs(fd)


@pytest.mark.parametrize("mac_cormack", [True, False])
def test_matches_phiflow_solve(geometry: Tensor, mac_cormack: bool) -> None:
    gen = torch.Generator().manual_seed(13)
    x0 = random_state(3, gen)
    w = torch.randn(x0.shape, generator=gen, dtype=F64)
    x = x0.clone().requires_grad_(True)
    new = smoke.step(x, geometry, 0.1, mac_cormack=mac_cormack)
    old = smoke.step_phiflow(x, geometry, 0.1, mac_cormack=mac_cormack)
    # PhiFlow's CG stops at 1e-10 in float64: measured 2e-11 in values, 2e-10 in gradients
    assert (new - old).abs().max() < 1e-8 * old.abs().max()
    (g_new,) = torch.autograd.grad((w * new).sum(), x)
    (g_old,) = torch.autograd.grad((w * old).sum(), x)
    assert (g_new - g_old).abs().max() < 1e-8 * g_old.abs().max()


def test_float32_matches_phiflow_solve(geometry: Tensor) -> None:
    x = random_state(3, torch.Generator().manual_seed(14), torch.float32)
    g = geometry.float()
    new, old = smoke.step(x, g, 0.1), smoke.step_phiflow(x, g, 0.1)
    # CG tolerance 1e-5: measured 2e-6 relative
    assert (new - old).abs().max() < 2e-5 * old.abs().max()


@pytest.mark.parametrize("inner", [20.0, 5.0])  # a 3 × 3 pocket, and one enclosed cell
def test_enclosed_pocket_is_finite_and_matches_phiflow(inner: float) -> None:
    geometry = ring(inner)
    (projection,) = smoke._projections(geometry, RES, F64)
    assert projection.pockets is not None
    cells = projection.pockets[0]
    assert cells.numel() == (1 if inner < H else round(inner / H)) ** 2
    x = random_state(1, torch.Generator().manual_seed(15))
    # no flow and no smoke near the ring: the pocket's Neumann problem is consistent (its
    # divergence is 0), so PhiFlow's CG converges there and the two must agree everywhere
    solid = smoke.obstacle_mask(geometry, RES)
    near = torch.nn.functional.max_pool2d(solid, 7, 1, 3) > 0
    x = torch.where(near, 0.0, x)
    new = smoke.step(x, geometry, 0.1)
    old = smoke.step_phiflow(x, geometry, 0.1)
    assert torch.isfinite(new).all()
    assert (new - old).abs().max() < 1e-8 * old.abs().max()
    cg = smoke.step(x, geometry, 0.1, pressure_solver="cg")
    assert (new - cg).abs().max() < 1e-9 * new.abs().max()


def test_inconsistent_pocket_gets_least_squares_projection() -> None:
    """With flow through the pocket's partly open faces, the pocket's divergence does not sum to
    zero; the projection then leaves the pocket's mean divergence and removes the rest."""
    geometry = ring(20.0)
    (projection,) = smoke._projections(geometry, RES, F64)
    gen = torch.Generator().manual_seed(16)
    vx = torch.randn(2, RES, RES - 1, generator=gen, dtype=F64)
    vy = torch.randn(2, RES, RES, generator=gen, dtype=F64)
    fx, fy = smoke_pressure.project_faces(vx, vy, [projection] * 2, "lu")
    div = smoke_pressure.divergence(fx, fy, projection.spacing) * projection.active
    cells = projection.pockets[0]
    pocket = div.flatten(1)[:, cells]
    outside = div.flatten(1).index_fill(1, cells, 0.0)
    scale = div.new_tensor(1 / H)  # |v| / h
    assert outside.abs().max() < 1e-10 * scale
    assert pocket.mean(1).abs().min() > 1e-3 * scale  # the test has a net flux to remove
    assert (pocket - pocket.mean(1, keepdim=True)).abs().max() < 1e-10 * scale


def test_batch_with_different_obstacles_matches_items_one_by_one(geometry: Tensor) -> None:
    gen = torch.Generator().manual_seed(17)
    x = random_state(3, gen)
    w = torch.randn(x.shape, generator=gen, dtype=F64)
    xb = x.clone().requires_grad_(True)
    batched = smoke.step(xb, geometry, 0.1)
    (g_batched,) = torch.autograd.grad((w * batched).sum(), xb)
    for i in range(3):
        xi = x[i : i + 1].clone().requires_grad_(True)
        single = smoke.step(xi, geometry[i : i + 1], 0.1)
        (g_single,) = torch.autograd.grad((w[i : i + 1] * single).sum(), xi)
        assert (batched[i : i + 1] - single).abs().max() < 1e-12 * single.abs().max()
        assert (g_batched[i : i + 1] - g_single).abs().max() < 1e-12 * g_single.abs().max()
    assert (batched[0, 1:] - batched[1, 1:]).abs().max() > 1e-2  # different obstacles


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_lu_matches_torch_cg(geometry: Tensor, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(18)
    x = random_state(3, gen, dtype)
    g = geometry.to(dtype)
    w = torch.randn(x.shape, generator=gen, dtype=dtype)
    outs = {}
    for solver in ("lu", "cg"):
        xr = x.clone().requires_grad_(True)
        y = smoke.step(xr, g, 0.1, pressure_solver=solver)
        outs[solver] = (y, *torch.autograd.grad((w * y).sum(), xr))
    tol = 1e-10 if dtype == F64 else 2e-5  # CG tolerance 1e-12 / 1e-5 relative
    for lu, cg in zip(outs["lu"], outs["cg"], strict=True):
        assert (lu - cg).abs().max() < tol * lu.abs().max()


def test_gradient_same_on_every_call(geometry: Tensor) -> None:
    """TorchScript's profiling executor optimises a traced graph after its first runs, and its
    optimised graph gave wrong gradients through the jitted advection (off by O(1) from the
    second call on) until the step ran it with `torch.jit.optimized_execution(False)`."""
    gen = torch.Generator().manual_seed(19)
    x = random_state(3, gen)
    w = torch.randn(x.shape, generator=gen, dtype=F64)
    grads = []
    for _ in range(4):
        xr = x.clone().requires_grad_(True)
        grads.append(torch.autograd.grad((w * smoke.step(xr, geometry, 0.1)).sum(), xr)[0])
    for g in grads[1:]:
        assert torch.equal(g, grads[0])


@pytest.mark.parametrize("case", ["sampled", "ring"])
def test_assembled_matrix_is_phiflows(geometry: Tensor, case: str) -> None:
    """The masked Laplacian assembled from the masks equals PhiFlow's `masked_laplace` matrix."""
    g = geometry[:1] if case == "sampled" else ring(5.0)
    (projection,) = smoke._projections(g, RES, F64)
    mine = smoke_pressure.laplacian(projection.open_x.numpy(), projection.open_y.numpy(),
                                    projection.active.numpy(), projection.spacing)
    reference = smoke._phiflow_matrix(g[0], RES)
    assert abs(mine - reference).max() < 1e-12 * abs(reference).max()
