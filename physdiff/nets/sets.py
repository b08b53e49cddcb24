"""Networks for particle systems: states (B, N, F), N bodies with F features each (docs/method.md §3).

For the 2D N-body toy F = 4 (x, y, vx, vy). Bodies carry no order, so both modules treat the
state as a set: a permutation of the bodies (with their masses) permutes the output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from physdiff.nets.blocks import TimeEmbedding

__all__ = ["PairwiseForce", "SetScoreNet"]


def _masses(masses: Tensor) -> Tensor:
    """A copy of positive masses (N,) as a floating tensor, for a buffer."""
    m = torch.as_tensor(masses)
    m = m.clone() if m.is_floating_point() else m.to(torch.get_default_dtype())
    if m.ndim != 1 or not (m > 0).all():
        raise ValueError(f"masses must be positive with shape (N,), got {m.tolist()}")
    return m


class _Block(nn.Module):
    """Pre-LayerNorm transformer block over bodies, FiLM from the time embedding on both norms.

    Shapes: h (B, N, W), e (B, W) -> (B, N, W). No positional encoding, so the block is
    permutation-equivariant over bodies.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.SiLU(), nn.Linear(4 * width, width))
        self.film = nn.Linear(width, 4 * width)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        scale1, shift1, scale2, shift2 = self.film(e)[:, None, :].chunk(4, dim=-1)
        y = self.norm1(h) * (1 + scale1) + shift1
        # (B, N, 3W) -> 3 × (B, heads, N, W / heads)
        q, k, v = self.qkv(y).unflatten(-1, (3, self.heads, -1)).permute(2, 0, 3, 1, 4)
        h = h + self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2))
        return h + self.mlp(self.norm2(h) * (1 + scale2) + shift2)


class SetScoreNet(nn.Module):
    """Score of a set of bodies, s_θ(x, t) ≈ ∇log p_t(x), permutation-equivariant over bodies.

    Each body becomes a token from [x_i, m_i / mean(m), x_i − x_cm], where x_cm = Σ m_j x_j / Σ m_j
    is the mass-weighted mean over bodies: the centre-of-mass frame makes translations (and, for
    velocities, Galilean boosts) easy to learn. Masses are normalised by their mean because only
    ratios matter for a fixed system, and O(1) features keep the input layer well conditioned.
    Then `depth` pre-LayerNorm transformer blocks (self-attention over bodies + MLP, residual,
    no positional encoding; Vaswani et al. 2017, arXiv:1706.03762), each FiLM-conditioned on
    `TimeEmbedding(t)`, and a linear head to F.

    The head is zero-initialised, so an untrained score is 0 and training starts from the
    physics-only reverse step. Its output is multiplied by `out_scale` (use 1 / (g √dt), the size
    of a one-step score, so the head stays O(1)) and by `out_mask` (F,), which zeroes the
    components that carry no noise (positions, when noise acts on velocities only) exactly.

    Shapes: x (B, N, F), t (B,) -> (B, N, F). N is fixed by `masses` (N,).
    """

    def __init__(self, n_features: int, masses: Tensor, t_max: float, out_scale: float,
                 out_mask: Tensor | None = None, width: int = 64, depth: int = 2,
                 heads: int = 4) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        out_mask = torch.ones(n_features) if out_mask is None else torch.as_tensor(out_mask)
        if out_mask.shape != (n_features,):
            raise ValueError(f"out_mask must have shape ({n_features},), got {tuple(out_mask.shape)}")
        self.n_features = n_features
        self.register_buffer("masses", _masses(masses))
        self.register_buffer("out_mask", out_mask.to(self.masses.dtype, copy=True))
        self.register_buffer("out_scale", torch.tensor(float(out_scale)))
        self.embed = TimeEmbedding(width, t_max)
        self.inp = nn.Linear(2 * n_features + 1, width)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, n_features)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        n = len(self.masses)
        if x.ndim != 3 or x.shape[1:] != (n, self.n_features):
            raise ValueError(
                f"score network expects states of shape (B, {n}, {self.n_features}) "
                f"({n} bodies), got {tuple(x.shape)}"
            )
        m = self.masses.to(x)
        x_cm = (m[:, None] * x).sum(dim=1, keepdim=True) / m.sum()  # (B, 1, F)
        mass = (m / m.mean()).expand(x.shape[0], n)[..., None]  # (B, N, 1)
        h = self.inp(torch.cat([x, mass, x - x_cm], dim=-1))
        e = self.embed(t)
        for block in self.blocks:
            h = block(h, e)
        return self.head(self.norm(h)) * self.out_scale * self.out_mask


class PairwiseForce(nn.Module):
    """A learned central pair force, the drift P_φ of a learned-physics N-body model.

    a_i = Σ_{j≠i} m_j φ(r_ij) (r_j − r_i),   r_ij = |r_j − r_i|,

    so the force on i from j, m_i m_j φ(r_ij)(r_j − r_i), is minus the force on j from i: total
    momentum Σ m_i a_i = 0 exactly (Newton's third law by construction), and a_i is translation-
    invariant and rotation- and permutation-equivariant. With ε = `softening_init` (fixed) and
    the dimensionless features f = [r / ε, (1 + r²/ε²)^(-1/2), (1 + r²/ε²)^(-3/2)],

    φ(r) = ε⁻³ (w·f + b + MLP(f)),

    initialised with w = (0, 0, `strength_init`), b = 0 and a zero last MLP layer, i.e. softened
    gravity with G = strength_init, φ = G (r² + ε²)^(-3/2) (0: no force at all, for a drift
    learned from data alone). The linear term can learn G exactly; the MLP the correction.

    Shapes: pos (..., N, D) -> accelerations (..., N, D); D = 2 for the toy. Memory is
    O(N² · width): meant for small N.
    """

    def __init__(self, masses: Tensor, width: int = 64, depth: int = 2,
                 softening_init: float = 0.1, strength_init: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("masses", _masses(masses))
        self.softening = float(softening_init)
        self.linear = nn.Linear(3, 1)
        with torch.no_grad():
            self.linear.weight.copy_(torch.tensor([[0.0, 0.0, strength_init]]))
            self.linear.bias.zero_()
        layers: list[nn.Module] = []
        for i in range(depth):
            layers += [nn.Linear(3 if i == 0 else width, width), nn.SiLU()]
        layers.append(nn.Linear(width if depth else 3, 1))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.mlp = nn.Sequential(*layers)

    def forward(self, pos: Tensor) -> Tensor:
        n = len(self.masses)
        if pos.ndim < 2 or pos.shape[-2] != n:
            raise ValueError(f"force expects positions of shape (..., {n}, D), got {tuple(pos.shape)}")
        eps = self.softening
        d = pos[..., None, :, :] - pos[..., :, None, :]  # d[..., i, j, :] = r_j − r_i
        eye = torch.eye(n, dtype=pos.dtype, device=pos.device)
        # 1 on the diagonal, not 0, so no root or power of 0 is taken there (NaN gradients)
        r2 = d.square().sum(-1) + eye
        # coincident distinct bodies (r2 = 0): r = 0 with a zero, not infinite, gradient
        r = torch.where(r2 > 0, r2, 1).sqrt() * (r2 > 0)
        q = 1 + r2 / eps**2
        f = torch.stack([r / eps, q.rsqrt(), q.pow(-1.5)], dim=-1)  # (..., N, N, 3)
        phi = (self.linear(f) + self.mlp(f)).squeeze(-1) / eps**3
        w = phi * (1 - eye) * self.masses.to(pos)  # zero the i = j terms; m_j along the last axis
        return torch.einsum("...ij,...ijd->...id", w, d)
