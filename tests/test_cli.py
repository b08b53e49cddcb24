"""The command-line chain generate -> train -> infer on a tiny case, resume, and bad input."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from physdiff.cli import generate, infer, train
from simulators import heat

TINY = ["--n-train", "12", "--n-valid", "4", "--n-test", "3", "--size", "8", "--steps", "4",
        "--t-final", "0.05", "--seed", "1"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    generate.main([*TINY, "--out", str(out)])
    return out


@pytest.fixture(scope="module")
def trained(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    train.main(["--data", str(data), "--out", str(out), "--preset", "tiny", "--device", "cpu"])
    return out


def test_generate_writes_normalised_splits_and_is_reproducible(data: Path, tmp_path: Path) -> None:
    with h5py.File(data / "train.h5") as f:
        x = f["x"][()]
        assert x.shape == (12, 5, 1, 8, 8) and x.dtype == np.float32
        assert f.attrs["simulator"] == "heat" and f.attrs["n_steps"] == 4
        assert json.loads(f.attrs["params"])["exponent"] == 4.0
        # normalised by the training split's initial states
        assert abs(x[:, 0].std() - 1) < 0.05 and abs(x[:, 0].mean()) < 1e-6
    generate.main([*TINY, "--out", str(tmp_path)])
    with h5py.File(data / "test.h5") as a, h5py.File(tmp_path / "test.h5") as b:
        np.testing.assert_array_equal(a["x"][()], b["x"][()])


def test_generate_recipe_follows_the_heat32_convention(tmp_path: Path) -> None:
    """The heat-32 recipe (at reduced counts): 32² fields with power spectrum ∝ |k|^-4 and no
    k = 0 mode, normalised by the training split, T = 0.2 in 32 steps, and data that are the
    exact spectral step plus g √dt z with g = 0.1 (docs/method.md §8)."""
    recipe = Path(__file__).parents[1] / "datasets/heat-32.json"
    generate.main(["--recipe", str(recipe), "--n-train", "400", "--n-valid", "2", "--n-test",
                   "2", "--out", str(tmp_path)])
    with h5py.File(tmp_path / "train.h5") as f:
        x = torch.from_numpy(f["x"][()]).double()
        meta = dict(f.attrs)
    assert x.shape == (400, 33, 1, 32, 32) and meta["n_steps"] == 32
    assert meta["dt"] == pytest.approx(0.2 / 32) and meta["g"] == 0.1
    x0 = x[:, 0, 0] * meta["norm_std"] + meta["norm_mean"]  # raw initial fields
    assert x[:, 0].std().item() == pytest.approx(1.0, abs=0.02)
    power = torch.fft.fft2(x0).abs().square().mean(0)
    assert power[0, 0] < 1e-9 * power.mean()  # no k = 0 mode (float32 storage)
    k = torch.fft.fftfreq(32).abs()
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    low = (k2 > 0) & (k2 <= 0.1 ** 2)  # well resolved modes; |k| in cycles per pixel
    slope = np.polyfit(np.log(k2[low].sqrt().numpy()), np.log(power[low].numpy()), 1)[0]
    assert abs(slope + 4) < 0.3
    # residual of the exact step is white noise of variance g² dt per pixel
    r = x[:, 1:, 0] - heat.step(x[:, :-1, 0], meta["dt"])
    assert r.var().item() / (0.1**2 * meta["dt"]) == pytest.approx(1.0, abs=0.02)


def test_train_writes_checkpoint_log_and_calibration(trained: Path) -> None:
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert state["step"] == 10 and state["noise_spectra"].shape == (4, 1, 8, 8)
    assert (state["noise_spectra"] > 0).all()
    rows = [json.loads(ln) for ln in (trained / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 10 and "val_loss" in rows[-1]
    assert (trained / "loss.png").exists()


def test_resume_after_interruption_matches_uninterrupted_run(data: Path, trained: Path,
                                                             tmp_path: Path) -> None:
    argv = ["--data", str(data), "--out", str(tmp_path), "--preset", "tiny", "--device", "cpu"]
    train.main([*argv, "--stop-after", "3"])  # inside the one-step stage's weight average
    train.main([*argv, "--resume", "--stop-after", "4"])  # stops mid-stage-2 with a checkpoint
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 7
    train.main([*argv, "--resume"])
    a = torch.load(trained / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 10
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    # the networks kept for the probability-flow ODE (after update 6) survive the interruptions
    assert a["flow"]["step"] == b["flow"]["step"] == 6
    for k in a["flow"]["score"]:
        torch.testing.assert_close(a["flow"]["score"][k], b["flow"]["score"][k], rtol=0, atol=0)


def test_resume_extends_a_finished_curriculum_as_if_trained_at_once(
        data: Path, trained: Path, tmp_path: Path,
        one_line_error: Callable[[object, list[str]], str]) -> None:
    """A finished run (tiny: 1:6,2:4 at final factor 0.5) continued with a stage appended trains
    the same weights as the longer curriculum from scratch; a curriculum that does not repeat
    the old one (steps, or the factor its last stage ran at) is refused before any update."""
    longer = "1:6,2:4:0.5,3:3"
    argv = ["--data", str(data), "--preset", "tiny", "--device", "cpu", "--stages", longer]
    shutil.copytree(trained, tmp_path / "b")
    for stages, expected in (("1:6,2:4,3:3", "2:4:0.5"), ("1:6,2:5:0.5,3:3", "stage 2"),
                             ("1:6,2:4:0.5", "appends no stage")):
        err = one_line_error(train.main, [*argv, "--stages", stages, "--out",
                                          str(tmp_path / "b"), "--resume"])
        assert expected in err and "checkpoint.pt" in err
    assert torch.load(tmp_path / "b/checkpoint.pt", weights_only=True)["step"] == 10
    train.main([*argv, "--out", str(tmp_path / "b"), "--resume"])
    train.main([*argv, "--out", str(tmp_path / "a")])
    a = torch.load(tmp_path / "a/checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b/checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 13 and b["config"]["stages"] == longer
    assert b["curriculum_history"][0]["stages"] == "1:6,2:4" and not a["curriculum_history"]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    assert b["noise_spectra"] is not None  # finished again after the new stage


def test_patience_ends_the_one_step_stage_and_resumes_exactly(data: Path, tmp_path: Path) -> None:
    """--patience 2 with validation every 2 updates ends the one-step stage of 1:60,2:4 at the
    first validation that is the second in a row without a new best (checked against the log),
    runs the 4 rollout updates after it, keeps the PF-ODE's networks at the new stage end, and
    an interrupted run (inside the patience count, then past the stage end) resumes to the same
    weights."""
    argv = ["--data", str(data), "--preset", "tiny", "--device", "cpu", "--stages", "1:60,2:4",
            "--val-every", "2", "--patience", "2"]
    train.main([*argv, "--out", str(tmp_path / "a")])
    rows = [json.loads(ln) for ln in (tmp_path / "a/log.jsonl").read_text().splitlines()]
    ended = [r["step"] for r in rows if r.get("stage_ended")]
    assert len(ended) == 1 and ended[0] < 60
    best, waited, expected = float("inf"), 0, None
    for r in rows:
        if "val_loss" in r and r["rollout"] == 1 and expected is None:
            # a relative margin of --min-improvement's default, none before the first
            better = r["val_loss"] < best - (1e-3 * best if best < float("inf") else 0)
            best, waited = (r["val_loss"], 0) if better else (best, waited + 1)
            expected = r["step"] if waited == 2 else None
    assert ended[0] == expected
    a = torch.load(tmp_path / "a/checkpoint.pt", weights_only=True)
    assert a["step"] == ended[0] + 4 and a["flow"]["step"] == ended[0]
    assert a["plateau"]["ended"] == {"0": ended[0]}
    train.main([*argv, "--out", str(tmp_path / "b"), "--stop-after", "3"])
    train.main([*argv, "--out", str(tmp_path / "b"), "--resume", "--stop-after", str(ended[0])])
    train.main([*argv, "--out", str(tmp_path / "b"), "--resume"])
    b = torch.load(tmp_path / "b/checkpoint.pt", weights_only=True)
    assert b["step"] == a["step"] and b["plateau"] == a["plateau"]
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)


def test_probability_flow_uses_the_networks_of_the_one_step_stage(data: Path, trained: Path,
                                                                   tmp_path: Path) -> None:
    """The tiny curriculum 1:6,2:4 keeps the score network as it stood after
    update 6: the weights a run of the one-step stage alone (same seed and learning rate) ends
    with, so the PF-ODE of the multi-step model equals that run's bit for bit, while its mean
    path uses the final network. A one-step-only curriculum keeps no snapshot."""
    from physdiff.model import load_model, reconstruct
    argv = ["--data", str(data), "--preset", "tiny", "--device", "cpu"]
    train.main([*argv, "--out", str(tmp_path), "--stages", "1:6:1"])
    multi, one = trained / "checkpoint.pt", tmp_path / "checkpoint.pt"
    a, b = (torch.load(p, weights_only=True) for p in (multi, one))
    assert a["flow"]["step"] == 6 and b.get("flow") is None
    for k in b["model"]:
        torch.testing.assert_close(a["flow"]["score"][k], b["model"][k], rtol=0, atol=0)
    assert any(not torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    x_T = torch.from_numpy(h5py.File(data / "test.h5")["x"][:, -1])
    m_multi, m_one = load_model(multi), load_model(one)
    torch.testing.assert_close(reconstruct(m_multi, x_T, "ode"), reconstruct(m_one, x_T, "ode"),
                               rtol=0, atol=0)
    assert not torch.equal(reconstruct(m_multi, x_T, "mean"), reconstruct(m_one, x_T, "mean"))


def test_finishing_step_of_an_older_version_is_redone_by_resume(data: Path, trained: Path,
                                                                 tmp_path: Path) -> None:
    """A heat checkpoint holds the fitted correction of the flow's step (K, 2, 1, H, W) and the
    finishing version; one finished by an older version (no correction) is finished again by
    --resume without any update: same weights, the correction added and kept only where it
    lowers the PF-ODE's validation MSE (the PF-ODE changed only then)."""
    import shutil

    from physdiff.cli.train import FINISH
    from physdiff.model import load_model, reconstruct
    state = torch.load(trained / "checkpoint.pt", weights_only=True)
    assert state["finish"] == FINISH and state["flow_correction"].shape == (4, 2, 1, 8, 8)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    choice = state["flow_choice"]  # the correction kept only where it lowers validation MSE
    assert choice["cases"] > 0 and choice["kept"] == (choice["corrected"] < choice["uncorrected"])
    assert (load_model(trained / "checkpoint.pt").flow_correction is not None) == choice["kept"]
    old = {k: v for k, v in state.items() if k not in ("finish", "flow_correction", "flow_choice")}
    torch.save(old, run / "checkpoint.pt")
    x_T = torch.from_numpy(h5py.File(data / "test.h5")["x"][:, -1])
    before = reconstruct(load_model(run / "checkpoint.pt"), x_T, "ode")
    train.main(["--data", str(data), "--out", str(run), "--preset", "tiny", "--device", "cpu",
                "--resume"])
    again = torch.load(run / "checkpoint.pt", weights_only=True)
    assert again["finish"] == FINISH and again["step"] == 10
    torch.testing.assert_close(again["flow_correction"], state["flow_correction"])
    for k in state["model"]:
        assert torch.equal(again["model"][k], state["model"][k])
    assert again["flow_choice"] == choice
    after = reconstruct(load_model(run / "checkpoint.pt"), x_T, "ode")
    assert torch.equal(after, before) != choice["kept"]


