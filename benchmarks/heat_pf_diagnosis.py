#!/usr/bin/env python3
"""Why the probability-flow ODE of a heat model fails: the learned reverse step's per-band gain
against the exact kernel's, and what a per-mode linear correction of the step does.

For each model: (1) the learned conditional-mean step m_θ(y) = y − Δt f(y, t) regressed on y per
Fourier mode on test states, averaged per radial band, at a few steps k, next to the exact gain
a v_k / v_{k+1}; the c = 1/2 step multiplies a mode by ½(2 − a) + ½ gain, so the product of these
factors over the 32 steps (printed per band) is how much the PF-ODE amplifies that band, exact
against learned. (2) The MSE over the Bayes limit of the c = 1 path and the c = 1/2 path as
trained, and after adding to every step the least-squares per-mode linear correction
β_k · ŷ fitted on training pairs (what an exactly linear kernel would need). Writes JSON.

Example:
    python benchmarks/heat_pf_diagnosis.py runs/bench-quick/data \\
        benchmarks/results/heat-quick/model benchmarks/results/heat-quick/one-step
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from common import ROOT

from physdiff.io import write_text_atomic
from physdiff.model import load_model, read_split
from physdiff.runtime import code_version
from simulators import heat

BANDS = [(0.5, 4), (4, 8), (8, 16), (16, 23)]


def exact_variances(meta: Any, n: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    a = torch.exp(-meta.dt * heat.wavenumbers_squared(n, n))
    prior = heat.GaussianPrior.from_normalisation(n, n, float(meta.params["exponent"]),
                                                  meta.norm_mean, meta.norm_std)
    v = [prior.spectrum.double()]
    for _ in range(meta.n_steps):
        v.append(a * a * v[-1] + meta.g**2 * meta.dt * n * n)
    return a, v


@torch.no_grad()
def diagnose(ckpt: Path, data: Path, n_test: int, n_fit: int) -> dict[str, Any]:
    model = load_model(ckpt)
    test = read_split(data / "test.h5", model, limit=n_test)
    fit = read_split(data / "train.h5", model, limit=n_fit).x.float()
    x, meta = test.x.float(), test.meta
    n, k_steps, dt = x.shape[-1], meta.n_steps, meta.dt
    a, v = exact_variances(meta, n)
    kr = heat.wavenumbers_squared(n, n).sqrt()
    drift, ts = model.drift(c=1.0), meta.times().float()

    def step(y: torch.Tensor, k: int) -> torch.Tensor:
        return y - dt * drift(y, ts[k + 1].expand(y.shape[0]))

    def gain(y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        y_hat, m_hat = torch.fft.fft2(y[:, 0].double()), torch.fft.fft2(m[:, 0].double())
        return (m_hat * y_hat.conj()).real.sum(0) / y_hat.abs().square().sum(0)

    bands = [(kr >= lo) & (kr < hi) for lo, hi in BANDS]
    product_learned, product_exact = torch.ones(len(BANDS)), torch.ones(len(BANDS))
    rows, beta = [], []
    for k in reversed(range(k_steps)):
        learned = gain(x[:, k + 1], step(x[:, k + 1], k))
        exact = a * v[k] / v[k + 1]
        for i, sel in enumerate(bands):
            product_learned[i] *= (0.5 * (2 - a) + 0.5 * learned)[sel].mean()
            product_exact[i] *= (0.5 * (2 - a) + 0.5 * exact)[sel].mean()
        if k in (k_steps - 1, 3 * k_steps // 4, k_steps // 2, k_steps // 4, 0):
            rows.append({"k": k, "learned": [learned[s].mean().item() for s in bands],
                         "exact": [exact[s].mean().item() for s in bands]})
    for k in range(k_steps):
        y = fit[:, k + 1]
        y_hat = torch.fft.fft2(y[:, 0].double())
        r_hat = torch.fft.fft2((fit[:, k] - step(y, k))[:, 0].double())
        beta.append((r_hat * y_hat.conj()).sum(0) / y_hat.abs().square().sum(0).clamp_min(1e-12))

    bayes = (heat.posterior(x[:, -1].double(), heat.GaussianPrior.from_normalisation(
        n, n, float(meta.params["exponent"]), meta.norm_mean, meta.norm_std), k_steps, dt,
        meta.g).mean - x[:, 0].double()).square().mean().item()

    def path(c: float, corrected: bool) -> float:
        y = x[:, -1]
        for k in reversed(range(k_steps)):
            m = step(y, k)
            if corrected:
                m = m + torch.fft.ifft2(beta[k] * torch.fft.fft2(y.double())).real.float()
            inverse = torch.fft.ifft2((2 - a) * torch.fft.fft2(y.double())).real.float()
            y = inverse + c * (m - inverse)
        return (y - x[:, 0]).square().mean().item() / bayes

    return {"checkpoint": str(ckpt), "gains": rows,
            "pf_band_amplification": {"learned": product_learned.tolist(),
                                      "exact": product_exact.tolist()},
            "over_bayes": {"c1 path": path(1.0, False), "pf c=1/2": path(0.5, False),
                           "c1 path, corrected": path(1.0, True),
                           "pf c=1/2, corrected": path(0.5, True)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="heat dataset folder (train.h5, test.h5)")
    p.add_argument("runs", type=Path, nargs="+", help="run folders with checkpoint.pt")
    p.add_argument("--test", type=int, default=64, help="test states (64)")
    p.add_argument("--fit", type=int, default=512, help="training trajectories for β (512)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/heat-pf"))
    args = p.parse_args()
    results = []
    for run in args.runs:
        r = diagnose(run / "checkpoint.pt", args.data, args.test, args.fit)
        results.append(r)
        print(f"\n{run}")
        print("  gain of the learned step / exact, by band " + " ".join(
            f"[{lo:g},{hi:g})" for lo, hi in BANDS))
        for row in r["gains"]:
            print(f"  k = {row['k']:2d}  " + "  ".join(
                f"{g:.3f}/{e:.3f}" for g, e in zip(row["learned"], row["exact"], strict=True)))
        amp = r["pf_band_amplification"]
        print("  PF amplification over all steps, learned / exact: " + "  ".join(
            f"{g:.3g}/{e:.3g}" for g, e in zip(amp["learned"], amp["exact"], strict=True)))
        print("  MSE / Bayes: " + ", ".join(f"{k} {v:.4g}" for k, v in r["over_bayes"].items()))
    out = ROOT / args.out
    out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/heat_pf_diagnosis.py " + " ".join(
        [str(args.data)] + [str(r) for r in args.runs])
    write_text_atomic(out / "diagnosis.json", json.dumps(
        {"command": command, "version": code_version(), "models": results}, indent=2) + "\n")
    print(f"wrote {out / 'diagnosis.json'}")


if __name__ == "__main__":
    main()
