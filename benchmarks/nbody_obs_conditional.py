#!/usr/bin/env python3
"""Why nbody-5 from positions only is not calibrated: the end-state prior put to a direct test
(issue 11; benchmarks/nbody_obs.py is the benchmark itself).

Three diagnostics at σ_y = 0.01, with the true-simulator model of benchmarks/nbody.py:
1. How much the end positions say about the end velocities *in the mean*: the held-out residual
   variance of a regression v_T ~ f(q_T) (an MLP, squared error) against v_T's marginal variance.
2. How much the noise-free backward integration from T to 0 amplifies a velocity error at T
   (quantiles over the test end states).
3. A conditional density of v_T given q_T in place of the learned score at T: a mixture of K
   full-covariance Gaussians over the 10 velocity coordinates (a mixture density network, MLP
   of width 256), fitted by likelihood to end states under random rotations, reflections and
   relabellings of the (equal-mass) bodies. For every test observation y, 19 draws
   q_T ~ N(y, σ_y²), v_T ~ p(v_T | q_T) go through the model's reverse SDE and are scored as
   benchmarks/nbody_obs.py scores (SBC, coverage), beside the x_0 velocity variance (the prior's
   is 0.072; a posterior's mean variance cannot exceed it).

Writes benchmarks/results/nbody-5/nbody_obs_conditional-k<K>[-sim].json (no targets: a
diagnostic).

Examples:
    python benchmarks/nbody_obs_conditional.py      # the 2000 training end states, K = 1
    python benchmarks/nbody_obs_conditional.py --components 10 --simulate 100000
"""

from __future__ import annotations

import argparse
import json
import math
import time
from typing import Any

import torch
from common import ROOT
from torch import Tensor, nn

from physdiff.data import read
from physdiff.io import write_text_atomic
from physdiff.model import load_model, sample_posterior
from physdiff.runtime import code_version
from simulators import nbody

SIGMA = 0.01
DATA, OUT = ROOT / "datasets/nbody-5", ROOT / "benchmarks/results/nbody-5"


