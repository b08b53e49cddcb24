"""Figures of smoke reconstructions: panels with the obstacles drawn, and a reverse-trajectory GIF
(script layer; matplotlib stays here)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib import animation, patches
from torch import Tensor

from plots import _save
from simulators.smoke import DOMAIN

__all__ = ["smoke_animation", "smoke_panels"]


def _obstacles(ax: plt.Axes, geometry: Tensor) -> None:
    """Draw the obstacle rows [kind, x, y, size_x, size_y] as grey shapes."""
    for kind, x, y, sx, sy in geometry.tolist():
        if kind == 1:
            ax.add_patch(patches.Rectangle((x - sx / 2, y - sy / 2), sx, sy, color="0.55"))
        elif kind == 2:
            ax.add_patch(patches.Circle((x, y), sx, color="0.55"))


def _show(ax: plt.Axes, field: Tensor, geometry: Tensor, vmax: float, cmap: str = "magma"
          ) -> matplotlib.image.AxesImage:
    im = ax.imshow(field.numpy(), origin="lower", extent=(0, DOMAIN, 0, DOMAIN), cmap=cmap,
                   vmin=0, vmax=vmax)
    _obstacles(ax, geometry)
    ax.set_xticks([])
    ax.set_yticks([])
    return im


def smoke_panels(path: Path, columns: dict[str, Tensor], geometry: Tensor,
                 std: str | None = None) -> None:
    """One row per observation, one column per named smoke field (B, H, W), obstacles drawn.
    The column named `std` gets its own colour scale."""
    names = list(columns)
    rows = geometry.shape[0]
    fig, axes = plt.subplots(rows, len(names), figsize=(1.9 * len(names), 1.9 * rows + 0.3),
                             squeeze=False)
    for r in range(rows):
        vmax = max(float(columns[n][r].max()) for n in names if n != std) or 1.0
        for c, name in enumerate(names):
            field = columns[name][r]
            top = float(field.max()) or 1.0
            im = _show(axes[r, c], field, geometry[r], top if name == std else vmax,
                       "viridis" if name == std else "magma")
            if name == std:
                fig.colorbar(im, ax=axes[r, c], fraction=0.046)
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def smoke_animation(path: Path, reverse: Tensor, truth: Tensor, geometry: Tensor,
                    times: list[float]) -> None:
    """GIF of a reverse trajectory next to the truth: smoke (K, H, W) each, frames from the
    observed time back to the first, obstacles drawn."""
    fig, axes = plt.subplots(1, 2, figsize=(5.2, 2.9))
    vmax = float(truth.max()) or 1.0
    ims = [_show(axes[0], reverse[0], geometry, vmax), _show(axes[1], truth[0], geometry, vmax)]
    axes[0].set_title("reverse SDE sample", fontsize=9)
    axes[1].set_title("truth", fontsize=9)
    label = fig.suptitle("")

    def frame(i: int) -> list:
        ims[0].set_data(reverse[i].numpy())
        ims[1].set_data(truth[i].numpy())
        label.set_text(f"t = {times[i]:.2f}")
        return [*ims, label]

    anim = animation.FuncAnimation(fig, frame, frames=reverse.shape[0], blit=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    anim.save(tmp, writer=animation.PillowWriter(fps=8))
    tmp.replace(path)
    plt.close(fig)
