"""No silent wrong answers: locked output directories, validated inputs, repaired logs
(each case here was accepted, or failed confusingly, before)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_fixtures import TINY, Check, tiny_run

from physdiff.cli import generate, infer, train
from physdiff.lock import LOCK_NAME, hold


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_run(tmp_path_factory.mktemp("robust"))


def test_second_job_into_the_same_directory_is_refused_naming_the_holder(
        run: Path, tmp_path: Path, one_line_error: Check) -> None:
    out = tmp_path / "busy"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from physdiff.lock import hold\n"
        f"with hold(Path({str(out)!r}), 'train.py'):\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for fn, argv in ((train.main, ["--data", str(run / "data"), "--out", str(out),
                                       "--preset", "tiny"]),
                         (generate.main, [*TINY, "--out", str(out)])):
            err = one_line_error(fn, argv)
            assert "in use by train.py" in err and f"pid {holder.pid}" in err
        assert not (out / "checkpoint.pt").exists() and not (out / "train.h5").exists()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_killed_job_is_taken_over(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp_path.joinpath(LOCK_NAME).write_text(json.dumps(
        {"pid": dead.pid, "host": os.uname().nodename, "job": "train.py"}))
    with hold(tmp_path, "infer.py") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not path.exists()  # released


def test_bad_inputs_are_one_line_errors_before_any_work(run: Path, tmp_path: Path,
                                                         one_line_error: Check) -> None:
    ckpt = ["--checkpoint", str(run / "run/checkpoint.pt"), "--out", str(tmp_path / "o")]
    err = one_line_error(infer.main, [*ckpt, "--data", str(run / "data/test.h5"),
                                      "--device", "banana"])
    assert "--device banana" in err
    np.save(tmp_path / "empty.npy", np.zeros((0, 8, 8), np.float32))
    err = one_line_error(infer.main, [*ckpt, "--observed", str(tmp_path / "empty.npy")])
    assert "no observations" in err and "empty.npy" in err
    np.save(tmp_path / "complex.npy", np.zeros((2, 8, 8), np.complex64))
    err = one_line_error(infer.main, [*ckpt, "--observed", str(tmp_path / "complex.npy")])
    assert "complex" in err and "complex.npy" in err
    err = one_line_error(train.main, ["--data", str(run / "data/train.h5"), "--out",
                                      str(tmp_path / "t")])
    assert "--data" in err and "folder" in err
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    err = one_line_error(generate.main, [*TINY, "--out", str(blocker / "sub")])
    assert "--out" in err and "a_file" in err
    err = one_line_error(generate.main, ["--bogus", "1", "--out", str(tmp_path / "g")])
    assert "--bogus" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_resume_repairs_a_truncated_last_log_line(run: Path, tmp_path: Path) -> None:
    argv = ["--data", str(run / "data"), "--out", str(tmp_path), "--preset", "tiny",
            "--device", "cpu"]
    train.main([*argv, "--stop-after", "7"])
    log = tmp_path / "log.jsonl"
    log.write_text(log.read_text() + '{"step": 8, "lo')  # killed mid-write
    train.main([*argv, "--resume"])
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows[-1]["step"] == 10
    a = torch.load(run / "run/checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_long_work_reports_progress_off_a_terminal(run: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Under `make demo > log` (stderr not a terminal) training and inference still say what
    they do: a status line per phase and the update count."""
    train.main(["--data", str(run / "data"), "--out", str(tmp_path / "r"), "--preset", "tiny",
                "--device", "cpu"])
    infer.main(["--checkpoint", str(tmp_path / "r/checkpoint.pt"), "--data",
                str(run / "data/test.h5"), "--n-samples", "2", "--out", str(tmp_path / "p"),
                "--device", "cpu"])
    err = capsys.readouterr().err
    assert "train: 10/10" in err and "calibrating" in err
    for phase in ("infer: reverse SDE", "the probability-flow ODE", "infer: 1/1",
                  "infer: figures"):
        assert phase in err


