"""The training loop: epochs of augmented patches, validation, checkpoints, and every way to stop.

Parts are injected (`TrainerParts`: model, optimizer, loss, batch source, validation cases), the
loop owns only the order of things and the rules that keep a run from being lost: a checkpoint
every epoch, a time budget that is kept (budget.py, which also keeps the schedule's clock),
NaN/Inf steps skipped with a lower learning rate, SIGINT/SIGTERM saving before exit. What each
epoch writes is up to its handlers (epochs.py).
"""
from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from mednextv2 import stop_request
from mednextv2.errors import MedNeXtError
from mednextv2.threads import ThreadPolicy
from mednextv2.train import checkpoint, distributed
from mednextv2.train.augment import AugmentConfig, augment
from mednextv2.train.budget import ScheduleClock
from mednextv2.train.epochs import EpochHandler, EpochRecord, default_handlers
from mednextv2.train.evaluate import validate
from mednextv2.train.optim import lr_factor, set_lr
from mednextv2.train.preprocessed import CachedCase
from mednextv2.train.sampler import Prefetcher

log = logging.getLogger(__name__)

MAX_BAD_STEPS = 5  # consecutive NaN/Inf steps before giving up
REPORT_EVERY_S = 1.0


class TrainingDiverged(MedNeXtError):
    """The loss stayed NaN/Inf although the learning rate was lowered."""


@dataclass(frozen=True)
class LoopConfig:
    patch: Sequence[int]
    iterations: int
    epochs: Optional[int]
    minutes: Optional[float]
    lr: float
    grad_clip: float = 12.0
    val_every: Optional[int] = None  # None: adaptive, see _validation_due
    amp_dtype: Optional[torch.dtype] = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class LoopState:
    epoch: int = 0  # completed epochs
    iteration: int = 0  # iterations done in the epoch under way
    elapsed_s: float = 0.0
    lr_scale: float = 1.0  # lowered after NaN/Inf steps
    bad_steps: int = 0
    skipped_steps: int = 0
    best_score: float = -1.0
    best_epoch: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    wait_s: float = 0.0  # time spent waiting for batches in the epoch under way
    history: List[EpochRecord] = field(default_factory=list)
    stopped_by: Optional[str] = None
    epoch_started_s: Optional[float] = None  # elapsed_s when the epoch under way began
    train_started_s: Optional[float] = None  # elapsed_s when training began (the budget schedule's zero)


@dataclass
class TrainerParts:
    """Everything the loop works with, built by run.py (or a test)."""
    model: nn.Module
    net: nn.Module  # the DDP-wrapped model, or the model itself
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    batches: Prefetcher
    cfg: LoopConfig
    ctx: distributed.DistContext
    device: torch.device
    val_cases: Sequence[CachedCase]
    label_names: Sequence[str]
    work: Path
    report: Callable[..., None]
    seed: int = 0
    started: Optional[float] = None  # monotonic start of the run: the budget covers planning too
    threads: Optional[ThreadPolicy] = None  # CPU: torch's thread count follows the free cores


