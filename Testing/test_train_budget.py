"""`--minutes M` is kept: the whole run (checks, plan, cache, training, final validation, bundle)
ends within max(1.1 M, M + 0.5) minutes, spends most of it training, and the learning-rate
schedule (warm-up, poly decay) completes inside the budget. Real data: the MR tissue map."""
from __future__ import annotations

from dataclasses import asdict

import pytest

from budget_training import LR, allowed_s, metrics_rows, train_tissue_map
from mednextv2.bundle import load_bundle
from mednextv2.train.optim import lr_factor


def _check(result, seconds: float, minutes: float) -> list:
    assert seconds <= allowed_s(minutes), f"{seconds:.0f} s for a {minutes} min budget"
    assert seconds >= 0.75 * minutes * 60, f"only {seconds:.0f} s of a {minutes} min budget used"
    rows = metrics_rows(result.bundle)
    assert len(rows) >= 3, rows  # epochs are cut to a share of the budget
    last = rows[-1]
    assert float(last["progress"]) >= 0.95, last  # the schedule ran to its end
    assert float(last["lr"]) <= LR * lr_factor(0.9) + 1e-9, last  # decayed, not stopped halfway
    assert last["mean_dice"], last  # the final epoch was validated
    assert load_bundle(result.bundle).spec.to_json()["provenance"]["training"]["epochs"] == len(rows)
    return rows


@pytest.mark.slow
def test_one_minute_budget_is_kept(tmp_path, data_dir):
    result, seconds = train_tissue_map(tmp_path, data_dir, 1.0, (2.0, 2.0, 2.0), (32, 32, 32))
    _check(result, seconds, 1.0)


def test_budget_schedule_runs_over_the_training_time_left():
    from mednextv2.train.budget import EPOCHS_PER_BUDGET, EXPORT_RESERVE_S, Budget

    budget = Budget(2.0, started=1000.0)  # a 120 s budget; planning took 20 s
    budget.begin_training(1020.0)
    end = budget.train_end()
    assert 1020.0 < end < 1120.0 - EXPORT_RESERVE_S  # room kept for the final validation and the bundle
    assert budget.progress(1020.0) == 0.0 and budget.progress(end) == 1.0
    assert budget.progress(1020.0 + (end - 1020.0) / 2) == pytest.approx(0.5)
    assert budget.epoch_seconds() == pytest.approx((1120.0 - EXPORT_RESERVE_S - 1020.0) / EPOCHS_PER_BUDGET)
    budget.val_cost = 4.0  # measured: the reserve follows the real cost
    assert budget.train_end() == pytest.approx(1120.0 - EXPORT_RESERVE_S - 1.5 * 4.0)
    assert not budget.out_of_time(1100.0) and budget.out_of_time(1107.0)
    assert budget.eta(1100.0) == pytest.approx(20.0)  # the whole run's end, bundle included
    # Without held-out cases (the demo) only the bundle's time is kept back: no final validation.
    alone = Budget(2.0, started=1000.0, validates=False)
    alone.begin_training(1020.0)
    assert alone.train_end() == pytest.approx(1120.0 - EXPORT_RESERVE_S)


def test_schedule_clock_follows_the_limit_that_is_further_along():
    from mednextv2.train.budget import EXPORT_RESERVE_S, ScheduleClock

    by_epochs = ScheduleClock(epochs=4, iterations=10, minutes=None, validates=True, started=1000.0)
    assert by_epochs.budget is None
    assert by_epochs.fraction(1, 5) == pytest.approx(1.5 / 4)
    assert by_epochs.eta(0, 0, now=1010.0) is None  # no progress yet: no estimate
    assert by_epochs.eta(1, 0, now=1010.0) == pytest.approx(30.0)  # a quarter took 10 s
    assert not by_epochs.epoch_time_used(0.0, now=5000.0)  # without a budget only iterations end an epoch

    both = ScheduleClock(epochs=100, iterations=10, minutes=2.0, validates=False, started=1000.0)
    both.begin_training(20.0)
    end = both.budget.train_end()
    assert end == pytest.approx(1120.0 - EXPORT_RESERVE_S)
    assert both.fraction(1, 0, now=1020.0 + (end - 1020.0) / 2) == pytest.approx(0.5)  # the budget is further
    assert both.fraction(90, 0, now=1021.0) == pytest.approx(0.9)  # the epochs are further
    assert both.eta(1, 0, now=1030.0) == pytest.approx(90.0)  # the run's end comes before 99 more epochs
    assert both.eta(90, 0, now=1021.0) == pytest.approx(21.0 * 0.1 / 0.9)  # the last epochs end sooner
    epoch_s = both.budget.epoch_seconds()
    assert not both.epoch_time_used(20.0, now=1020.0 + epoch_s - 1) and both.epoch_time_used(20.0, now=1020.0 + epoch_s)


def test_epoch_record_keeps_the_metrics_csv_columns():
    from mednextv2.train.epochs import EpochRecord

    record = EpochRecord(epoch=2, iterations=7, train_loss=0.5, lr=1e-3, time_s=12.0, data_wait_s=0.1, progress=0.4,
                         dice={"grey": 0.6, "white": None})
    row = record.csv_row()
    assert row["dice_grey"] == 0.6 and row["dice_white"] is None and row["mean_dice"] == 0.6
    assert "dice" not in row and row["progress"] == 0.4
    assert EpochRecord.from_dict(asdict(record)) == record
    old_row = {k: v for k, v in row.items() if k != "progress"}  # as checkpoints before EpochRecord held it
    assert EpochRecord.from_dict(old_row) == EpochRecord(**dict(asdict(record), progress=0.0))
