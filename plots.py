"""Figures of posterior samples of 2D fields (script layer; matplotlib stays here)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor

from physdiff.metrics import radial_amplitude

__all__ = ["posterior_panels", "power_spectra"]


def _save(fig: plt.Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
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
    for i in range(rows):
        ref = truth[i] if truth is not None else samples[i, 0]
        lim = float(ref.abs().max())
        for j, (title, data, kind) in enumerate(panels):
            ax = axes[i, j]
            if kind == "std":
                im = ax.imshow(data[i].cpu().numpy(), cmap="magma")
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            else:
                ax.imshow(data[i].cpu().numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


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
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def to_fields(x: Tensor) -> Tensor:
    """Drop a single channel dim: (..., 1, H, W) -> (..., H, W)."""
    return x.squeeze(-3) if x.shape[-3] == 1 else x[..., 0, :, :]


