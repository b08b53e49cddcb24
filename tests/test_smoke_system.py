"""Smoke through the script layer: dataset parts/shards/resume, obstacles in the file, the noise
model, the conditioned network, L-BFGS, the train -> infer chain, and bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from physdiff.cli import generate, infer, train
from physdiff.data import read
from physdiff.nets import GridScoreNet
from physdiff.systems import for_data as system_for
from physdiff.systems.smoke import generation as smoke_generation
from simulators import smoke

RES, STEPS = 16, 4
TINY = ["smoke", "--resolution", str(RES), "--steps", str(STEPS), "--t-final", "0.04",
        "--n-train", "3", "--n-valid", "2", "--n-test", "2", "--seed", "5"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    generate.main([*TINY, "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke-run")
    train.main(["--data", str(data), "--out", str(out), "--preset", "tiny", "--stages", "1:4,2:2",
                "--calibration-trajectories", "2", "--val-every", "3"])
    return out


def test_file_round_trips_obstacles_seeded_per_simulation(data: Path) -> None:
    """/geometry is what the per-simulation generator draws; /mask is its rasterisation."""
    d = read(data / "test.h5", simulator="smoke")
    geometry, mask = d.extras["geometry"], d.extras["mask"]
    assert geometry.shape == (2, 4, 5) and mask.shape == (2, 1, RES, RES)
    for i in range(2):
        gen = smoke_generation._generator(5, 2, i)  # test split has index 2
        assert torch.equal(geometry[i:i + 1], smoke.sample_obstacles(1, gen))
    assert torch.equal(mask, smoke.obstacle_mask(geometry, RES))
    assert (d.x[:, 0] == 0).all()  # the flow starts from rest


def test_data_noise_is_g_sqrt_dt_in_fluid_and_zero_in_obstacles(data: Path) -> None:
    d = read(data / "train.h5", simulator="smoke")
    system = system_for(d.meta, d.x.shape[2:])
    cond = system.condition(d.extras, "train")
    x = d.x
    resid = torch.stack([x[:, k + 1] - system.step(x[:, k], cond, k * d.meta.dt)
                         for k in range(STEPS)], 1)
    fluid = (1 - d.extras["mask"])[:, None].expand_as(resid).bool()
    std = resid[fluid].std().item()
    assert abs(std / (d.meta.g * d.meta.dt**0.5) - 1) < 0.05
    assert resid[~fluid].abs().max() < 1e-6


def test_shards_then_join_equal_one_run_and_resume_regenerates_only_missing(
        data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sharded"
    for shard in ("0/2", "1/2"):
        generate.main([*TINY, "--out", str(out), "--shard", shard])
    parts = sorted((out / "parts").iterdir())
    assert len(parts) == 3 and not (out / "train.h5").exists()  # one part per split
    parts[1].unlink()  # as if the shard making it had been killed
    with pytest.raises(SystemExit):
        generate.main([*TINY, "--out", str(out), "--join"])  # a part is missing: refused
    capsys.readouterr()
    generate.main([*TINY, "--out", str(out)])  # resumes: makes the missing part, joins
    assert "2 of 3 parts already done" in capsys.readouterr().out
    for split in ("train", "valid", "test"):
        a, b = read(out / f"{split}.h5"), read(data / f"{split}.h5")
        assert torch.equal(a.x, b.x) and torch.equal(a.extras["geometry"], b.extras["geometry"])
    assert not (out / "parts").exists()


def test_corrupt_shard_and_bad_counts_give_one_line_errors(
        tmp_path: Path, one_line_error: Callable[[object, list[str]], str]) -> None:
    out = tmp_path / "corrupt"
    generate.main([*TINY, "--out", str(out), "--shard", "0/1"])
    part = min((out / "parts").iterdir())
    part.write_bytes(part.read_bytes()[:300])  # truncated by a crash
    err = one_line_error(generate.main, [*TINY, "--out", str(out), "--join"])
    assert part.name in err and "corrupt shard" in err
    assert "--boxes" in one_line_error(generate.main, [*TINY, "--out", str(out), "--boxes", "2-1"])
    assert "--shard" in one_line_error(generate.main, [*TINY, "--out", str(out), "--shard", "2/2"])


def test_score_net_sees_the_mask_and_is_zero_inside_obstacles() -> None:
    torch.manual_seed(0)
    net = GridScoreNet(3, 1, (RES, RES), t_max=1.0, out_scale=1.0, width=4)
    torch.nn.init.normal_(net.out.weight)  # the output layer starts at zero
    geometry = smoke.sample_obstacles(2, torch.Generator().manual_seed(0))
    mask = smoke.obstacle_mask(geometry, RES)
    x, t = torch.randn(2, 3, RES, RES), torch.rand(2)
    y = net(x, t, mask)
    assert (y * mask).abs().max() == 0 and (y * (1 - mask)).abs().max() > 0
    assert not torch.allclose(y, net(x, t, torch.zeros_like(mask)))  # the mask is an input
    with pytest.raises(ValueError, match="conditions"):
        net(x, t, mask[:, :, :8])


def test_lbfgs_baseline_fits_the_observation_better_than_its_zero_start(data: Path) -> None:
    d = read(data / "test.h5", simulator="smoke", limit=1)
    system = system_for(d.meta, d.x.shape[2:])
    cond = system.condition(d.extras, "test")
    x_T, start = d.x[:, -1], 0.02
    x = system.lbfgs_reconstruct(x_T, cond, start, outer_steps=2, iterations=2)

    def misfit(x_mid: torch.Tensor) -> float:
        return (system.forward(x_mid, cond, start, 2) - x_T).square().mean().item()

    assert misfit(x) < 0.5 * misfit(torch.zeros_like(x))


def test_chain_train_infer_writes_reconstructions_metrics_and_figures(
        data: Path, trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "post"
    infer.main(["--checkpoint", str(trained / "checkpoint.pt"), "--data", str(data / "test.h5"),
                "--out", str(out), "--n-samples", "3"])
    with h5py.File(out / "posterior.h5") as f:
        h5 = {k: torch.from_numpy(f[k][()]) for k in f}
    assert h5["samples_mid"].shape == (2, 3, 3, RES, RES) and h5["samples"].shape[1] == 3
    assert h5["ode"].shape == (2, 3, RES, RES) and h5["condition"].shape == (2, 4, 5)
    assert torch.isfinite(h5["samples"]).all()
    d = read(data / "test.h5")
    system = system_for(d.meta, d.x.shape[2:])
    mid = system.report_times()["mid"]
    torch.testing.assert_close(h5["truth_mid"], d.x[:, mid])
    torch.testing.assert_close(h5["truth"], d.x[:, 0])
    # no velocity inside obstacles: the inverse step, the score and the noise all keep it zero
    solid = system.mask(h5["condition"]).bool()[:, None, 0]  # (2, 1, H, W)
    for name in ("samples_mid", "samples"):
        vel = h5[name][:, :, 1:]
        assert vel.masked_select(solid[:, :, None].expand_as(vel)).abs().max() < 1e-6
    # the report holds the metrics of the stored reconstructions
    report = json.loads((out / "metrics.json").read_text())
    sde, ode = report["sde"], report["ode"]
    truth = h5["truth_mid"][:, None, 0]
    assert sde["mse_per_sample"] == pytest.approx(
        (h5["samples_mid"][:, :, 0] - truth).square().mean().item(), rel=1e-5)
    resim = system.forward(h5["ode_mid"], h5["condition"], mid * d.meta.dt,
                           d.meta.n_steps - mid)
    assert ode["resim_mse"] == pytest.approx(
        (resim[:, 0] - h5["observed"][:, 0]).square().mean().item(), rel=1e-4)
    assert report["sde t=0.00"]["mse_per_sample"] == pytest.approx(
        (h5["samples"][:, :, 0] - h5["truth"][:, None, 0]).square().mean().item(), rel=1e-5)
    assert (out / "posterior.png").stat().st_size > 0 and (out / "reverse.gif").stat().st_size > 0


def test_bad_input_gives_one_line_errors(
        data: Path, trained: Path, tmp_path: Path,
        one_line_error: Callable[[object, list[str]], str]) -> None:
    ckpt = ["--checkpoint", str(trained / "checkpoint.pt"), "--out", str(tmp_path / "o")]
    heat = tmp_path / "heat"
    generate.main(["heat", "--n-train", "4", "--n-valid", "2", "--n-test", "2", "--size", "8",
                   "--steps", "4", "--out", str(heat)])
    err = one_line_error(infer.main, [*ckpt, "--data", str(heat / "test.h5")])
    assert "heat" in err and "smoke" in err
    d = read(data / "test.h5")
    bad_mask = tmp_path / "bad_mask.h5"
    with h5py.File(bad_mask, "w") as f:
        f["x_T"] = d.x[:, -1].numpy()
        f["geometry"] = d.extras["geometry"].numpy()
        f["mask"] = np.zeros((2, 1, RES, RES + 1), np.float32)
    err = one_line_error(infer.main, [*ckpt, "--observed", str(bad_mask)])
    assert "'mask'" in err and str((2, 1, RES, RES)) in err
    nan_geometry = tmp_path / "nan_geometry.h5"
    with h5py.File(nan_geometry, "w") as f:
        f["x_T"] = d.x[:, -1].numpy()
        f["geometry"] = np.full(d.extras["geometry"].shape, np.nan, np.float32)
    err = one_line_error(infer.main, [*ckpt, "--observed", str(nan_geometry)])
    assert "'geometry'" in err and "NaN" in err
    no_geometry = tmp_path / "no_geometry.h5"
    with h5py.File(no_geometry, "w") as f:
        f["x_T"] = d.x[:, -1].numpy()
    assert "'geometry'" in one_line_error(infer.main, [*ckpt, "--observed", str(no_geometry)])
    npy = tmp_path / "x.npy"
    np.save(npy, d.x[:, -1].numpy())
    assert ".h5" in one_line_error(infer.main, [*ckpt, "--observed", str(npy)])
