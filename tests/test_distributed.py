"""Data-parallel training under torchrun (2 gloo processes on this CPU): one update with 2 ranks
× b windows equals one single-process update on the same 2b windows; an interrupted and resumed
2-process run ends with the weights of an uninterrupted one; bad launches fail with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from cli_fixtures import one_thread

from physdiff.cli import generate, infer, train

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--preset", "tiny", "--stages", "1:2,3:2", "--batch-size", "8", "--device", "cpu"]


# One gloo process aborted once in about 30 launches on this loaded machine ("terminate called
# without an active exception", a C++ abort we believe comes from tearing the process group
# down; not reproduced in 8 further launches). torchrun then reports a failure; the tests below
# check the outputs themselves (checkpoint step, weights, posterior files), so that one signature
# is left to them instead of failing here. Any other failure fails at once.
SHUTDOWN_ABORT = "terminate called without an active exception"


def torchrun(*argv: str, check: bool = True, script: str = "train.py"
             ) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(ROOT / script), *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    if check and done.returncode != 0 and SHUTDOWN_ABORT not in done.stderr:
        raise AssertionError(f"torchrun {script} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "data"
    generate.main(["heat", "--n-train", "12", "--n-valid", "2", "--n-test", "2", "--size", "8",
                   "--steps", "4", "--t-final", "0.05", "--out", str(out)])
    return out


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoint.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def ddp_run(data: Path) -> Path:
    out = data.parent / "ddp"
    torchrun("--data", str(data), "--out", str(out), *ARGS)
    return out


def test_two_ranks_equal_one_process_on_the_same_global_batch(data: Path, ddp_run: Path) -> None:
    single = data.parent / "single"
    train.main(["--data", str(data), "--out", str(single), *ARGS])
    a, b = weights(single), weights(ddp_run)
    state = torch.load(ddp_run / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4 and state["world_size"] == 2  # the work really was split
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    # the zero-initialised output layer moved: the comparison is not of two untouched nets
    assert a["out.weight"].abs().sum() > 0
    # the reported loss is the ranks' mean (shared in the gradients' all-reduce): the global one
    def last(run: Path, key: str) -> float:
        return json.loads((run / "log.jsonl").read_text().splitlines()[-1])[key]
    assert last(ddp_run, "loss") == pytest.approx(last(single, "loss"), rel=1e-5)
    # the validation loss is summed over the ranks' halves of the validation trajectories
    assert last(ddp_run, "val_loss") == pytest.approx(last(single, "val_loss"), rel=1e-5)


def test_interrupted_and_resumed_ddp_run_matches_uninterrupted(data: Path, ddp_run: Path) -> None:
    out = data.parent / "ddp-resumed"
    torchrun("--data", str(data), "--out", str(out), *ARGS, "--stop-after", "3")
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 3
    torchrun("--data", str(data), "--out", str(out), *ARGS, "--resume")
    a, b = weights(ddp_run), weights(out)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)


def test_batch_not_divisible_by_world_is_one_line_and_no_hang(data: Path, tmp_path: Path) -> None:
    done = torchrun("--data", str(data), "--out", str(tmp_path / "r"), "--preset", "tiny",
                    "--batch-size", "5", "--device", "cpu", check=False)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1 and "--batch-size 5" in ours[0] and "2 processes" in ours[0]


def test_each_rank_takes_its_slice_of_the_same_global_batch(data: Path) -> None:
    """What makes 2 × b equal to 1 × 2b: the ranks' windows are the two halves of the single
    process's batch, drawn with the same generator (and the same augmentation)."""
    from physdiff.data import read
    from physdiff.distributed import SINGLE, World
    from physdiff.systems import for_data

    d = read(data / "train.h5")
    system = for_data(d.meta, tuple(d.x.shape[2:]))

    def draw(world: World) -> torch.Tensor:
        batches = train.Batches(d.x, d.meta, system, torch.device("cpu"), True, None, world)
        return batches(8, 2, torch.Generator().manual_seed(5))[0]

    whole = draw(SINGLE)
    halves = torch.cat([draw(World(0, 2)), draw(World(1, 2))])
    assert torch.equal(whole, halves) and whole.shape[0] == 8


def test_two_process_inference_writes_the_single_process_posterior(data: Path, ddp_run: Path
                                                                    ) -> None:
    """5 observations × 3 samples in chunks of 2 observations (batch 6): rank 0 takes chunks 0
    and 2, rank 1 chunk 1; the file rank 0 writes equals a one-process run's bit for bit."""
    argv = ["--checkpoint", str(ddp_run / "checkpoint.pt"), "--observed", str(data / "obs.npy"),
            "--n-samples", "3", "--batch-size", "6", "--device", "cpu", "--seed", "4"]
    train_x = h5py.File(data / "train.h5")["x"][:5, -1]
    np.save(data / "obs.npy", train_x)
    with one_thread():  # as each torchrun process
        infer.main([*argv, "--out", str(data.parent / "infer-one")])
    done = torchrun(*argv, "--out", str(data.parent / "infer-two"), script="infer.py")
    assert "3 chunks over 2 processes" in done.stderr
    with h5py.File(data.parent / "infer-one" / "posterior.h5") as a, \
            h5py.File(data.parent / "infer-two" / "posterior.h5") as b:
        assert set(a) == set(b) and {"samples", "ode", "mean_path"} <= set(a)
        for key in a:
            assert np.array_equal(a[key][()], b[key][()]), key
        samples = a["samples"][()]
    assert samples.shape[:2] == (5, 3)
    # distinct streams per chunk and per sample: no two samples share their noise
    flat = samples.reshape(15, -1)
    assert len({row.tobytes() for row in flat}) == 15
