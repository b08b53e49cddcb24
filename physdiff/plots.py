"""Figures of posterior samples: 2D fields, N-body point clouds, SBC rank histograms (matplotlib
stays in the plotting modules)."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from physdiff.io import atomic_path
from physdiff.metrics import radial_amplitude

__all__ = ["nbody_posterior", "posterior_panels", "power_spectra", "rank_histogram",
           "save_figure", "to_fields"]


def save_figure(fig: plt.Figure, path: Path) -> None:
    """Save a figure atomically and close it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def posterior_panels(path: Path, observed: Tensor, samples: Tensor, truth: Tensor | None = None,
                     ode: Tensor | None = None, exact_mean: Tensor | None = None,
                     n_show: int = 3) -> None:
    """One row per observation: truth | observed x_T | posterior mean | posterior std |
    PF-ODE | exact posterior mean | a few samples. Fields (B, H, W), samples (B, n, H, W)."""
    rows = observed.shape[0]
    panels: list[tuple[str, Tensor, str]] = []
    if truth is not None:
        panels.append(("truth x_0", truth, "field"))
    panels.append(("observed x_T", observed, "field"))
    panels.append(("posterior mean", samples.mean(1), "field"))
    if exact_mean is not None:
        panels.append(("exact posterior mean", exact_mean, "field"))
    panels.append(("posterior std", samples.std(1), "std"))
    if ode is not None:
        panels.append(("PF-ODE", ode, "field"))
    for j in range(min(n_show, samples.shape[1])):
        panels.append((f"sample {j + 1}", samples[:, j], "field"))
    fig, axes = plt.subplots(rows, len(panels), figsize=(1.9 * len(panels), 1.9 * rows + 0.3),
                             squeeze=False)
    last_field = max(j for j, (_, _, kind) in enumerate(panels) if kind == "field")
    for i in range(rows):
        ref = truth[i] if truth is not None else samples[i, 0]
        lim = float(ref.abs().max()) or 1.0
        for j, (title, data, kind) in enumerate(panels):
            ax = axes[i, j]
            if kind == "std":  # its own scale, its own colorbar
                im = ax.imshow(data[i].cpu().numpy(), cmap="magma")
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            else:  # every field of a row on one symmetric scale, one colorbar for the row
                im = ax.imshow(data[i].cpu().numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
                if j == last_field:
                    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
        axes[i, 0].set_ylabel(f"observation {i + 1}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def power_spectra(path: Path, curves: dict[str, Tensor], n_bins: int | None = None) -> None:
    """Radially averaged |FFT| (log scale) of several sets of fields (..., H, W), each averaged
    over its leading dims."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, x in curves.items():
        bins = n_bins or x.shape[-1] // 2 + 1
        amp = radial_amplitude(x.reshape(-1, *x.shape[-2:]), bins).mean(0)
        style = "--" if "exact" in name else "-"
        ax.semilogy(np.arange(1, bins), amp[1:].numpy(), style, label=name)
    ax.set_xlabel("|k| (radial bin)")
    ax.set_ylabel("mean |x̂_k|")
    ax.set_title("radially averaged Fourier amplitude (dashed: exact posterior)", fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


def to_fields(x: Tensor) -> Tensor:
    """Drop a single channel dim: (..., 1, H, W) -> (..., H, W)."""
    return x.squeeze(-3) if x.shape[-3] == 1 else x[..., 0, :, :]




def nbody_posterior(path: Path, observed: Tensor, samples: Tensor, truth: Tensor | None = None,
                    paths: Tensor | None = None, n_paths: int = 4) -> None:
    """One panel per observation: observed bodies at T (black), true initial positions (stars),
    posterior samples of the initial positions (point clouds, one colour per body) and a few
    reverse trajectories (lines from x_T back to x_0). observed (B, N, 4), samples
    (B, n, N, 4), truth (B, N, 4), paths (B, n, K + 1, N, 4) in forward time order."""
    rows = observed.shape[0]
    fig, axes = plt.subplots(1, rows, figsize=(3.6 * rows, 3.8), squeeze=False)
    colors = plt.get_cmap("tab10")
    for i, ax in enumerate(axes[0]):
        n_bodies = observed.shape[1]
        for b in range(n_bodies):
            c = colors(b % 10)
            ax.scatter(samples[i, :, b, 0], samples[i, :, b, 1], s=6, color=c, alpha=0.35,
                       lw=0, label="posterior x_0" if b == 0 else None)
            if paths is not None:
                for j in range(min(n_paths, paths.shape[1])):
                    ax.plot(paths[i, j, :, b, 0], paths[i, j, :, b, 1], color=c, lw=0.6,
                            alpha=0.6)
            if truth is not None:
                ax.scatter(truth[i, b, 0], truth[i, b, 1], marker="*", s=90, color=c,
                           edgecolor="k", lw=0.6, label="true x_0" if b == 0 else None)
            ax.scatter(observed[i, b, 0], observed[i, b, 1], marker="o", s=30, color="k",
                       label="observed x_T" if b == 0 else None)
        ax.set_aspect("equal")
        ax.set_title(f"observation {i + 1}", fontsize=9)
        if i == 0:
            ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_figure(fig, path)


def rank_histogram(path: Path, counts: Tensor, n_samples: int, title: str = "") -> None:
    """SBC rank histogram (counts per bin of ranks 0..n_samples) with the uniform expectation
    and its central 99 % band (binomial, normal approximation)."""
    counts = counts.double()
    total, n_bins = float(counts.sum()), counts.numel()
    expected = total / n_bins
    half = 2.576 * (expected * (1 - 1 / n_bins)) ** 0.5
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    edges = np.linspace(0, n_samples + 1, n_bins + 1)
    ax.bar(edges[:-1], counts.numpy(), width=np.diff(edges), align="edge", color="tab:blue",
           edgecolor="white")
    ax.axhspan(expected - half, expected + half, color="gray", alpha=0.25, label="uniform, 99 %")
    ax.axhline(expected, color="k", lw=0.8)
    ax.set_xlabel(f"rank of the truth among {n_samples} posterior samples")
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def loss_curve(path: Path, rows: list[dict]) -> None:
    """Training loss (every logged update) and one-step validation loss against the update, with
    a dashed line where the rollout length changes (a jump there is the new loss, not
    divergence). rows: log.jsonl entries with step, loss, rollout and optionally val_loss."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.semilogy([r["step"] for r in rows], [r["loss"] for r in rows], lw=0.8, label="train")
    val = [r for r in rows if "val_loss" in r]
    ax.semilogy([r["step"] for r in val], [r["val_loss"] for r in val], "o-",
                label="valid (one-step)")
    for before, after in itertools.pairwise(rows):
        if after["rollout"] != before["rollout"]:
            ax.axvline(after["step"], color="0.5", ls="--", lw=0.8)
            ax.text(after["step"], 1, f" S={after['rollout']}", transform=ax.get_xaxis_transform(),
                    va="top", fontsize=7, color="0.3")
    ax.set_xlabel("update")
    ax.set_ylabel("loss / (g² dt)")
    ax.set_title("training loss (dashed: rollout length S changes)", fontsize=9)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