class MixtureDensity(nn.Module):
    """p(v | q) as a mixture of K Gaussians with full covariances L Lᵀ, all from an MLP of q."""

    def __init__(self, dim: int, components: int, width: int = 256) -> None:
        super().__init__()
        self.dim, self.k = dim, components
        self.body = nn.Sequential(nn.Linear(dim, width), nn.SiLU(), nn.Linear(width, width),
                                  nn.SiLU(), nn.Linear(width, width), nn.SiLU())
        self.head = nn.Linear(width, components * (1 + dim + dim * (dim + 1) // 2))
        self.register_buffer("tril", torch.tril_indices(dim, dim), persistent=False)

    def forward(self, q: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d = self.dim
        h = self.head(self.body(q)).view(q.shape[0], self.k, -1)
        chol = q.new_zeros(q.shape[0], self.k, d, d)
        chol[:, :, self.tril[0], self.tril[1]] = h[..., 1 + d:]
        diag = nn.functional.softplus(torch.diagonal(chol, dim1=-2, dim2=-1)) + 1e-3
        chol = torch.tril(chol, -1) + torch.diag_embed(diag)
        return h[..., 0].log_softmax(-1), h[..., 1:1 + d], chol

    def nll(self, q: Tensor, v: Tensor) -> Tensor:
        log_w, mean, chol = self(q)
        z = torch.linalg.solve_triangular(chol, (v[:, None] - mean)[..., None], upper=False)
        log_p = (-0.5 * z[..., 0].square().sum(-1) - torch.diagonal(chol, dim1=-2, dim2=-1)
                 .log().sum(-1) - 0.5 * self.dim * math.log(2 * math.pi))
        return -torch.logsumexp(log_w + log_p, -1).mean()

    @torch.no_grad()
    def sample(self, q: Tensor, gen: torch.Generator) -> Tensor:
        log_w, mean, chol = self(q)
        pick = torch.multinomial(log_w.exp(), 1, generator=gen)[:, 0]
        rows = torch.arange(q.shape[0])
        z = torch.randn(q.shape[0], self.dim, 1, generator=gen)
        return mean[rows, pick] + (chol[rows, pick] @ z)[..., 0]


def symmetric_copies(x: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random rotation, reflection and relabelling of each state (B, N, 4): (positions,
    velocities), flattened to (B, 2N) each."""
    b, n = x.shape[:2]
    angle = 2 * math.pi * torch.rand(b, generator=gen)
    c, s = angle.cos(), angle.sin()
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    rot[torch.rand(b, generator=gen) < 0.5, :, 1] *= -1
    x = x[torch.arange(b)[:, None], torch.argsort(torch.rand(b, n, generator=gen), -1)]
    pos, vel = (torch.einsum("bij,bnj->bni", rot, u).reshape(b, -1)
                for u in (x[..., :2], x[..., 2:]))
    return pos, vel


def fit(net: nn.Module, loss: Any, x: Tensor, steps: int, gen: torch.Generator) -> None:
    """Adam with a cosine schedule on random batches of 256 symmetric copies of x."""
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        q, v = symmetric_copies(x[torch.randint(0, x.shape[0], (256,), generator=gen)], gen)
        value = loss(q, v)
        opt.zero_grad()
        value.backward()
        nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        schedule.step()


def end_states(args: argparse.Namespace, gen: torch.Generator) -> Tensor:
    """The training set's end states, or `--simulate` fresh ones from the data's own recipe."""
    train = read(DATA / "train.h5", simulator="nbody")
    if len(set(train.meta.params["masses"])) != 1:
        raise SystemExit(f"{DATA}: relabelling bodies needs equal masses")
    if not args.simulate:
        return train.x[:, -1].float()
    p, meta = train.meta.params, train.meta
    masses = torch.tensor(p["masses"], dtype=torch.float64)
    x0 = nbody.sample_prior(args.simulate, len(masses), masses, gen, p["radius"],
                            p["velocity_scale"])
    return nbody.rollout(x0, masses, meta.n_steps, meta.dt, meta.g, gen, p["softening"],
                         p["substeps"])[:, -1].float()


def amplification(model: Any, x_T: Tensor, gen: torch.Generator) -> list[float]:
    """10/50/90 % quantiles of |δx_0| / |δv_T| for a small velocity error at T, integrated back
    without noise."""
    def back(x: Tensor) -> Tensor:
        for _ in range(model.meta.n_steps):
            x = nbody.leapfrog(x, -model.meta.dt, model.system.gravity(x),
                               model.system.substeps)
        return x

    x = x_T.double()
    dv = 1e-4 * torch.randn(x[..., 2:].shape, generator=gen, dtype=torch.float64)
    moved = back(torch.cat([x[..., :2], x[..., 2:] + dv], -1)) - back(x)
    ratio = moved.flatten(1).norm(dim=1) / dv.flatten(1).norm(dim=1)
    return torch.quantile(ratio, torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)).tolist()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--components", type=int, default=1, help="mixture components K (1)")
    p.add_argument("--simulate", type=int, default=0,
                   help="fit to N freshly simulated end states instead of the training set's")
    p.add_argument("--steps", type=int, default=6000, help="fitting updates (6000)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)  # network initialisation
    gen = torch.Generator().manual_seed(args.seed)
    model = load_model(OUT / "true" / "checkpoint.pt", torch.device("cpu"))
    x = end_states(args, gen)
    valid = read(DATA / "valid.h5", simulator="nbody").x[:, -1].float()
    q_valid, v_valid = valid[..., :2].flatten(1), valid[..., 2:].flatten(1)
    t0 = time.perf_counter()
    mean_net = nn.Sequential(nn.Linear(10, 256), nn.SiLU(), nn.Linear(256, 256), nn.SiLU(),
                             nn.Linear(256, 10))
    fit(mean_net, lambda q, v: (mean_net(q) - v).square().mean(), x, args.steps, gen)
    density = MixtureDensity(10, args.components)
    fit(density, density.nll, x, args.steps, gen)
    with torch.no_grad():
        residual = float((mean_net(q_valid) - v_valid).square().mean())
        valid_nll = float(density.nll(q_valid, v_valid))
    test = read(DATA / "test.h5", simulator="nbody")
    x_0, x_T = test.x[:, 0], test.x[:, -1]
    m, n = x_T.shape[0], 19
    y = x_T[..., :2] + SIGMA * torch.randn(x_T[..., :2].shape, generator=gen)
    q = (y[:, None] + SIGMA * torch.randn(m, n, *y.shape[1:], generator=gen)).reshape(m * n, -1)
    draws = torch.cat([q.view(m * n, -1, 2), density.sample(q, gen).view(m * n, -1, 2)], -1)
    x0 = sample_posterior(model, draws, 1, gen, batch_size=4000).reshape(m, n, *x_T.shape[1:])
    scores = model.system.evaluate(x_0, x_T, samples=x0)
    result = {
        "command": "python benchmarks/nbody_obs_conditional.py"
                   + (f" --components {args.components}" if args.components != 1 else "")
                   + (f" --simulate {args.simulate}" if args.simulate else ""),
        "version": code_version(), "sigma_y": SIGMA, "end_states": x.shape[0],
        "components": args.components, "fit_steps": args.steps,
        "seconds": round(time.perf_counter() - t0, 1),
        "v_T_marginal_variance": float(v_valid.var(0).mean()),
        "v_T_regression_residual_variance": residual,
        "density_valid_nll": valid_nll,
        "amplification_v_T_to_x_0_q10_q50_q90": amplification(model, x_T, gen),
        "draws_v_T_error": float((draws.view(m, n, -1, 4) - x_T[:, None])[..., 2:]
                                 .square().mean()),
        "x0_velocity_variance": float(x0[..., 2:].var(1).mean()),
        "x0_velocity_prior_variance": float(x_0[..., 2:].var(0).mean()),
        "scores": {k: scores[k] for k in ("mse_pos_per_sample", "coverage50", "coverage90",
                                          "sbc_p", "sbc_p_per_coord_bonferroni")},
        "targets": [],  # a diagnostic: issue 11's targets are scored in nbody_obs.json
    }
    print(json.dumps(result, indent=2))
    name = f"nbody_obs_conditional-k{args.components}" + ("-sim" if args.simulate else "")
    write_text_atomic(OUT / f"{name}.json", json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
