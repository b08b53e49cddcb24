"""The Burgers plug-in: the simulator against exact solutions, invariants and its convergence
order; the symmetries used for augmentation; the calibrated noise; and the whole chain
generate -> train -> infer through physdiff's command-line mains, with the plug-in named as
package.module:Class (nothing installed, nothing in physdiff changed)."""

from __future__ import annotations

import itertools
import json
import math
from functools import partial
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from physdiff import systems
from physdiff.cli import generate, infer, train

from physdiff_burgers import BurgersSystem, simulator
from physdiff_burgers.system import reflect

SPEC = "physdiff_burgers:BurgersSystem"


def grid(points: int) -> torch.Tensor:
    return 2 * math.pi * torch.arange(points, dtype=torch.float64) / points


def cole_hopf_sine(amplitude: float, nu: float, t: float, points: int, fine: int = 512
                   ) -> torch.Tensor:
    """Exact viscous Burgers solution from u_0 = amplitude · sin x by the Cole-Hopf transform:
    u = −2ν φ_x / φ with φ_t = ν φ_xx and φ_0 = exp(amplitude · cos x / (2ν)), the heat equation
    solved exactly in Fourier space on a fine grid."""
    phi_0 = torch.exp(amplitude * torch.cos(grid(fine)) / (2 * nu))
    k = torch.fft.fftfreq(fine, 1 / fine, dtype=torch.float64)
    phi_hat = torch.fft.fft(phi_0) * torch.exp(-nu * k**2 * t)
    u = -2 * nu * torch.fft.ifft(1j * k * phi_hat).real / torch.fft.ifft(phi_hat).real
    return u[:: fine // points]


# ----------------------------------------------------------------- simulator
def test_small_single_mode_decays_like_the_heat_equation() -> None:
    eps, k, nu, dt, n_steps = 1e-4, 3, 1.0, 0.05, 10
    u_0 = eps * torch.sin(k * grid(32))
    path = simulator.rollout(u_0[None], n_steps, dt, g=0.0, viscosity=nu, substeps=1)[0]
    t = dt * torch.arange(n_steps + 1, dtype=torch.float64)
    exact = torch.exp(-nu * k**2 * t)[:, None] * u_0
    # the quadratic term feeds mode 2k at O(ε²); mode k itself is exact to O(ε³)
    assert (path - exact).abs().max() < 1e-3 * eps


def test_mean_is_conserved() -> None:
    u_0 = simulator.sample_prior(8, 64, amplitude=1.0, generator=torch.Generator().manual_seed(0))
    u_0 = u_0 + 0.3  # a non-zero mean, advected along
    path = simulator.rollout(u_0, 20, 0.05, g=0.0, viscosity=0.1, substeps=4)  # float32
    assert (path.mean(-1) - u_0.mean(-1, keepdim=True)).abs().max() < 1e-6


def test_matches_the_cole_hopf_solution() -> None:
    u_0 = 0.5 * torch.sin(grid(64))
    u_T = simulator.step(u_0, 1.0, viscosity=0.1, substeps=32)
    assert (u_T - cole_hopf_sine(0.5, 0.1, 1.0, 64)).abs().max() < 1e-8


def test_integrating_factor_rk4_is_fourth_order() -> None:
    x = grid(32)
    u_0 = 0.5 * (torch.sin(x) + 0.5 * torch.cos(2 * x + 1))
    u = [simulator.step(u_0, 0.5, viscosity=0.1, substeps=m) for m in (4, 8, 16, 32)]
    # differences of successive resolutions: e_m ≈ C h^p, so log2(e_m / e_2m) estimates p
    differences = [(a - b).abs().max().item() for a, b in itertools.pairwise(u)]
    orders = [math.log2(e1 / e2) for e1, e2 in itertools.pairwise(differences)]
    assert all(abs(p - 4) < 0.3 for p in orders), orders


def test_step_gradcheck() -> None:
    u = 0.5 * torch.randn(2, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda u: simulator.step(u, 0.1, 0.1, substeps=2), (u,))


def test_prior_statistics() -> None:
    u = simulator.sample_prior(4000, 32, modes=4, amplitude=0.7,
                               generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(u.std().item() - 0.7) < 0.02 and abs(u.mean().item()) < 0.02
    power = torch.fft.rfft(u).abs().square().mean(0)
    assert (power[5:] < 1e-20).all() and power[1] > power[2] > power[3] > power[4]


# ----------------------------------------------------------------- symmetries
def test_reflection_is_x_to_minus_x_and_a_symmetry_of_the_step() -> None:
    x = grid(16)
    assert torch.allclose(reflect(torch.sin(x)), torch.sin(x))  # −sin(−x) = sin x
    assert torch.allclose(reflect(torch.cos(x)), -torch.cos(x))
    u = simulator.sample_prior(3, 16, modes=5, amplitude=1.0,
                               generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    step = partial(simulator.step, dt=0.2, viscosity=0.1, substeps=4)
    assert torch.allclose(step(reflect(u)), reflect(step(u)), atol=1e-12)
    # −flip reflects about the midpoint of the grid, also a symmetry (reflect ∘ translation)
    assert torch.allclose(step(-u.flip(-1)), -step(u).flip(-1), atol=1e-12)
    # and Burgers is not invariant under u -> u(−x) alone (the advection changes direction)
    assert not torch.allclose(step(u.flip(-1)), step(u).flip(-1), atol=1e-3)


def test_augment_maps_trajectories_to_trajectories() -> None:
    system = make_system(points=16, substeps=4)
    u_0 = simulator.sample_prior(4, 16, modes=5, amplitude=1.0,
                                 generator=torch.Generator().manual_seed(3))[:, None]
    window = simulator.rollout(u_0, 3, system.meta.dt, 0.0, system.viscosity, system.substeps)
    for seed in range(4):
        w = system.augment(window, torch.Generator().manual_seed(seed))
        assert torch.allclose(system.step(w[:, :-1]), w[:, 1:], atol=1e-5)


def make_system(points: int = 16, substeps: int = 4) -> BurgersSystem:
    from physdiff.data import Metadata

    meta = Metadata(simulator=SPEC, dt=0.05, g=0.1, n_steps=4, seed=0, split="train",
                    norm_mean=0.0, norm_std=1.0, version="test",
                    params={"viscosity": 0.1, "substeps": substeps, "points": points})
    return BurgersSystem(meta, (1, points))


def test_evaluate_of_the_truth_is_zero_error() -> None:
    system = make_system()
    x_0 = simulator.sample_prior(3, 16, modes=5, generator=torch.Generator().manual_seed(4))
    x_0 = x_0[:, None]
    out = system.evaluate(x_0, x_0, point=x_0, samples=x_0[:, None].repeat(1, 4, 1, 1))
    assert out["mse"] == out["mse_per_sample"] == out["resim_mse"] == out["spread"] == 0.0
    assert out["spectral_error"] == 0.0


# ----------------------------------------------------------------- plug-in
def test_entry_point_of_the_pyproject_names_the_system() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    target = project["project"]["entry-points"]["physdiff.systems"]["burgers"]
    assert systems.get(target) is BurgersSystem and BurgersSystem.name == "burgers"


TINY = [SPEC, "--n-train", "16", "--n-valid", "4", "--n-test", "4", "--points", "16",
        "--modes", "4", "--steps", "4", "--t-final", "0.2", "--seed", "1"]


def test_generate_train_infer_through_the_cli(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    data, run, post = tmp_path / "data", tmp_path / "run", tmp_path / "posterior"
    generate.main([*TINY, "--out", str(data)])
    with h5py.File(data / "train.h5") as f:
        assert f["x"].shape == (16, 5, 1, 16) and f.attrs["simulator"] == SPEC
        assert json.loads(f.attrs["params"])["viscosity"] == 0.1
    generate.main([*TINY, "--out", str(data)])  # same parameters: every split kept
    assert capsys.readouterr().out.count("up to date, kept") == 3

    train.main(["--data", str(data), "--out", str(run), "--preset", "tiny", "--device", "cpu"])
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["noise_spectra"].shape == (4, 1, 16) and (state["noise_spectra"] > 0).all()

    n = 3
    infer.main(["--checkpoint", str(run / "checkpoint.pt"), "--data", str(data / "test.h5"),
                "--out", str(post), "--n-samples", str(n), "--device", "cpu"])
    with h5py.File(post / "posterior.h5") as f:
        assert f["samples"].shape == (4, n, 1, 16)
        assert np.isfinite(f["samples"][()]).all()
    report = json.loads((post / "metrics.json").read_text())
    assert math.isfinite(report["sde"]["mse_per_sample"])
    assert {"mse", "resim_mse"} <= set(report["mean_path"])
    assert (post / "posterior.png").exists()


def test_generate_rejects_modes_the_grid_cannot_hold(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        generate.main([SPEC, "--points", "16", "--modes", "6", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "--modes 6" in err, err
