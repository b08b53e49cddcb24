"""Figures of smoke reconstructions: panels with the obstacles drawn, and a reverse-trajectory GIF."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from matplotlib import animation, patches
from torch import Tensor

from physdiff.io import atomic_path
from physdiff.plots import save_figure
from physdiff.systems.base import InferenceResult
from simulators.smoke import DOMAIN

__all__ = ["inference_figures", "smoke_animation", "smoke_panels"]


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
            if name == std or c == len(names) - 1:  # std: own scale; the rest share one
                fig.colorbar(im, ax=axes[r, c], fraction=0.046)
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
        axes[r, 0].set_ylabel(f"observation {r + 1}", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


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
    with atomic_path(path) as tmp:
        anim.save(tmp, writer=animation.PillowWriter(fps=8))
    plt.close(fig)


def inference_figures(out: Path, result: InferenceResult) -> list[str]:
    """posterior.png (panels at t = 0.35 and 0, obstacles drawn) and reverse.gif (one reverse SDE
    trajectory of the first observation next to its true smoke path, when known)."""
    from physdiff.model import sample_posterior

    model, x_T, condition = result.model, result.x_T, result.condition
    k = min(4, x_T.shape[0])
    mid, t_mid = "mid", model.system.report_times()["mid"] * model.meta.dt
    s_mid, s_0 = result.samples[mid][:k, :, 0].cpu(), result.samples["0"][:k, :, 0].cpu()
    cols = {f"observed t={model.meta.t_final:.2f}": x_T[:k, 0].cpu()}
    if result.truth is not None:
        cols[f"truth t={t_mid:.2f}"] = result.truth[mid][:k, 0].cpu()
    cols |= {f"SDE mean t={t_mid:.2f}": s_mid.mean(1), f"SDE std t={t_mid:.2f}": s_mid.std(1),
             f"SDE sample t={t_mid:.2f}": s_mid[:, 0],
             f"PF-ODE t={t_mid:.2f}": result.ode[mid][:k, 0].cpu()}
    if result.truth is not None:
        cols["truth t=0"] = result.truth["0"][:k, 0].cpu()
    # the data start without smoke; smoke left in the SDE mean at t = 0 is inflow the −dt
    # physics cannot remove (it adds no inflow backwards) and the score did not fully learn to
    cols["SDE mean t=0 (inflow not undone)"] = s_0.mean(1)
    smoke_panels(out / "posterior.png", cols, condition[:k].cpu(), std=f"SDE std t={t_mid:.2f}")
    # one reverse trajectory of the first observation (reverse time order), every second frame
    gen = torch.Generator(x_T.device).manual_seed(result.seed)
    _, paths = sample_posterior(model, x_T[:1], 1, gen, result.noise, return_paths=True,
                                condition=condition[:1])
    frames = paths[0, 0, :, 0].flip(0)[::2].cpu()
    reference = (result.trajectories[0, :, 0].flip(0)[::2] if result.trajectories is not None
                 else frames)
    times = model.times(torch.device("cpu"))[::2].tolist()
    smoke_animation(out / "reverse.gif", frames, reference, condition[0].cpu(), times)
    return ["posterior.png", "reverse.gif"]