class Trainer:
    def __init__(self, parts: TrainerParts, handlers: Optional[Sequence[EpochHandler]] = None) -> None:
        p = parts
        self.model, self.net = p.model, p.net
        self.optimizer, self.loss_fn, self.batches = p.optimizer, p.loss_fn, p.batches
        self.cfg, self.ctx, self.device = p.cfg, p.ctx, p.device
        self.val_cases, self.label_names = list(p.val_cases), list(p.label_names)
        self.work, self.report = p.work, p.report
        self.threads = p.threads if p.device.type == "cpu" else None
        self.handlers = list(default_handlers() if handlers is None else handlers)
        self.state = LoopState()
        self.gen = torch.Generator(device=p.device)
        self.gen.manual_seed(p.seed * 1000 + p.ctx.rank)
        self.scaler = _grad_scaler() if p.cfg.amp_dtype == torch.float16 else None  # fp16 only; bf16 needs none
        self._stop_signal: Optional[str] = None
        self._last_report = 0.0
        self.clock = ScheduleClock(p.cfg.epochs, p.cfg.iterations, p.cfg.minutes, validates=bool(self.val_cases),
                                   started=p.started)
        self.budget = self.clock.budget
        self._time_up = False  # set from the step's all-rank flag, so every rank agrees
        self._epoch_cut = False  # likewise: the epoch's share of the budget is used
        self._val_cost, self._last_val_at = 0.0, time.monotonic()

    # ---- checkpoints ------------------------------------------------------------------
    def state_dict(self) -> dict:
        s = asdict(self.state)  # history records become dicts
        s["sampler_rng"] = self.batches.sampler.rng.bit_generator.state
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "augment_rng": self.gen.get_state(), "state_json": json.dumps(s)}

    def load_state_dict(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.gen.set_state(ckpt["augment_rng"])
        s = json.loads(ckpt["state_json"])
        rng_state = s.pop("sampler_rng")
        if self.ctx.rank == 0:  # other ranks keep their own streams
            self.batches.sampler.rng.bit_generator.state = rng_state
        s["history"] = [EpochRecord.from_dict(r) for r in s["history"]]
        self.state = LoopState(**s)
        self.state.stopped_by = None
        self.clock.resume(self.state.elapsed_s)

    def save_latest(self) -> None:
        if self.ctx.is_main:
            checkpoint.save_atomic(self.state_dict(), self.work / checkpoint.LATEST)

    # ---- time and schedule ------------------------------------------------------------
    def fraction(self) -> float:
        """How far training is, 0..1: the learning-rate schedule's clock."""
        return self.clock.fraction(self.state.epoch, self.state.iteration)

    def _out_of_time(self) -> bool:
        return self._time_up

    def _done(self) -> bool:
        return (self.cfg.epochs is not None and self.state.epoch >= self.cfg.epochs) or self._out_of_time()

    def _epoch_full(self) -> bool:
        """The epoch under way is over: its iterations are done, or (under a budget) its share of the time
        (decided in the step's all-rank flags, so every rank ends the epoch at the same step)."""
        return self.state.iteration >= self.cfg.iterations or self._epoch_cut

    # ---- one step -----------------------------------------------------------------------
    def _step(self) -> Optional[float]:
        waited = time.monotonic()
        batch = self.batches.next()
        self.state.wait_s += time.monotonic() - waited  # > 0 means the pipeline made training wait
        image = torch.as_tensor(batch.image).to(self.device, non_blocking=True)
        label = torch.as_tensor(batch.label).to(self.device, non_blocking=True)
        image, label = augment(image, label, self.cfg.patch, self.cfg.augment, self.gen)
        if self.threads is not None:
            self.threads.update()
        lr = self.cfg.lr * lr_factor(self.fraction()) * self.state.lr_scale
        set_lr(self.optimizer, lr)
        self.optimizer.zero_grad(set_to_none=True)
        dtype = self.cfg.amp_dtype
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            outputs = self.net(image)
        loss = self.loss_fn(outputs, label)
        bad = not bool(torch.isfinite(loss).item())
        # One collective for all ranks' flags, so every rank stops or skips at the same step.
        over = self.budget is not None and self.budget.out_of_time()
        self._stop_signal = self._stop_signal or stop_request.reason()  # the Slicer modules' Cancel
        bad, stop, over, cut = distributed.any_flag(self.ctx, bad, self._stop_signal is not None, over,
                                                    self.clock.epoch_time_used(self.state.epoch_started_s), device=self.device)
        self._time_up = self._time_up or over
        self._epoch_cut = cut
        if stop:
            self._stop_signal = self._stop_signal or "SIGTERM (another rank)"
            return None
        if bad:
            self._bad_step("loss")
            return None
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        if self.scaler is None:
            (bad_grad,) = distributed.any_flag(self.ctx, not bool(torch.isfinite(norm).item()), device=self.device)
            if bad_grad:
                self._bad_step("gradient")
                return None
            self.optimizer.step()
        else:  # the scaler skips inf/NaN gradient steps itself and lowers its scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.state.bad_steps = 0
        return float(loss.item())

    def _bad_step(self, what: str) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.state.bad_steps += 1
        self.state.skipped_steps += 1
        self.state.lr_scale *= 0.5
        log.warning("non-finite %s at epoch %d, iteration %d: step skipped, learning rate halved (x%.3g)",
                    what, self.state.epoch + 1, self.state.iteration + 1, self.state.lr_scale)
        if self.state.bad_steps >= MAX_BAD_STEPS:
            raise TrainingDiverged(
                f"the {what} was NaN or infinite in {MAX_BAD_STEPS} consecutive steps even after lowering the "
                f"learning rate to {self.cfg.lr * self.state.lr_scale:.2e}. Check the labels and image intensities, "
                f"or try a lower --lr or --precision fp32. The last epoch's checkpoint is kept in {self.work}.")

    # ---- epochs ---------------------------------------------------------------------------
    def _report_iteration(self, loss: Optional[float], force: bool = False) -> None:
        now = time.monotonic()
        if not self.ctx.is_main or (not force and now - self._last_report < REPORT_EVERY_S):
            return
        self._last_report = now
        s = self.state
        last = s.history[-1] if s.history else None
        # Right after an epoch the running sums are reset: report that epoch's mean loss.
        mean_loss = s.loss_sum / s.loss_count if s.loss_count else (last.train_loss if last else None)
        dice = dict(last.dice) if last else {}
        lr = self.optimizer.param_groups[0]["lr"]
        # Between epochs (iteration 0 after one finished) the line is about the epoch just completed.
        epoch = s.epoch if (s.iteration == 0 and s.history) else s.epoch + 1
        message = f"epoch {epoch} it {s.iteration or self.cfg.iterations}/{self.cfg.iterations}"
        if mean_loss is not None:
            message += f" loss {mean_loss:.4f}"
        if dice and last.mean_dice is not None:
            message += f" val dice {last.mean_dice:.3f}"
        self.report("train", self.fraction(), message, eta_s=self.clock.eta(s.epoch, s.iteration), epoch=epoch,
                    iteration=s.iteration or self.cfg.iterations,
                    loss=mean_loss if loss is None else loss, dice=dice or None, lr=lr, epochs_done=s.epoch,
                    dice_epoch=last.epoch if dice else None, epochs=self.cfg.epochs)

    def _validate(self, final: bool) -> Dict[str, float]:
        dice: Dict[str, float] = {}
        if self.ctx.is_main and self.val_cases and self._validation_due(final):
            self.report("validate", 0.0, f"{len(self.val_cases)} held-out case(s)")
            started = time.monotonic()
            # Under a budget, validation runs on windows around each case's foreground, so its cost
            # is bounded by the patch size, not by the scan's.
            dice = validate(self.model, self.val_cases, len(self.label_names) + 1, self.cfg.patch, self.device,
                            self.label_names, windows=self.budget is not None)
            self._val_cost = time.monotonic() - started
            if self.budget is not None:
                self.budget.val_cost = self._val_cost
            self._last_val_at = time.monotonic()
        return distributed.broadcast_object(self.ctx, dice)

    def _validation_due(self, final: bool) -> bool:
        if final:
            return True
        if self.cfg.val_every is not None:
            return (self.state.epoch + 1) % self.cfg.val_every == 0
        if self.budget is not None and time.monotonic() + self._val_cost > self.budget.train_end():
            return False  # the final validation comes soon and must still fit
        # Whole-volume validation of big CT cases can cost more than an epoch on a CPU: keep it
        # under ~20% of the time by waiting until training since the last one took 4x its cost.
        return time.monotonic() - self._last_val_at >= 4 * self._val_cost

    def _end_epoch(self, final: bool) -> None:
        s = self.state
        train_loss = distributed.mean(self.ctx, s.loss_sum / max(s.loss_count, 1), self.device)
        dice = self._validate(final)
        record = EpochRecord(epoch=s.epoch + 1, iterations=s.iteration, train_loss=round(train_loss, 6),
                             lr=self.optimizer.param_groups[0]["lr"], time_s=round(self.clock.elapsed(), 1),
                             data_wait_s=round(s.wait_s, 2), progress=round(self.fraction(), 4),
                             dice={name: (None if math.isnan(v) else round(v, 4)) for name, v in dice.items()})
        s.history.append(record)
        s.epoch += 1
        s.iteration, s.loss_sum, s.loss_count, s.wait_s = 0, 0.0, 0, 0.0
        s.elapsed_s = self.clock.elapsed()
        s.epoch_started_s = None
        self._epoch_cut = False
        # No validation cases: the latest model is the best one. Epochs without validation (--val-every) never win.
        mean = record.mean_dice
        score = (float("nan") if mean is None else mean) if dice else (float("nan") if self.val_cases else float(s.epoch))
        improved = not math.isnan(score) and score > s.best_score
        if improved:
            s.best_score, s.best_epoch = score, s.epoch
        if self.ctx.is_main:
            for handler in self.handlers:
                handler(self, record, improved)
        log.info("epoch %d: loss %.4f, val Dice %s, %.0f s", s.epoch, train_loss, record.dice or "-", self.clock.elapsed())
        self._report_iteration(None, force=True)

    @contextmanager
    def _signals(self):
        def handler(signum, frame):
            self._stop_signal = signal.Signals(signum).name
            log.warning("%s received: finishing this step, saving a checkpoint, then stopping", self._stop_signal)

        if threading.current_thread() is not threading.main_thread():
            yield
            return
        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)

    def run(self) -> LoopState:
        """Train until the epochs or minutes run out, or a signal arrives (state.stopped_by is set)."""
        self.net.train()
        with self._signals():
            if self.budget is not None:
                if self.state.train_started_s is None:
                    self.state.train_started_s = self.clock.elapsed()
                self.clock.begin_training(self.state.train_started_s)
                left = self.budget.train_end() - time.monotonic()
                log.info("time budget: %.0f s used before training, %.0f s of training, %.0f s kept for the final "
                         "validation and the bundle", self.clock.elapsed(), max(left, 0.0), self.budget.reserve())
            while not self._done():
                if self.state.epoch_started_s is None:
                    self.state.epoch_started_s = self.clock.elapsed()
                while not self._epoch_full():
                    loss = self._step()
                    if self._stop_signal is not None:
                        break
                    self.state.iteration += 1
                    if loss is not None:
                        self.state.loss_sum += loss
                        self.state.loss_count += 1
                    self._report_iteration(loss)
                    if self._out_of_time():
                        log.info("time budget of %.1f min reached: ending training", self.cfg.minutes)
                        break
                if self._stop_signal is not None:
                    self.state.stopped_by = self._stop_signal
                    self.state.elapsed_s = self.clock.elapsed()
                    self.save_latest()  # mid-epoch: --resume continues this very epoch
                    return self.state
                self._end_epoch(final=self._out_of_time() or (self.cfg.epochs is not None
                                                               and self.state.epoch + 1 >= self.cfg.epochs))
        return self.state


def _grad_scaler():
    if hasattr(torch, "amp") and hasattr(torch.amp, "GradScaler"):  # torch >= 2.3
        return torch.amp.GradScaler("cuda")
    return torch.cuda.amp.GradScaler()


def load_best(work: Path) -> dict:
    return checkpoint.load(work / checkpoint.BEST)["model"]


def seed_everything(seed: int, rank: int) -> None:
    torch.manual_seed(seed * 1000 + rank)
    np.random.seed((seed * 1000 + rank) % 2**32)