def test_infer_writes_samples_and_metrics(data: Path, trained: Path, tmp_path: Path) -> None:
    infer.main(["--checkpoint", str(trained / "checkpoint.pt"), "--data", str(data / "test.h5"),
                "--n-samples", "4", "--out", str(tmp_path), "--device", "cpu"])
    with h5py.File(tmp_path / "posterior.h5") as f:
        assert f["samples"].shape == (3, 4, 1, 8, 8)
        assert f["ode"].shape == f["mean_path"].shape == f["truth"].shape == (3, 1, 8, 8)
        assert np.isfinite(f["samples"][()]).all()
        distance = f["ode_distance"][()]
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert {"sde", "ode", "mean_path", "exact_mean"} <= set(report)
    assert report["ode_diverged"] == np.flatnonzero(~(distance <= 10)).tolist()
    assert (tmp_path / "posterior.png").exists() and (tmp_path / "spectra.png").exists()


def test_infer_names_observations_where_the_flow_diverged(
        capsys: pytest.CaptureFixture[str]) -> None:
    """A PF-ODE point 100 standard deviations from the samples (or NaN) is named; one at the
    samples' mean is not."""
    from physdiff.cli.infer import ode_divergence
    from physdiff.systems import InferenceResult
    samples = torch.randn(4, 8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ode = samples.mean(1)
    ode[1] += 100
    ode[3] = float("nan")
    result = InferenceResult(None, samples[:, 0], None, {"0": samples}, {"0": ode}, {"0": ode})
    assert ode_divergence(result, "0") == {"ode_diverged": [1, 3]}
    assert "PF-ODE diverged on 2 of 4 observations" in capsys.readouterr().out
    assert result.ode_distance is not None and result.ode_distance[0] < 1


def test_infer_on_user_npy(trained: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "obs.npy", np.zeros((2, 8, 8), dtype=np.float32))
    infer.main(["--checkpoint", str(trained / "checkpoint.pt"), "--observed",
                str(tmp_path / "obs.npy"), "--n-samples", "2", "--out", str(tmp_path / "o")])
    with h5py.File(tmp_path / "o/posterior.h5") as f:
        assert f["samples"].shape == (2, 2, 1, 8, 8) and "truth" not in f


def test_bad_input_gives_one_line_errors(
        data: Path, trained: Path, tmp_path: Path,
        one_line_error: Callable[[object, list[str]], str]) -> None:
    ckpt = str(trained / "checkpoint.pt")
    err = one_line_error(train.main, ["--data", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert "nope/train.h5" in err and "no such file" in err
    # a finished run is not overwritten without --resume
    err = one_line_error(train.main, ["--data", str(data), "--out", str(trained),
                                      "--preset", "tiny"])
    assert "--resume" in err
    np.save(tmp_path / "nan.npy", np.full((1, 8, 8), np.nan, dtype=np.float32))
    err = one_line_error(infer.main, ["--checkpoint", ckpt, "--observed",
                                      str(tmp_path / "nan.npy"), "--out", str(tmp_path / "o")])
    assert "NaN" in err and "nan.npy" in err
    np.save(tmp_path / "big.npy", np.zeros((1, 16, 16), dtype=np.float32))
    err = one_line_error(infer.main, ["--checkpoint", ckpt, "--observed",
                                      str(tmp_path / "big.npy"), "--out", str(tmp_path / "o")])
    assert "(1, 1, 16, 16)" in err and "(M, 1, 8, 8)" in err
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    err = one_line_error(infer.main, ["--checkpoint", str(tmp_path / "bad.pt"), "--data",
                                      str(data / "test.h5"), "--out", str(tmp_path / "o")])
    assert "bad.pt" in err
    err = one_line_error(generate.main, ["--steps", "-3", "--out", str(tmp_path / "g")])
    assert "--steps" in err
    # non-finite physics parameters are refused before anything is simulated or written
    for flag, value in (("--t-final", "inf"), ("--exponent", "nan"), ("--g", "inf")):
        err = one_line_error(generate.main, [flag, value, "--out", str(tmp_path / "g")])
        assert flag in err and "finite" in err
    assert not (tmp_path / "g").exists()
    err = one_line_error(train.main, ["--data", str(data), "--out", str(tmp_path / "t"),
                                      "--stages", "1:5,9:5"])
    assert "rollout 9" in err
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros((1, 5, 1, 8, 8), dtype=np.float32)
        f.attrs.update(schema=99)
    err = one_line_error(infer.main, ["--checkpoint", ckpt, "--data", str(tmp_path / "other.h5"),
                                      "--out", str(tmp_path / "o")])
    assert "schema version 99" in err


def test_long_stages_save_by_time_and_training_seconds_add_up_over_invocations(
        data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --save-minutes tiny every update saves (a run killed mid-stage loses at most that
    long), and the checkpoint's train_seconds is the sum over invocations: a run stopped and
    resumed records more than its first part, each part's own time counted once; a checkpoint
    from before that record resumes without one (unknown, not a wrong number)."""
    steps: list[int] = []
    real_save = train.save
    monkeypatch.setattr(train, "save", lambda run_, path, step, *a, **k: (
        steps.append(step), real_save(run_, path, step, *a, **k)))
    argv = ["--data", str(data), "--preset", "tiny", "--device", "cpu", "--stages", "1:6",
            "--out", str(tmp_path / "a")]
    train.main([*argv, "--save-every", "1000", "--save-minutes", "1e-9", "--stop-after", "4"])
    assert steps == [1, 2, 3, 4, 4]  # each update, then the stop's own save
    first = torch.load(tmp_path / "a/checkpoint.pt", weights_only=True)["train_seconds"]
    assert first > 0
    steps.clear()
    train.main([*argv, "--resume"])
    assert steps == [6]  # the finishing save only (every 500 updates or 10 min otherwise)
    state = torch.load(tmp_path / "a/checkpoint.pt", weights_only=True)
    assert state["train_seconds"] > first
    state["train_seconds"] = None
    state["step"] = 4
    torch.save({k: v for k, v in state.items() if k != "finish"}, tmp_path / "a/checkpoint.pt")
    train.main([*argv, "--resume"])
    assert torch.load(tmp_path / "a/checkpoint.pt", weights_only=True)["train_seconds"] is None


def test_a_benchmarks_failed_script_ends_it_with_one_line(tmp_path: Path,
                                                          capfd: pytest.CaptureFixture) -> None:
    """A benchmark whose generate.py / train.py fails stops with one line naming the command,
    after the script's own error, not with a traceback of the subprocess call."""
    from benchmarks import common
    with pytest.raises(SystemExit) as info:
        common.script("generate.py", "--recipe", str(tmp_path / "missing.json"), "--out",
                      str(tmp_path / "d"))
    message = str(info.value.code)
    assert "\n" not in message and "generate.py --recipe" in message and "exit status 2" in message
    assert "missing.json" in capfd.readouterr().err  # the script's own error came first
