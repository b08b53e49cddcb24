"""The N-body toy through the script layer: drifts, learned physics, the CLI chain, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from physdiff import calibration
from physdiff.cli import generate, infer, train
from physdiff.data import read
from physdiff.losses import forward_loss
from physdiff.model import load_model, sample_posterior
from physdiff.samplers import euler_maruyama
from physdiff.sde import reverse_drift
from physdiff.systems import for_data as system_for
from simulators import nbody

TINY = ["nbody", "--bodies", "3", "--masses", "1,2,3", "--n-train", "24", "--n-valid", "4",
        "--n-test", "4", "--steps", "6", "--t-final", "0.3", "--substeps", "2", "--seed", "3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nbody")
    generate.main([*TINY, "--out", str(out)])
    return out


def test_dataset_records_masses_and_has_velocity_only_noise(data: Path) -> None:
    d = read(data / "train.h5", simulator="nbody")
    assert d.x.shape == (24, 7, 3, 4) and d.meta.params["masses"] == [1.0, 2.0, 3.0]
    system = system_for(d.meta, d.x.shape[2:])
    x = d.x.double()
    resid = x[:, 1:] - system.step(x[:, :-1])
    assert resid[..., :2].abs().max() < 1e-5  # float32 storage; positions get no noise
    std = resid[..., 2:].std().item()
    assert abs(std / (d.meta.g * d.meta.dt**0.5) - 1) < 0.15


def test_true_physics_reverse_path_without_score_inverts_the_noise_free_forward(data: Path) -> None:
    d = read(data / "test.h5", simulator="nbody")
    system = system_for(d.meta, d.x.shape[2:])
    x_0 = d.x[:, 0].double()
    x_T = system.forward_noise_free(x_0)
    drift = reverse_drift(system.physics_drift("true"), lambda x, t: torch.zeros_like(x), d.meta.g)
    ts = d.meta.times().flip(0)
    back = euler_maruyama(drift, x_T, ts, d.meta.g, noise=lambda x, i, gen: torch.zeros_like(x))
    assert (back - x_0).abs().max() < 1e-10


def test_forward_loss_alone_learns_gravity_from_noisy_trajectories(data: Path) -> None:
    """Joint physics: the anchoring loss recovers the force (zero at the start) from data."""
    d = read(data / "train.h5", simulator="nbody")
    system = system_for(d.meta, d.x.shape[2:])
    torch.manual_seed(0)
    net = system.physics_net(16)
    x_prev, x_next = d.x[:, :-1].flatten(0, 1), d.x[:, 1:].flatten(0, 1)
    true_acc = nbody.gravity(system.masses.float(), system.softening)
    held_out = read(data / "valid.h5").x.flatten(0, 1)[..., :2]

    def force_error() -> float:
        with torch.no_grad():
            ref = true_acc(held_out)
            return ((net(held_out) - ref).norm() / ref.norm()).item()

    assert force_error() == pytest.approx(1.0)  # starts at zero force
    opt = torch.optim.Adam(net.parameters(), lr=3e-2)
    for _ in range(300):
        opt.zero_grad()
        forward_loss(system.forward_step(net), x_prev, x_next, d.meta.dt, d.meta.g).backward()
        opt.step()
    assert force_error() < 0.2


@pytest.mark.parametrize("physics", ["true", "learned", "none"])
def test_chain_train_infer_runs_with_each_physics(data: Path, tmp_path: Path,
                                                  physics: str) -> None:
    run = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(run), "--preset", "tiny", "--physics",
                physics, "--width", "8", "--device", "cpu"])
    infer.main(["--checkpoint", str(run / "checkpoint.pt"), "--data", str(data / "test.h5"),
                "--n-samples", "19", "--out", str(tmp_path / "post"), "--device", "cpu"])
    assert (tmp_path / "post" / "sbc_ranks.png").exists()
    report = json.loads((tmp_path / "post" / "metrics.json").read_text())
    with h5py.File(tmp_path / "post" / "posterior.h5") as f:
        samples, paths = torch.from_numpy(f["samples"][()]), torch.from_numpy(f["paths"][()])
        truth, observed = torch.from_numpy(f["truth"][()]), torch.from_numpy(f["observed"][()])
    assert paths.shape == (4, 19, 7, 3, 4)
    # every reverse path starts at the observation and ends at the stored sample
    assert torch.equal(paths[:, :, -1], observed[:, None].expand_as(paths[:, :, -1]))
    assert torch.equal(paths[:, :, 0], samples)
    # the reported metrics are those of the stored samples
    ranks = calibration.sbc_ranks(samples.flatten(2).double(), truth.flatten(1).double(),
                                  torch.Generator().manual_seed(0))
    cov, nominal = calibration.rank_coverage(ranks, 19, 0.9)
    assert nominal == 0.9 and report["sde"]["coverage90"] == pytest.approx(cov)
    assert report["sde"]["sbc_p"] == pytest.approx(calibration.chi2_uniformity(ranks, 19)[1])
    mse_pos = (samples[..., :2] - truth[:, None, :, :2]).square().mean().item()
    assert report["sde"]["mse_pos_per_sample"] == pytest.approx(mse_pos, rel=1e-5)
    if physics == "true":  # masked score, white noise on velocities: positions move by physics
        model = load_model(run / "checkpoint.pt")
        _, white = sample_posterior(model, observed, 3, torch.Generator().manual_seed(0),
                                    "white", return_paths=True)
        k_next = white[:, :, 1:].flatten(0, 2).double()
        back = k_next - model.meta.dt * model.system.physics_drift("true")(
            k_next, torch.zeros(k_next.shape[0]))
        torch.testing.assert_close(back[..., :2].float(),
                                   white[:, :, :-1].flatten(0, 2)[..., :2], atol=1e-5, rtol=0)


def test_bad_masses_and_observations_give_one_line_errors(
        data: Path, tmp_path: Path, one_line_error: Callable[[object, list[str]], str]) -> None:
    err = one_line_error(generate.main, [*TINY[:-2], "--masses", "1,0,2", "--out", str(tmp_path)])
    assert "--masses" in err and "positive" in err
    err = one_line_error(generate.main, [*TINY, "--masses", "1,2", "--out", str(tmp_path)])
    assert "--masses" in err and "3 positive" in err
    run = tmp_path / "run"
    train.main(["--data", str(data), "--out", str(run), "--preset", "tiny", "--width", "8",
                "--device", "cpu"])
    obs = tmp_path / "obs.npy"
    np.save(obs, np.zeros((2, 4, 4), dtype=np.float32))  # 4 bodies, checkpoint has 3
    err = one_line_error(infer.main, ["--checkpoint", str(run / "checkpoint.pt"), "--observed",
                                      str(obs), "--out", str(tmp_path / "p")])
    assert "(M, 3, 4)" in err
    bad = np.zeros((2, 3, 4), dtype=np.float32)
    bad[1, 0, 0] = np.nan
    np.save(obs, bad)
    err = one_line_error(infer.main, ["--checkpoint", str(run / "checkpoint.pt"), "--observed",
                                      str(obs), "--out", str(tmp_path / "p")])
    assert "NaN" in err
    heat_dir = tmp_path / "heat"
    generate.main(["--n-train", "4", "--n-valid", "2", "--n-test", "2", "--size", "8",
                   "--steps", "6", "--t-final", "0.3", "--out", str(heat_dir)])
    err = one_line_error(infer.main, ["--checkpoint", str(run / "checkpoint.pt"), "--data",
                                      str(heat_dir / "test.h5"), "--out", str(tmp_path / "p")])
    assert "heat" in err and "nbody" in err
    err = one_line_error(train.main, ["--data", str(heat_dir), "--out", str(tmp_path / "r2"),
                                      "--preset", "tiny", "--physics", "learned"])
    assert "--physics learned" in err


def test_augmentation_is_a_symmetry_of_the_dynamics(data: Path) -> None:
    """Rotations and reflections commute with the step, so augmented windows are valid data."""
    d = read(data / "test.h5", simulator="nbody")
    system = system_for(d.meta, d.x.shape[2:])
    x = d.x[:, :2].double()  # pairs (x_k, x_{k+1})
    for seed in range(4):
        y = system.augment(x, torch.Generator().manual_seed(seed))
        assert not torch.allclose(y, x)
        torch.testing.assert_close(system.step(y[:, 0]) - y[:, 1],
                                   system.augment(system.step(x[:, 0])[:, None] - x[:, 1:2],
                                                  torch.Generator().manual_seed(seed))[:, 0])
        # energies and |momentum| are invariant
        m = system.masses.double()
        torch.testing.assert_close(nbody.energy(y, m, system.softening),
                                   nbody.energy(x, m, system.softening))
        torch.testing.assert_close(nbody.momentum(y, m).norm(dim=-1),
                                   nbody.momentum(x, m).norm(dim=-1))


def test_calibrated_diagonal_noise_matches_the_residual_variance(data: Path) -> None:
    """With the true physics and zero score, the residual of one reverse step is the inverse step
    applied to the velocity kick: variance ≈ g² dt on velocities, small on positions; the
    calibrated noise reproduces the measured variances per component."""
    d = read(data / "train.h5", simulator="nbody")
    system = system_for(d.meta, d.x.shape[2:])
    drift = reverse_drift(system.physics_drift("true"), lambda x, t: torch.zeros_like(x),
                          d.meta.g)
    var = system.calibrate(lambda condition: drift, d.x.double())
    assert var.shape == (d.meta.n_steps, 3, 4)
    g2dt = d.meta.g**2 * d.meta.dt
    vel = var[..., 2:].mean().item() / g2dt
    assert 0.8 < vel < 1.2
    assert var[..., :2].mean().item() < 0.1 * g2dt
    noise = system.noise(var)
    z = noise(torch.zeros(20000, 3, 4), 0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.var(0), var[-1].float(), rtol=0.05, atol=1e-7)
    white = system.noise(None)(torch.zeros(20000, 3, 4), 0, torch.Generator().manual_seed(0))
    assert (white[..., :2] == 0).all() and abs(white[..., 2:].var().item() / g2dt - 1) < 0.03
