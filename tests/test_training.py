"""The training loop: curriculum, learning rates, clipping, non-finite updates, checkpoints."""

from __future__ import annotations

import math

import pytest
import torch

from physdiff.cli.common import UsageError
from physdiff.cli.train import parse_stages
from physdiff.training import (
    CheckpointError,
    Stage,
    fit,
    load_checkpoint,
    save_checkpoint,
    stage_at,
)


def test_stage_at_walks_the_curriculum() -> None:
    stages = [Stage(1, 3), Stage(4, 2), Stage(8, 1)]
    assert [stage_at(stages, i).rollout for i in range(7)] == [1, 1, 1, 4, 4, 8, 8]


def test_parse_stages_with_learning_rate_factors() -> None:
    assert parse_stages("1:10,4:5:0.2,8:3", 0.5) == [Stage(1, 10, 1.0), Stage(4, 5, 0.2),
                                                      Stage(8, 3, 0.5)]
    assert parse_stages("1:10,8:3:2", 0.5)[-1] == Stage(8, 3, 2.0)  # explicit factor wins
    for bad in ("1:10,4", "0:5", "1:0", "a:b", "1:5:0", "1:2:3:4"):
        with pytest.raises(UsageError, match="--stages"):
            parse_stages(bad, 0.5)


def test_fit_skips_non_finite_updates_clips_and_applies_stage_rates() -> None:
    """Plain SGD on a quadratic so every update is checkable by hand: w ← w − lr·clip(grad)."""
    w = torch.nn.Parameter(torch.tensor([100.0, 0.5]))
    opt = torch.optim.SGD([w], lr=0.1)
    stages = [Stage(1, 2), Stage(2, 2, 0.5)]
    poison = {1}  # the second update sees a NaN loss

    def loss_fn(rollout: int, gen: torch.Generator) -> torch.Tensor:
        loss = 0.5 * (w * w).sum()  # gradient w
        return loss * math.nan if len(seen) in poison else loss

    seen: list[dict] = []
    expected = w.detach().clone()
    for metrics in fit([w], loss_fn, opt, stages, lr=0.1, generator=torch.Generator(), clip=10.0):
        i = len(seen)
        seen.append(metrics)
        if i not in poison:
            lr = 0.1 * (1.0 if i < 2 else 0.5)
            expected = expected - lr * expected.clamp(-10, 10)
        torch.testing.assert_close(w.detach(), expected)
    assert [m["rollout"] for m in seen] == [1, 1, 2, 2]
    assert [m["lr"] for m in seen] == [0.1, 0.1, 0.05, 0.05]
    assert [m["skipped"] for m in seen] == [0, 1, 1, 1]
    assert seen[-1]["step"] == 4


def test_checkpoint_round_trip_and_bad_files(tmp_path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, model={"w": torch.ones(2)}, config={"a": 1}, step=3)
    state = load_checkpoint(path)
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))
    assert not (tmp_path / "ck.tmp.pt").exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a physdiff checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    # objects that weights_only=True refuses (arbitrary pickles) are rejected, not executed
    torch.save({"model": {}, "config": object(), "step": 0}, tmp_path / "pickle.pt")
    with pytest.raises(CheckpointError, match="pickle.pt"):
        load_checkpoint(tmp_path / "pickle.pt")


def test_one_step_term_of_a_window_is_the_mean_of_its_pairs_one_step_losses() -> None:
    """--one-step-weight adds the teacher-forced one-step loss of all S pairs of a window at
    once: each pair must see its own time t_{k-S+j+1}, as one_step_loss on that pair alone."""
    from types import SimpleNamespace

    from physdiff.cli.train_run import _pairs_loss
    from physdiff.losses import one_step_loss

    dt, g = 0.1, 0.3
    meta = SimpleNamespace(dt=dt, g=g)

    def drift(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # time-dependent on purpose
        return x * t.reshape(-1, 1) ** 2 + t.reshape(-1, 1)

    run_ = SimpleNamespace(data=SimpleNamespace(meta=meta), drift_for=lambda cond: drift)
    window = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(0))  # S = 4
    t_end = torch.tensor([0.4, 0.7, 1.0])
    each = [one_step_loss(drift, window[:, j], window[:, j + 1], t_end - (3 - j) * dt, dt, g)
            for j in range(4)]
    torch.testing.assert_close(_pairs_loss(run_, window, t_end, None), torch.stack(each).mean())


def test_plateau_ends_only_one_step_stages_after_patience_validations() -> None:
    """Plateau (train.py --patience): a one-step stage ends at the validation that is the
    `patience`-th in a row without a new best, shortened in place; a multi-step stage never
    ends; a restored state shortens a fresh curriculum alike and continues the count."""
    from physdiff.cli.train_run import Plateau
    stages = [Stage(1, 100), Stage(4, 10), Stage(1, 50, 0.5)]
    plateau = Plateau(2)
    losses = {10: 3.0, 20: 2.0, 30: 2.5, 40: 1.9, 50: 2.0, 60: 1.95}
    ended = [s for s, v in losses.items() if plateau.observe(stages, s, v)]
    assert ended == [60] and stages[0] == Stage(1, 60) and plateau.ended == {0: 60}
    assert not any(plateau.observe(stages, s, 9.0) for s in (62, 64, 66, 68))  # rollout 4
    fresh, again = [Stage(1, 100), Stage(4, 10), Stage(1, 50, 0.5)], Plateau(2)
    again.load(plateau.state(), fresh)
    assert fresh == stages
    # the last one-step stage starts its own count: ends after two validations without a best
    assert [s for s in (80, 90, 100) if again.observe(fresh, s, {80: 1.0}.get(s, 1.5))] == [100]
    assert fresh[2] == Stage(1, 30, 0.5)
    assert not Plateau(0).observe([Stage(1, 100)], 50, 1.0)
    # a drop of less than min_improvement (relative) is not an improvement
    creep, plateau = [Stage(1, 100)], Plateau(2, min_improvement=1e-3)
    assert [s for s, v in {10: 2.0, 20: 1.9995, 30: 1.999}.items()
            if plateau.observe(creep, s, v)] == [30]
    assert not any(Plateau(2, 0.0).observe([Stage(1, 100)], s, v)
                   for s, v in {10: 2.0, 20: 1.9995, 30: 1.999}.items())
