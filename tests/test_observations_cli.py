"""infer.py with partial, noisy observations: --operator / --mask / --channels / --pool /
--obs-noise and the observation spec of an --observed .h5 file (physdiff/cli/infer_observed.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from cli_fixtures import Check, one_thread, tiny_run

from physdiff.cli import infer
from physdiff.observations import AvgPool


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("observed"))


def _infer(run: Path, out: Path, *flags: str) -> h5py.File:
    infer.main(["--checkpoint", str(run / "run/checkpoint.pt"), "--out", str(out), "--device",
                "cpu", "--langevin-steps", "100", "--n-samples", "16", *flags])
    return h5py.File(out / "posterior.h5", "r")


def test_bad_observations_are_one_line_errors_naming_the_flag_or_file(
        run: Path, tmp_path: Path, one_line_error: Check) -> None:
    out = tmp_path / "o"
    base = ["--checkpoint", str(run / "run/checkpoint.pt"), "--out", str(out), "--device", "cpu"]
    data = ["--data", str(run / "data/test.h5")]
    np.save(tmp_path / "small.npy", np.ones((4, 4), bool))
    np.save(tmp_path / "none.npy", np.zeros((8, 8), bool))
    np.save(tmp_path / "half.npy", np.arange(64).reshape(8, 8) % 2 == 0)
    np.save(tmp_path / "nan.npy", np.full((2, 1, 4, 4), np.nan, np.float32))
    np.save(tmp_path / "state.npy", np.zeros((2, 1, 8, 8), np.float32))
    with h5py.File(tmp_path / "spec.h5", "w") as f:
        f["y"] = np.zeros((2, 1, 8, 8), np.float32)
        f["mask"] = np.load(tmp_path / "half.npy")
        f.attrs.update(operator="mask", obs_noise=0.1)
    cases = [
        ([*data, "--operator", "mask", "--mask", str(tmp_path / "small.npy"), "--obs-noise",
          "0.1"], ["--mask", "small.npy", "shape (1, 4, 4)"]),
        ([*data, "--operator", "mask", "--mask", str(tmp_path / "none.npy"), "--obs-noise",
          "0.1"], ["--mask", "none.npy", "observes nothing"]),
        ([*data, "--operator", "pool", "--pool", "2", "--obs-noise", "0"], ["--obs-noise 0"]),
        ([*data, "--operator", "pool", "--pool", "2"], ["--obs-noise", "required"]),
        ([*data, "--operator", "pool", "--pool", "2", "--obs-noise", "0.1,0.2"],
         ["--obs-noise 0.1,0.2", "sigma"]),
        (["--observed", str(tmp_path / "nan.npy"), "--operator", "pool", "--pool", "2",
          "--obs-noise", "0.1"], ["nan.npy", "NaN"]),
        (["--observed", str(tmp_path / "state.npy"), "--operator", "pool", "--pool", "2",
          "--obs-noise", "0.1"], ["state.npy", "(1, 8, 8)", "expected (1, 4, 4)"]),
        ([*data, "--mask", str(tmp_path / "half.npy"), "--obs-noise", "0.1"],
         ["--mask", "only with --operator mask"]),
        ([*data, "--operator", "mask", "--obs-noise", "0.1"], ["--operator mask", "--mask"]),
        ([*data, "--operator", "channels", "--channels", "1", "--obs-noise", "0.1"],
         ["--channels 1", "channel count"]),
        ([*data, "--operator", "pool", "--pool", "3", "--obs-noise", "0.1"],
         ["--pool 3", "divisible by 3"]),
        (["--observed", str(tmp_path / "spec.h5"), "--operator", "pool", "--pool", "2"],
         ["spec.h5", "dataset 'mask'", "only with --operator mask"]),
        (["--observed", str(tmp_path / "spec.h5"), "--obs-noise", "0"], ["--obs-noise 0"]),
    ]
    for flags, words in cases:
        err = one_line_error(infer.main, [*base, *flags])
        assert err.startswith("error:") and all(w in err for w in words), (flags, err)
        assert not out.exists() or not any(out.iterdir()), flags  # nothing written


def test_mask_run_writes_draws_observations_and_spec(run: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "half.npy", np.arange(64).reshape(8, 8) % 2 == 0)
    with _infer(run, tmp_path / "o", "--data", str(run / "data/test.h5"), "--operator", "mask",
                "--mask", str(tmp_path / "half.npy"), "--obs-noise", "0.05") as f:
        assert f["samples"].shape == f["x_T_samples"].shape == (2, 16, 1, 8, 8)
        assert f["y"].shape == (2, 1, 8, 8) and f["mask"].shape == (1, 8, 8)
        assert f["ode"].shape == f["mean_path"].shape == f["truth"].shape == (2, 1, 8, 8)
        assert f.attrs["operator"] == "mask" and f.attrs["obs_noise"] == pytest.approx(0.05)
        assert "x_T_samples" in f.attrs["ode_from"] and "observed" not in f
        y, mask = f["y"][()], f["mask"][()]
        assert (y[:, mask == 0] == 0).all()  # unobserved entries are zero
    metrics = (tmp_path / "o/metrics.json").read_text()
    assert '"langevin"' in metrics and '"max_rhat"' in metrics and '"exact_mean"' in metrics


def test_draws_follow_the_likelihood(run: Path, tmp_path: Path) -> None:
    """A full mask with σ_y = 1e-3: the likelihood dominates, every x_T draw lies within σ_y of
    y. Pooling by 2 with σ_y = 0.02: the pooled draws scatter around y by about σ_y (the
    observed block means are far better known a priori than σ_y), so their mean over n draws
    is within 3 σ_y / √n of y. A wrong sign of the likelihood score diverges, and a
    likelihood that ignored y or the operator would leave the draws at the prior's scale."""
    np.save(tmp_path / "all.npy", np.ones((8, 8), bool))
    split = ["--data", str(run / "data/test.h5")]
    sigma = 1e-3
    with _infer(run, tmp_path / "mask", *split, "--operator", "mask", "--mask",
                str(tmp_path / "all.npy"), "--obs-noise", str(sigma)) as f:
        gap = f["x_T_samples"][()] - f["y"][()][:, None]
    rms = np.sqrt((gap**2).mean())
    assert 0.3 * sigma < rms < 2 * sigma and np.abs(gap).max() < 6 * sigma, rms / sigma
    sigma = 0.02
    with _infer(run, tmp_path / "pool", *split, "--operator", "pool", "--pool", "2",
                "--obs-noise", str(sigma)) as f:
        draws, y = torch.from_numpy(f["x_T_samples"][()]), torch.from_numpy(f["y"][()])
    pooled = AvgPool(2)(draws.flatten(0, 1)).reshape(*draws.shape[:2], *y.shape[1:])
    n = draws.shape[1]
    assert (pooled.mean(1) - y).square().mean().sqrt() < 3 * sigma / n**0.5
    assert 0.6 * sigma < pooled.std(1).square().mean().sqrt() < 1.4 * sigma
    assert draws.std(1).mean() > 3 * sigma  # the unobserved detail is not pinned by y


