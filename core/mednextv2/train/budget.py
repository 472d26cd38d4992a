"""A time budget (`--minutes`) that is kept: when training stops, how long an epoch is, and how far
along the learning-rate schedule is.

The budget covers the whole run from the command's start: checking, planning, caching,
training, the final validation and writing the bundle. Training therefore stops early enough
to leave `reserve()` for the last two, and the schedule (warm-up, poly decay) runs over the
training time actually left, so it completes however long planning took. Epochs are cut to a
fraction of the budget, so a short budget still gives several validated epochs to choose from.
"""
from __future__ import annotations

import time
from typing import Optional

EPOCHS_PER_BUDGET = 10  # epochs of equal length in a budget: points for the curve and for choosing the best
EXPORT_RESERVE_S = 8.0  # best checkpoint -> bundle folder (weights, model.json, reports)
FIRST_RESERVE_FRACTION = 0.15  # held back for the final validation before its cost is known
VALIDATION_SAFETY = 1.5  # the final validation may take this much longer than the last one


class Budget:
    def __init__(self, minutes: float, started: Optional[float] = None, validates: bool = True) -> None:
        self.seconds = float(minutes) * 60
        self.validates = validates  # no held-out cases: nothing to keep time for but the bundle
        self.started = time.monotonic() if started is None else started
        self.deadline = self.started + self.seconds
        self.train_start: Optional[float] = None
        self.val_cost: Optional[float] = None  # seconds of the last validation

    def begin_training(self, at: Optional[float] = None) -> None:
        """Training starts (or started, after a resume) at monotonic time `at` (default now)."""
        self.train_start = time.monotonic() if at is None else at

    def resume(self, elapsed_s: float) -> None:
        """After --resume the budget counts on from the interrupted run's elapsed time."""
        self.started = time.monotonic() - elapsed_s
        self.deadline = self.started + self.seconds
        self.train_start = None

    def reserve(self) -> float:
        """Seconds kept for the final validation and the bundle."""
        if not self.validates:
            final = 0.0
        elif self.val_cost is not None:
            final = VALIDATION_SAFETY * self.val_cost
        else:
            start = self.train_start if self.train_start is not None else time.monotonic()
            final = FIRST_RESERVE_FRACTION * max(0.0, self.deadline - start)
        return final + EXPORT_RESERVE_S

    def train_end(self) -> float:
        return self.deadline - self.reserve()

    def out_of_time(self, now: Optional[float] = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.train_end()

    def progress(self, now: Optional[float] = None) -> float:
        """Fraction of the training time used, 0..1: the learning-rate schedule's clock."""
        now = time.monotonic() if now is None else now
        start = self.train_start if self.train_start is not None else now
        span = self.train_end() - start
        return 1.0 if span <= 0 else min(1.0, max(0.0, (now - start) / span))

    def epoch_seconds(self) -> float:
        """Length of one epoch: the training time left at the start, split into EPOCHS_PER_BUDGET."""
        start = self.train_start if self.train_start is not None else time.monotonic()
        return max(1.0, (self.deadline - EXPORT_RESERVE_S - start) / EPOCHS_PER_BUDGET)

    def eta(self, now: Optional[float] = None) -> float:
        """Seconds until the run ends, bundle included."""
        return max(0.0, self.deadline - (time.monotonic() if now is None else now))


class ScheduleClock:
    """The training run's clock: seconds since the run started, how far the learning-rate schedule
    is, whether the epoch under way has used its share of the budget, and the time left.

    With both `epochs` and a budget (`minutes`) the schedule follows whichever is further along,
    so it completes before either limit ends training.
    """

    def __init__(self, epochs: Optional[int], iterations: int, minutes: Optional[float], validates: bool,
                 started: Optional[float] = None) -> None:
        self.epochs, self.iterations = epochs, iterations
        self.started = time.monotonic() if started is None else started
        self.budget = Budget(minutes, self.started, validates=validates) if minutes else None

    def elapsed(self, now: Optional[float] = None) -> float:
        return (time.monotonic() if now is None else now) - self.started

    def resume(self, elapsed_s: float) -> None:
        """After --resume the clock counts on from the interrupted run's elapsed time."""
        self.started = time.monotonic() - elapsed_s
        if self.budget is not None:
            self.budget.resume(elapsed_s)

    def begin_training(self, train_started_s: float) -> None:
        """Training began `train_started_s` into the run: the budget's schedule starts there, so after
        --resume it continues where it was, not from a new warm-up."""
        if self.budget is not None:
            self.budget.begin_training(self.started + train_started_s)

    def fraction(self, epoch: int, iteration: int, now: Optional[float] = None) -> float:
        """How far training is, 0..1, after `epoch` whole epochs and `iteration` steps of the next."""
        parts = []
        if self.epochs:
            parts.append((epoch + iteration / self.iterations) / self.epochs)
        if self.budget is not None:
            parts.append(self.budget.progress(now))
        return min(1.0, max(parts))

    def epoch_time_used(self, epoch_started_s: Optional[float], now: Optional[float] = None) -> bool:
        """Under a budget: the epoch that began `epoch_started_s` into the run has had its share of the time."""
        if self.budget is None or epoch_started_s is None:
            return False
        return self.elapsed(now) - epoch_started_s >= self.budget.epoch_seconds()

    def eta(self, epoch: int, iteration: int, now: Optional[float] = None) -> Optional[float]:
        """Seconds left: until the budget's end, or as long again per share of the epochs still to run,
        whichever is sooner; None before any progress without a budget."""
        if self.budget is not None:
            by_budget = self.budget.eta(now)
            if not self.epochs:
                return by_budget
        f = self.fraction(epoch, iteration, now)
        by_epochs = self.elapsed(now) * (1 - f) / f if f > 0 else None
        if self.budget is not None and by_epochs is not None:
            return min(by_budget, by_epochs)
        return by_epochs
