"""The pressure projection of the smoke step (simulators/smoke.py) as a cached sparse solve.

PhiFlow's `fluid.make_incompressible` on the staggered velocity v (faces v_x: (H, W − 1),
v_y: (H, W): the walls' faces are not stored, the open top's are) computes

    v' = k ⊙ v                          k: 1 − obstacle volume fraction at each face
    A p = a ⊙ div v'                    A: masked Laplacian, a: fluid (active) cells
    v'' = v' − h ⊙ grad p               h: faces between two fluid cells (hard_bcs)

with p = 0 above the open top and ∂p/∂n = 0 at the walls. k, a, h and A depend only on the
obstacles, so they are made once per geometry: `masks` makes the calls make_incompressible makes
(`apply_boundary_conditions`, the accessible mask staggered with `minimum`; batched), `build`
assembles A from h and a (`laplacian`: 8× faster than tracing PhiFlow's `masked_laplace`, and
equal to its matrix, `phiflow_matrix`, which the tests check) and factorises it with SuperLU
(about 27 ms per geometry at 64² in all, 12 ms of it the factorisation). `project`
then applies the three lines above in torch on a batch whose items may all have different
obstacles; the solve is a `torch.autograd.Function` whose backward is the transposed solve
(the adjoint of p = A⁻¹ b is ∂b = A⁻ᵀ ∂p), so gradients w.r.t. the velocity are exact.

Two solvers behind one interface (`solve`; they live in simulators/smoke_pressure_solvers.py):
"lu" (scipy SuperLU, CPU, exact to rounding) and "cg" (batched conjugate gradients in torch on
the block-diagonal CSR matrix of the batch, for CUDA tensors, relative tolerance 1e-5 in float32
and 1e-12 in float64). This module holds the masks, the matrix assembly and regularisation, the
cache of factorisations per geometry, `solve` and the projection itself.

Sign and singular systems. A is negative semi-definite on the fluid cells and the identity in
obstacle cells (p = 0 there; no face couples the two). The solve uses S = −A on fluid rows and
the identity elsewhere, symmetric positive semi-definite, with right-hand side −a ⊙ div v'.
S is singular where a connected set of fluid cells (connected through faces with h > 0) has no
outlet to the open top: a fluid cell with all four faces closed (a zero row), or a pocket
enclosed by obstacles (and walls). There the Neumann problem fixes p only up to a constant and
is solvable only if the divergence sums to zero over the pocket; CG tolerates the first, LU
tolerates neither. We detect such components once per geometry (scipy.sparse.csgraph on the
off-diagonal pattern: a component is singular iff every row sums to zero, i.e. no Dirichlet
face at the top), and for each one
    (1) pin one cell: its row and column of S become the identity (p = 0 there), which keeps S
        symmetric and makes it positive definite; the other equations of the pocket then fix
        p up to that constant, and a constant shift of p in a pocket does not change grad p;
    (2) subtract the pocket's mean from the right-hand side, so the pocket's system is
        consistent. When it already is (the divergence sums to zero, e.g. when the obstacles
        close the pocket's faces), this changes nothing and the velocity equals PhiFlow's CG
        solution; when the soft obstacle faces let a net flux into the pocket, PhiFlow's CG
        cannot converge, and we return the least-squares projection instead.
Both are linear in the right-hand side, so the step stays linear in v and its adjoint exact.
Pinning was chosen over a small diagonal regularisation ε I on the pocket because it is exact
(no ε to trade between conditioning and bias) and keeps the LU well conditioned.

References:
    Harlow & Welch (1965), Numerical Calculation of Time-Dependent Viscous Incompressible Flow
    of Fluid with Free Surface, Phys. Fluids 8, 2182 (the MAC projection)
    Holl et al. (2020), Learning to Control PDEs with Differentiable Physics, arXiv:2001.07457
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from phi import field as phifield
from phi import geom
from phi import math as phimath
from phi.physics import fluid
from scipy.sparse import csgraph
from torch import Tensor

from simulators.smoke_pressure_solvers import _CGSolve, _LUSolve

__all__ = [
    "Projection",
    "build",
    "cache_clear",
    "divergence",
    "laplacian",
    "lookup",
    "masks",
    "phiflow_matrix",
    "project",
    "project_faces",
    "solve",
    "store",
]

CACHE_SIZE = 256  # geometries kept: ~2.7 MB each at 64² (LU factors 200k entries, masks)


@dataclass
class Projection:
    """Everything the projection needs for one obstacle geometry, on an (H, W) grid.

    Face arrays are (H, W − 1) for v_x and (H, W) for v_y (row i: the face above cell i; the
    bottom wall's faces are not stored). Cells are flattened row-major, index i·W + j.

    Attributes:
        keep_x, keep_y: k, 1 − obstacle volume fraction at the faces, float64.
        open_x, open_y: h, 1 between two fluid cells (and at the open top above one), float64.
        active: a, 1 in fluid cells, shape (H, W), float64.
        matrix: S, the pinned, sign-flipped masked Laplacian, scipy CSR (H·W)², float64.
        lu: SuperLU factorisation of S.
        pockets: (cells, component labels, pinned cells) of the singular components (module
            docstring), or None.
        spacing: Cell size (DOMAIN / resolution).
    """

    keep_x: Tensor
    keep_y: Tensor
    open_x: Tensor
    open_y: Tensor
    active: Tensor
    matrix: sp.csr_matrix
    lu: Any
    pockets: tuple[Tensor, Tensor, Tensor] | None
    spacing: float
    factor_seconds: float = 0.0
    _device_cache: dict[tuple[torch.device, torch.dtype], Any] = field(default_factory=dict,
                                                                        repr=False)

    def on(self, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        """Masks and torch CSR matrix (crow, col, values) on a device, cached."""
        key = (device, dtype)
        if key not in self._device_cache:
            s = self.matrix
            self._device_cache[key] = {
                "keep_x": self.keep_x.to(device, dtype), "keep_y": self.keep_y.to(device, dtype),
                "open_x": self.open_x.to(device, dtype), "open_y": self.open_y.to(device, dtype),
                "active": self.active.to(device, dtype),
                "crow": torch.as_tensor(s.indptr, dtype=torch.int64, device=device),
                "col": torch.as_tensor(s.indices, dtype=torch.int64, device=device),
                "values": torch.as_tensor(s.data, device=device).to(dtype),
                "pockets": None if self.pockets is None
                else tuple(t.to(device) for t in self.pockets),
            }
        return self._device_cache[key]


def masks(
    velocity: phifield.Field, obstacles: Sequence[Any]
) -> tuple[phimath.Tensor, phimath.Tensor, phimath.Tensor]:
    """make_incompressible's set-up (phi/physics/fluid.py, PhiFlow 3.4): the face factors k
    (`apply_boundary_conditions`), the open faces h (hard_bcs: the accessible mask staggered
    with `minimum`) and the active cells a. May be batched and jit-compiled.

    Arguments:
        velocity: A staggered velocity grid with the step's bounds, resolution and boundary
            (its values are ignored).
        obstacles: The obstacles as passed to make_incompressible.

    Returns:
        (k, h) staggered values (dual dim ~vector), a centred values.
    """
    obstacles = fluid._get_obstacles_for(obstacles, velocity)
    accessible = phifield.Field(velocity.geometry, ~geom.union([o.geometry for o in obstacles]),
                                fluid._accessible_extrapolation(velocity.extrapolation))
    hard_bcs = phifield.stagger(accessible, phimath.minimum, velocity.boundary,
                                at=velocity.sampled_at, dims=velocity.vector.item_names)
    keep = fluid.apply_boundary_conditions(velocity.with_values(1.0), obstacles)
    return keep.values, hard_bcs.values, accessible.values


def phiflow_matrix(velocity: phifield.Field, obstacles: Sequence[Any]) -> sp.csr_matrix:
    """PhiFlow's own masked Laplacian A (`masked_laplace.sparse_matrix_and_bias`) for one
    unbatched geometry, cells flattened row-major (y, x): the reference for `laplacian`."""
    obstacles = fluid._get_obstacles_for(obstacles, velocity)
    with phimath.NUMPY:
        accessible = phifield.Field(
            velocity.geometry, ~geom.union([o.geometry for o in obstacles]),
            fluid._accessible_extrapolation(velocity.extrapolation))
        hard = phifield.stagger(accessible, phimath.minimum, velocity.boundary,
                                at=velocity.sampled_at, dims=velocity.vector.item_names)
    active = accessible.with_extrapolation(phimath.extrapolation.NONE)
    pressure = phifield.Field(accessible.geometry, 0,
                              fluid._pressure_extrapolation(velocity.extrapolation))
    a, bias = fluid.masked_laplace.sparse_matrix_and_bias(
        pressure, velocity.boundary, hard, active, wide_stencil=False, order=2,
        implicit=None, upwind=None, correct_skew=False)
    if not phimath.close(bias, 0):
        raise ValueError("masked Laplacian with a non-zero bias: the pressure BCs changed")
    nat = a.native()
    res_y, res_x = (velocity.resolution.get_size(d) for d in "yx")
    n = res_x * res_y
    a_xy = sp.csr_matrix((nat.values().double().numpy(), nat.col_indices().numpy(),
                          nat.crow_indices().numpy()), shape=(n, n))
    perm = np.arange(n).reshape(res_x, res_y).T.ravel()  # PhiFlow flattens (x, y)
    return a_xy[perm][:, perm].tocsr()


def laplacian(open_x: np.ndarray, open_y: np.ndarray, active: np.ndarray,
              spacing: float) -> sp.csr_matrix:
    """The masked Laplacian A of PhiFlow's `masked_laplace`, assembled directly.

    (A p)_c = Σ_f h_f (p_n(f) − p_c) / Δx² over the faces f of an active cell c, with p = 0
    beyond the open top and no wall faces (∂p/∂n = 0); (A p)_c = p_c in obstacle cells.

    Arguments:
        open_x: h on the interior vertical faces, (H, W − 1).
        open_y: h on the horizontal faces above each cell, (H, W) (row H − 1: the open top).
        active: a, (H, W).
        spacing: Δx.

    Returns:
        A, (H·W)², cells flattened row-major.
    """
    hh, ww = active.shape
    index = np.arange(hh * ww).reshape(hh, ww)
    w = 1 / spacing**2
    rows, cols, vals = [], [], []
    diag = np.zeros((hh, ww))
    for weight, here, there in [
        (open_x, index[:, :-1], index[:, 1:]),
        (open_y[:-1], index[:-1], index[1:]),
    ]:
        c = weight.ravel() * w
        rows += [here.ravel(), there.ravel()]
        cols += [there.ravel(), here.ravel()]
        vals += [c, c]
        np.subtract.at(diag, np.unravel_index(here.ravel(), diag.shape), c)
        np.subtract.at(diag, np.unravel_index(there.ravel(), diag.shape), c)
    diag[-1] -= open_y[-1] * w  # p = 0 above the open top
    fluid_cells = active.ravel() > 0
    a = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(hh * ww, hh * ww))
    a = sp.diags(fluid_cells.astype(float)) @ a  # obstacle rows: identity
    a = a + sp.diags(np.where(fluid_cells, diag.ravel(), 1.0))
    a = a.tocsr()
    a.eliminate_zeros()
    return a


def build(keep_x: Tensor, keep_y: Tensor, open_x: Tensor, open_y: Tensor, active: Tensor,
          spacing: float) -> Projection:
    """The `Projection` of one geometry from its masks (`masks`): assemble, regularise and
    factorise the matrix.

    Arguments:
        keep_x, keep_y, open_x, open_y: Face factors k and h, (H, W − 1) and (H, W).
        active: a, (H, W).
        spacing: Cell size Δx.
    """
    keep_x, keep_y, open_x, open_y, active = (
        t.detach().to("cpu", torch.float64) for t in (keep_x, keep_y, open_x, open_y, active))
    t0 = time.perf_counter()
    a = laplacian(open_x.numpy(), open_y.numpy(), active.numpy(), spacing)
    matrix, pockets = _regularise(a, active.numpy().ravel() > 0)
    lu = spla.splu(matrix.tocsc())
    return Projection(keep_x, keep_y, open_x, open_y, active, matrix, lu, pockets, spacing,
                      time.perf_counter() - t0)


def _regularise(
    a: sp.csr_matrix, fluid_cells: np.ndarray
) -> tuple[sp.csr_matrix, tuple[Tensor, Tensor, Tensor] | None]:
    """S = −A on fluid rows (identity elsewhere), with one cell of each singular component
    pinned; returns S and the singular components' (cells, labels, pinned cells)."""
    sign = np.where(fluid_cells, -1.0, 1.0)
    s = sp.diags(sign) @ a
    s = s.tocsr()
    off = s - sp.diags(s.diagonal())
    off.eliminate_zeros()
    n_comp, label = csgraph.connected_components(off, directed=False)
    scale = np.abs(s.diagonal()).max()
    row_sum = np.asarray(s.sum(axis=1)).ravel()
    # a row with a Dirichlet face (or an identity row) sums to ≥ 1/h²; pure Neumann rows to 0
    regular = np.zeros(n_comp, bool)
    np.logical_or.at(regular, label, np.abs(row_sum) > 1e-8 * scale)
    singular = np.flatnonzero(~regular)
    if singular.size == 0:
        return s, None
    cells = np.flatnonzero(np.isin(label, singular))
    labels = np.searchsorted(singular, label[cells])
    pinned = cells[np.unique(labels, return_index=True)[1]]  # first cell of each component
    keep = np.ones(s.shape[0])
    keep[pinned] = 0.0
    s = (sp.diags(keep) @ s @ sp.diags(keep) + sp.diags(1.0 - keep)).tocsr()
    s.eliminate_zeros()
    return s, (torch.as_tensor(cells), torch.as_tensor(labels), torch.as_tensor(pinned))


_CACHE: OrderedDict[tuple[bytes, int, str], Projection] = OrderedDict()


def lookup(key: tuple[bytes, int, str]) -> Projection | None:
    """The cached projection for key (geometry bytes, resolution, dtype), or None."""
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    return None


def store(key: tuple[bytes, int, str], projection: Projection) -> None:
    """Cache a projection, dropping the least recently used beyond CACHE_SIZE."""
    _CACHE[key] = projection
    while len(_CACHE) > CACHE_SIZE:
        _CACHE.popitem(last=False)


def cache_clear() -> None:
    """Drop all cached factorisations."""
    _CACHE.clear()


def solve(rhs: Tensor, projections: Sequence[Projection], solver: str = "lu") -> Tensor:
    """p = A_b⁻¹ rhs_b per item, with the singular components handled (module docstring).

    Arguments:
        rhs: a ⊙ div v', shape (B, H, W).
        projections: One `Projection` per item.
        solver: "lu" (CPU, SuperLU) or "cg" (torch, any device).

    Returns:
        Pressure, shape (B, H, W), differentiable w.r.t. rhs.
    """
    projections = tuple(projections)
    shape = rhs.shape
    r = -rhs.reshape(shape[0], -1)  # S = −A on fluid cells; rhs is 0 in obstacle cells
    corrections = []
    for i, p in enumerate(projections):
        pockets = p.on(rhs.device, rhs.dtype)["pockets"]
        if pockets is None:
            corrections.append(torch.zeros_like(r[i]))
            continue
        cells, labels, pinned = pockets
        n = int(labels.max()) + 1
        total = r.new_zeros(n).index_add(0, labels, r[i, cells])
        count = r.new_zeros(n).index_add(0, labels, torch.ones_like(r[i, cells]))
        # subtract each pocket's mean; the pinned rows are p = 0, so their right-hand side is 0
        correction = r.new_zeros(r.shape[1]).index_put((cells,), (total / count)[labels])
        corrections.append(correction.index_put((pinned,), r[i, pinned]))
    r = r - torch.stack(corrections)
    if solver == "lu":
        x = _LUSolve.apply(r, projections)
    elif solver == "cg":
        x = _CGSolve.apply(r, projections)
    else:
        raise ValueError(f"pressure solver: expected 'lu' or 'cg', got {solver!r}")
    return x.reshape(shape)


def divergence(vx: Tensor, vy: Tensor, spacing: float) -> Tensor:
    """MAC divergence of staggered faces (B, H, W − 1), (B, H, W) with v·n = 0 at the walls:
    shape (B, H, W)."""
    fx = torch.nn.functional.pad(vx, (1, 1))  # left and right walls
    fy = torch.nn.functional.pad(vy, (0, 0, 1, 0))  # bottom wall; the open top's faces are stored
    return (fx[..., 1:] - fx[..., :-1] + fy[..., 1:, :] - fy[..., :-1, :]) / spacing


def project_faces(vx: Tensor, vy: Tensor, projections: Sequence[Projection],
                  solver: str = "lu") -> tuple[Tensor, Tensor]:
    """make_incompressible on staggered faces: v' = k ⊙ v, A p = a ⊙ div v', v' − h ⊙ grad p.

    Arguments:
        vx: Faces of v_x, shape (B, H, W − 1) (interior vertical faces).
        vy: Faces of v_y, shape (B, H, W) (row i: the face above cell i, the top included).
        projections: One `Projection` per item (`build`).
        solver: "lu" or "cg" (`solve`).

    Returns:
        The projected faces, same shapes.
    """
    masks = [p.on(vx.device, vx.dtype) for p in projections]

    def stack(name: str) -> Tensor:
        return torch.stack([m[name] for m in masks])

    h = projections[0].spacing
    vx, vy = vx * stack("keep_x"), vy * stack("keep_y")
    p = solve(divergence(vx, vy, h) * stack("active"), projections, solver)
    gx = (p[..., 1:] - p[..., :-1]) / h
    gy = (torch.nn.functional.pad(p, (0, 0, 0, 1))[..., 1:, :] - p) / h  # p = 0 above the top
    return vx - stack("open_x") * gx, vy - stack("open_y") * gy


def project(vx: Tensor, vy: Tensor, projections: Sequence[Projection],
            solver: str = "lu") -> tuple[Tensor, Tensor]:
    """`project_faces`, then PhiFlow's `at_centers` (the mean of a cell's two faces).

    Returns:
        The projected velocity (v_x, v_y) at cell centres, each (B, H, W), not yet masked.
    """
    vx, vy = project_faces(vx, vy, projections, solver)
    fx = torch.nn.functional.pad(vx, (1, 1))
    fy = torch.nn.functional.pad(vy, (0, 0, 1, 0))
    return (fx[..., 1:] + fx[..., :-1]) / 2, (fy[..., 1:, :] + fy[..., :-1, :]) / 2