def test_observation_spec_in_the_file_equals_the_flags(run: Path, tmp_path: Path) -> None:
    """y.h5 with datasets y, mask and attrs operator / obs_noise gives the posterior the same
    observations give with flags; a flag overrides the file's attr."""
    mask = np.arange(64).reshape(8, 8) % 3 == 0
    y = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32) * mask
    np.save(tmp_path / "mask.npy", mask)
    np.save(tmp_path / "y.npy", y)
    with h5py.File(tmp_path / "y.h5", "w") as f:
        f["y"], f["mask"] = y, mask
        f.attrs.update(operator="mask", obs_noise=0.5)
    flags = ["--operator", "mask", "--mask", str(tmp_path / "mask.npy"), "--obs-noise", "0.05"]
    with (_infer(run, tmp_path / "a", "--observed", str(tmp_path / "y.npy"), *flags) as a,
          _infer(run, tmp_path / "b", "--observed", str(tmp_path / "y.h5"), "--obs-noise",
                 "0.05") as b):
        for key in ("samples", "x_T_samples", "ode", "y", "mask"):
            assert np.array_equal(a[key][()], b[key][()]), key
        assert b.attrs["obs_noise"] == pytest.approx(0.05)


def test_two_processes_write_the_one_process_posterior(run: Path, tmp_path: Path) -> None:
    """2 observations in chunks of one (batch = n = 3), one per process under torchrun: the
    Langevin chains and reverse paths draw from the same per-chunk streams as in one process,
    so the files are equal bit for bit."""
    argv = ["--checkpoint", str(run / "run/checkpoint.pt"), "--data", str(run / "data/test.h5"),
            "--operator", "pool", "--pool", "2", "--obs-noise", "0.05", "--langevin-steps",
            "40", "--n-samples", "3", "--batch-size", "3", "--device", "cpu", "--seed", "4"]
    with one_thread():  # as each torchrun process
        infer.main([*argv, "--out", str(tmp_path / "one")])
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(root / "infer.py"), *argv, "--out",
                           str(tmp_path / "two")], cwd=root, capture_output=True, text=True,
                          check=False, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert done.returncode == 0 and "2 chunks over 2 processes" in done.stderr, done.stderr
    with (h5py.File(tmp_path / "one/posterior.h5") as a,
          h5py.File(tmp_path / "two/posterior.h5") as b):
        assert set(a) == set(b) and "x_T_samples" in a
        for key in a:
            assert np.array_equal(a[key][()], b[key][()]), key