def test_time_left_is_extrapolated_by_cost_not_by_count(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Two one-step updates took 10 s; the two 4-step updates left cost 8 units of the 2 done,
    so 40 s are left (by count it would say 10 s). Resumed at update 2, only the updates of
    this invocation count."""
    from physdiff.cli import common
    clock = iter([0.0, 1.0, 10.0, 10.0])
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(clock))
    monkeypatch.setattr(common.sys.stderr, "isatty", lambda: False, raising=False)
    cost = [0, 1, 2, 6, 10].__getitem__  # of updates 1..i: 1, 1, 4 and 4 each
    bar = common.Progress("train", 4, every=5.0, cost=cost)
    bar.update(1)
    bar.update(1)
    assert "train: 2/4; 10 s elapsed, ~40 s left" in capsys.readouterr().err
    clock = iter([0.0, 10.0])
    resumed = common.Progress("train", 4, initial=2, cost=cost)
    resumed.n = 3
    assert resumed.seconds_left() == pytest.approx(10.0 / 4 * 4)


def test_training_progress_weighs_updates_by_rollout_length() -> None:
    """Curriculum 1:2,4:3: the first two updates cost 1 each, the next three 4 each, and a count
    past the end adds nothing."""
    from physdiff.cli.train import _cost, parse_stages
    stages = parse_stages("1:2,4:3", 1.0)
    assert [_cost(stages, i) for i in (0, 1, 2, 4, 5, 9)] == [0, 1, 2, 10, 14, 14]


def test_held_out_check_is_written_and_flags_miscalibration(run: Path) -> None:
    """train.py writes calibration.json; the check calls samples made 5x too wide or 10x too
    narrow (the calibrated noise scaled) what they are, before any exact posterior is asked."""
    from physdiff.data import read
    from physdiff.heldout import held_out_check
    from physdiff.model import load_model

    check = json.loads((run / "run/calibration.json").read_text())
    assert check["n_samples"] == 19 and 0 <= check["coverage90"] <= 1 and check["verdict"]
    model = load_model(run / "run/checkpoint.pt")
    valid = read(run / "data/valid.h5").x
    spectra = model.noise_spectra
    for scale, word in ((25.0, "too wide"), (0.01, "too narrow")):
        model.noise_spectra = spectra * scale
        result = held_out_check(model, valid, None, torch.Generator().manual_seed(0))
        assert not result["calibrated"] and word in result["verdict"], result["verdict"]


def test_held_out_check_names_a_pf_ode_worse_than_a_posterior_draw(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The PF-ODE verdict: a reconstruction with MSE above one posterior sample's is called
    unreliable (here: the observation blown up 100x, as a diverging flow does), one at the truth
    usable; and infer.py's table names an unreliable PF-ODE instead of printing its numbers."""
    from physdiff import heldout
    from physdiff.data import read
    from physdiff.model import load_model

    check = json.loads((run / "run/calibration.json").read_text())
    assert "ode_reliable" in check and check["ode_verdict"].startswith("PF-ODE")
    model = load_model(run / "run/checkpoint.pt")
    valid = read(run / "data/valid.h5").x
    real = heldout.reconstruct
    for fake, reliable in ((lambda x_T, x_0: 100 * x_T, False), (lambda x_T, x_0: x_0, True)):
        def patched(m, x_T, kind, fake=fake, **kw):
            return fake(x_T, valid[:, 0]) if kind == "ode" else real(m, x_T, kind, **kw)
        monkeypatch.setattr(heldout, "reconstruct", patched)
        result = heldout.held_out_check(model, valid, None, torch.Generator().manual_seed(0))
        assert result["ode_reliable"] is reliable, result["ode_verdict"]
        assert ("UNRELIABLE" in result["ode_verdict"]) is not reliable
    report = {"n_samples": 2, "held_out_check": {"ode_reliable": False,
                                                 "ode_verdict": "PF-ODE UNRELIABLE: held-out x"},
              "sde": {"mse": 1.0}, "ode": {"mse": 63.8}}
    import contextlib
    import io

    from physdiff.cli.infer import print_table
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        print_table(report)
    line = next(r for r in buffer.getvalue().splitlines() if r.startswith("ode"))
    assert "unreliable" in line and "63.8" not in line


def test_spread_skill_tolerance_widens_only_when_few_cases_make_it_noisy() -> None:
    """Exact posterior draws (x_0 and the 19 samples exchangeable) whose posterior scale varies
    10x between cases: over 16 cases of 20 coordinates the ratio scatters by more than 10 %/3,
    over 16 cases of 4096 coordinates it does not."""
    from physdiff.heldout import N_SAMPLES, _bootstrap_se

    gen = torch.Generator().manual_seed(0)
    nominal = 2 * N_SAMPLES / (N_SAMPLES + 1)
    tolerance = {}
    for dim in (20, 4096):
        scale = torch.logspace(-1, 0, 16)[:, None]
        mu = torch.randn(16, dim, generator=gen)
        x_0 = mu + scale * torch.randn(16, dim, generator=gen)
        samples = mu[:, None] + scale[:, None] * torch.randn(16, N_SAMPLES, dim, generator=gen)
        tolerance[dim] = max(0.10, 3 * _bootstrap_se(samples, x_0) / nominal)
    assert tolerance[20] > 0.10 and tolerance[4096] == 0.10, tolerance


def test_comma_lists_read_each_value_by_its_rule_and_name_the_bad_one() -> None:
    """--scales 1,0.8 / --seeds 0,2 / --obs-noise: every item checked like a single flag value;
    the error names the bad item and the list it came in, on one line."""
    import argparse

    from physdiff.checks import comma_list, finite, non_negative, positive

    assert comma_list(positive(float))("1,0.8") == (1.0, 0.8)
    assert comma_list(non_negative(int))("0,2") == (0, 2)
    for parse, text, bad in [(comma_list(positive(float)), "1,-1", "got -1"),
                             (comma_list(non_negative(int)), "0,1.5", "an integer >= 0, got 1.5"),
                             (comma_list(finite(float)), "0.1,nan", "got nan"),
                             (comma_list(finite(float)), "", "got ")]:
        with pytest.raises(argparse.ArgumentTypeError) as err:
            parse(text)
        assert bad in str(err.value) and repr(text) in str(err.value)
        assert len(str(err.value).splitlines()) == 1


def test_commands_read_the_code_version_when_they_start() -> None:
    """A training of hours records the commit it started from, not one checked out before its
    first save: the CLI runner fills code_version's cache before the command's work."""
    import argparse

    from physdiff.cli.common import run
    from physdiff.runtime import code_version
    code_version.cache_clear()
    seen: list[int] = []
    run(lambda args: seen.append(code_version.cache_info().currsize),
        argparse.ArgumentParser(prog="x"), [])
    assert seen == [1]
