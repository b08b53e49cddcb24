"""The two linear solvers behind `smoke_pressure.solve`: S x = r per item for a batch whose
items may have different matrices, each a `torch.autograd.Function` whose backward solves with
Sᵀ (= S), so gradients are exact.

"lu": scipy SuperLU with the factorisation cached in each `Projection` (CPU, exact to
rounding; items sharing a factorisation go in one multi-rhs call). "cg": batched conjugate
gradients in torch on the block-diagonal CSR matrix of the batch (any device, for CUDA
tensors), relative tolerance 1e-5 in float32 and 1e-12 in float64.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from simulators.smoke_pressure import Projection

_CG_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}
_CG_MAX_ITERATIONS = 5000


class _LUSolve(torch.autograd.Function):
    """x_b = S_b⁻¹ r_b for each item b with SuperLU; backward ∂r_b = S_b⁻ᵀ ∂x_b."""

    @staticmethod
    def forward(ctx: Any, rhs: Tensor, projections: tuple[Projection, ...]) -> Tensor:
        ctx.projections = projections
        return _lu_apply(rhs, projections, "N")

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _lu_apply(grad, ctx.projections, "T"), None


def _lu_apply(rhs: Tensor, projections: tuple[Projection, ...], trans: str) -> Tensor:
    """Solve item by item, grouping items that share a factorisation into one multi-rhs call."""
    r = rhs.detach().cpu().double().numpy()
    out = np.empty_like(r)
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(projections):
        groups.setdefault(id(p), []).append(i)
    for items in groups.values():
        lu = projections[items[0]].lu
        out[items] = lu.solve(np.ascontiguousarray(r[items].T), trans=trans).T
    return torch.as_tensor(out).to(rhs)


class _CGSolve(torch.autograd.Function):
    """The same solve by batched conjugate gradients in torch (S is symmetric: the backward
    solves with the same matrix)."""

    @staticmethod
    def forward(ctx: Any, rhs: Tensor, projections: tuple[Projection, ...]) -> Tensor:
        ctx.projections = projections
        return _cg(rhs, projections)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return _cg(grad, ctx.projections), None


def _block_diagonal(projections: tuple[Projection, ...], device: torch.device,
                    dtype: torch.dtype) -> Tensor:
    """The batch's matrices as one block-diagonal torch CSR matrix."""
    mats = [p.on(device, dtype) for p in projections]
    n = projections[0].matrix.shape[0]
    nnz = torch.tensor([0] + [m["values"].numel() for m in mats], device=device).cumsum(0)
    crow = torch.cat([m["crow"][:-1] + nnz[i] for i, m in enumerate(mats)] + [nnz[-1:]])
    col = torch.cat([m["col"] + i * n for i, m in enumerate(mats)])
    values = torch.cat([m["values"] for m in mats])
    size = n * len(mats)
    return torch.sparse_csr_tensor(crow, col, values, (size, size))


def _cg(rhs: Tensor, projections: tuple[Projection, ...]) -> Tensor:
    """Batched CG on S x = rhs, rhs (B, n); each item stops at |r| ≤ tol · |rhs|."""
    b = rhs.detach()
    s = _block_diagonal(projections, b.device, b.dtype)
    tol = _CG_TOLERANCE.get(b.dtype, 1e-5) * b.norm(dim=1)
    x = torch.zeros_like(b)
    r = b.clone()
    d = r.clone()
    rr = (r * r).sum(1)
    for k in range(_CG_MAX_ITERATIONS):
        if k % 8 == 0 and bool((rr.sqrt() <= tol).all()):
            break
        sd = (s @ d.reshape(-1, 1)).reshape(b.shape)
        dsd = (d * sd).sum(1)
        alpha = torch.where(rr > 0, rr / torch.where(dsd > 0, dsd, 1.0), 0.0)[:, None]
        x = x + alpha * d
        r = r - alpha * sd
        rr_new = (r * r).sum(1)
        beta = torch.where(rr > 0, rr_new / torch.where(rr > 0, rr, 1.0), 0.0)[:, None]
        d = r + beta * d
        rr = rr_new
    else:
        raise RuntimeError(f"pressure CG did not converge in {_CG_MAX_ITERATIONS} iterations")
    return x