def test_checkpoint_keeps_the_end_state_gaussian_and_the_sampler_starts_there(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train.py stores the training end states' mean and spectrum; with a linear operator the
    end-state chains start at Matheron draws of that Gaussian's conditional (init_scale 0)."""
    from physdiff import conditioning
    from physdiff.data import read
    from physdiff.gaussian_start import end_state_spectrum
    from physdiff.model import load_model

    model = load_model(run / "run/checkpoint.pt")
    x = read(run / "data/train.h5").x
    mean, spectrum = end_state_spectrum(x[:, -1])
    torch.testing.assert_close(model.end_state["spectrum"], spectrum)
    torch.testing.assert_close(model.end_state["mean"], mean.float())
    seen = {}
    real = conditioning.sample_end_states

    def spy(*args, **kw):
        seen.update(kw)
        return real(*args, **kw)

    monkeypatch.setattr(conditioning, "sample_end_states", spy)
    y = AvgPool(2)(x[:2, -1])
    conditioning.sample_posterior_observed(model, AvgPool(2), y, 0.05, 3,
                                           torch.Generator().manual_seed(0), steps=8)
    assert seen["init_scale"] == 0.0 and seen["init"].shape == (2, 3, 1, 8, 8)
    # the start already honours y: pooled start draws sit within a few σ_y of it
    gap = AvgPool(2)(seen["init"].flatten(0, 1)).reshape(2, 3, 1, 4, 4) - y[:, None]
    assert gap.abs().max() < 5 * 0.05


def test_zero_langevin_steps_returns_the_gaussian_start_draws(run: Path, tmp_path: Path) -> None:
    """--langevin-steps 0 on heat: the x_T draws are the Matheron draws themselves, so the
    pooled draws scatter around y by σ_y exactly as in the exact conditional."""
    sigma = 0.02
    with _infer(run, tmp_path / "zero", "--data", str(run / "data/test.h5"), "--operator",
                "pool", "--pool", "2", "--obs-noise", str(sigma), "--langevin-steps", "0") as f:
        draws, y = torch.from_numpy(f["x_T_samples"][()]), torch.from_numpy(f["y"][()])
    pooled = AvgPool(2)(draws.flatten(0, 1)).reshape(*draws.shape[:2], *y.shape[1:])
    assert (pooled.mean(1) - y).square().mean().sqrt() < 3 * sigma / draws.shape[1]**0.5
    assert 0.6 * sigma < pooled.std(1).square().mean().sqrt() < 1.4 * sigma


def test_zero_steps_without_a_spectrum_draws_the_per_coordinate_gaussian_conditional(
        run: Path) -> None:
    """A system without a stationary end-state spectrum (smoke's default path): with no
    Langevin steps the x_T draws are exact draws of the training end states' per-coordinate
    Gaussian conditioned on y: prior mean and variance where nothing is observed, the
    precision-weighted mean and variance v σ² / (v + σ²) where a pixel is seen. Without
    end-state statistics at all, steps 0 is a one-line error."""
    from physdiff.conditioning import sample_posterior_observed
    from physdiff.data import read
    from physdiff.model import load_model
    from physdiff.observations import Mask

    model = load_model(run / "run/checkpoint.pt")
    x_T = read(run / "data/train.h5").x[:, -1]
    mu, var = x_T.mean(0), x_T.var(0)
    model.end_state = {"mean": mu, "variance": var}  # no spectrum: the per-coordinate start
    mask = (torch.arange(mu.numel()) % 2 == 0).float().reshape(mu.shape)
    sigma, n = 0.05, 1200
    y = Mask(mask)(x_T[:1]) + 0.3
    _, draws, _ = sample_posterior_observed(model, Mask(mask), y, sigma, n,
                                            torch.Generator().manual_seed(0), steps=0)
    d = draws[0].double()
    seen = mask.bool()
    post_var = var * sigma**2 / (var + sigma**2)
    post_mean = (var * y[0] + sigma**2 * mu) / (var + sigma**2)
    for where, m, v in ((~seen, mu, var), (seen, post_mean, post_var)):
        z = (d.mean(0) - m)[where] / (v[where] / n).sqrt()
        assert z.abs().max() < 4.5
        ratio = d.var(0)[where] / v[where]
        assert 0.8 < ratio.min() and ratio.max() < 1.25
    model.end_state = None
    with pytest.raises(ValueError, match="end-state statistics"):
        sample_posterior_observed(model, Mask(mask), y, sigma, 2,
                                  torch.Generator().manual_seed(0), steps=0)
