"""`mednextv2 train` end to end: dataset -> check -> plan -> cache -> train -> bundle.

Each stage lives in its own module; this one only wires them, once per process (torchrun
starts one per GPU; rank 0 plans, caches, validates and writes, the others follow).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from mednextv2.atomic import sha256_file, write_bytes
from mednextv2.bundle import Bundle, load_bundle
from mednextv2.devices import autocast_dtype
from mednextv2.errors import Cancelled, InputError, ResourceError
from mednextv2.inference.preprocessing import anisotropic_axis
from mednextv2.locks import FileLock
from mednextv2.network import MedNeXt
from mednextv2.progress import make_progress, null_progress
from mednextv2.store.amaes import describe, is_checkpoint_file, load_encoder, read_amaes
from mednextv2.threads import ThreadPolicy
from mednextv2.train import checkpoint, distributed, epochs, output
from mednextv2.train.augment import AugmentConfig
from mednextv2.train.checks import validate_dataset
from mednextv2.train.datasets import Case, discover_dataset
from mednextv2.train.epochs import EpochRecord
from mednextv2.train.finetune import init_from_base
from mednextv2.train.fingerprint import make_fingerprint
from mednextv2.train.loop import LoopConfig, Trainer, TrainerParts, load_best, seed_everything
from mednextv2.train.loss import DiceCELoss
from mednextv2.train.memory import cuda_voxel_budget
from mednextv2.train.optim import make_optimizer
from mednextv2.train.options import DEFAULT_VAL_FRACTION, ITERATIONS_PER_EPOCH, MIN_CASES_TO_HOLD_OUT, TrainOptions
from mednextv2.train.planning import (TrainingPlan, plan_from_amaes, plan_from_base, plan_from_dict, plan_from_scratch,
                                      plan_to_dict)
from mednextv2.train.preprocessed import build_cache
from mednextv2.train.sampler import PatchSampler, Prefetcher

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
# The options that define a run: --resume continues with the values the run started with.
RUN_OPTIONS = ("base", "preset", "patch", "spacing", "batch_size", "val_fraction", "val_cases", "seed", "lr",
               "encoder_lr_scale", "iterations", "elastic")


@dataclass(frozen=True)
class TrainResult:
    bundle: Optional[Path]  # None on ranks other than 0
    epochs: int
    best_epoch: int
    dice: Dict[str, float]
    history: Tuple[EpochRecord, ...]
    seconds: float


def split_cases(cases: Sequence[Case], val_names: Sequence[str], fraction: Optional[float], seed: int,
                background_only: Sequence[str] = ()) -> Tuple[List[Case], List[Case]]:
    """Training and held-out cases: `val_names` if given, else `fraction` of them (None: the default rule)."""
    names = [c.name for c in cases]
    if fraction is None and not val_names:
        with_foreground = len(cases) - len(background_only)
        fraction = DEFAULT_VAL_FRACTION if with_foreground >= MIN_CASES_TO_HOLD_OUT else 0.0
        if not fraction:
            log.warning("%d case(s) with foreground: all are trained on and none is held out for validation (the "
                        "default holds out 20%% from %d up); the final model is kept. Pass --val-cases or "
                        "--val-fraction to hold some out anyway", with_foreground, MIN_CASES_TO_HOLD_OUT)
    if val_names:
        unknown = [n for n in val_names if n not in names]
        if unknown:
            raise InputError(f"--val-cases {', '.join(unknown)}: no such case; the dataset has {', '.join(names)}")
        empty = [n for n in val_names if n in background_only]
        if empty:
            raise InputError(f"--val-cases {', '.join(empty)}: the label map is background only, so its Dice is "
                             "undefined and cannot judge the model; hold out a case with foreground")
        chosen = set(val_names)
    elif fraction > 0 and len(cases) - len(background_only) > 1:
        # Background-only cases stay in training; one case with foreground does too.
        order = [i for i in np.random.default_rng(seed).permutation(len(cases)) if names[i] not in background_only]
        chosen = {names[i] for i in order[: min(len(order) - 1, max(1, int(round(fraction * len(cases)))))]}
    else:
        if fraction > 0:
            log.warning("only one case%s: no held-out validation; the final model is kept",
                        " with foreground" if background_only else "")
        chosen = set()
    train = [c for c in cases if c.name not in chosen]
    if not train:
        raise InputError("every case is held out for validation; leave at least one for training")
    return train, [c for c in cases if c.name in chosen]


def _load_base(ref: str) -> Bundle:
    """A bundle path, an installed model id, or a catalog id (downloaded and verified first)."""
    from mednextv2.store.catalog import resolve_model

    return load_bundle(resolve_model(ref))


def _make_plan(options: TrainOptions, data, device: torch.device) -> TrainingPlan:
    labels = data.labels
    if options.base and is_checkpoint_file(options.base):
        encoder = read_amaes(Path(options.base))
        fp = make_fingerprint(data, seed=options.seed)
        plan = plan_from_amaes(encoder, fp, labels, device.type, options.patch, options.spacing,
                               batch_size=options.batch_size)
        base = describe(encoder, sha256_file(options.base))
        return replace(plan, extra=dict(plan.extra, fingerprint=fp.to_dict(), base_source=str(options.base), base=base))
    if options.base:
        base = _load_base(options.base)
        return replace(plan_from_base(base.spec, labels, data.n_channels, options.patch, options.spacing,
                                      options.batch_size), extra={"base_source": str(options.base)})
    preset = options.preset or ("v2-base" if device.type == "cuda" else "v2-tiny")
    budget = None
    if device.type == "cuda" and not options.patch:
        budget = cuda_voxel_budget(preset, data.n_channels, len(labels) + 1, options.batch_size, device,
                                   options.checkpointing)
    fp = make_fingerprint(data, seed=options.seed)
    plan = plan_from_scratch(fp, labels, data.dataset.channels, preset, device.type, options.spacing, options.patch,
                             budget, options.batch_size)
    return replace(plan, extra=dict(plan.extra, fingerprint=fp.to_dict()))


def _as_json(value):
    return list(value) if isinstance(value, tuple) else value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _start_over(work: Path) -> str:
    return f"to start over instead, delete {work} (or give another -o or --work-dir) and run without --resume"


def _interrupted_plan(work: Path) -> TrainingPlan:
    path = work / PLAN_FILE
    if not path.exists() or not (work / checkpoint.LATEST).exists():
        raise InputError(f"--resume: no interrupted training in {work} (plan.json and {checkpoint.LATEST} are needed)")
    return plan_from_dict(json.loads(path.read_text(encoding="utf-8")))


def resumed_options(options: TrainOptions, recorded: Dict) -> TrainOptions:
    """The options of the interrupted run: an option left out keeps the run's value (logged); one
    given with another value is refused, as the plan, the split and the schedule rest on it."""
    defaults = {f.name: f.default for f in fields(TrainOptions)}
    changed, kept = [], {}
    for name in RUN_OPTIONS:
        if name not in recorded or _as_json(getattr(options, name)) == recorded[name]:
            continue
        if _as_json(getattr(options, name)) == _as_json(defaults[name]):
            kept[name] = tuple(recorded[name]) if isinstance(recorded[name], list) else recorded[name]
        else:
            changed.append(f"{_flag(name)} {_as_json(getattr(options, name))} (the run started with {recorded[name]})")
    if changed:
        raise InputError(f"--resume continues the interrupted run with its own settings, but {', '.join(changed)}. "
                         "Leave these options out to continue the run; " + _start_over(options.work_path))
    if kept:
        log.info("--resume keeps the interrupted run's %s", ", ".join(f"{_flag(k)} {_as_json(v)}" for k, v in kept.items()))
    return replace(options, **kept)


def _check_same_dataset(plan: TrainingPlan, data, digest: str, work: Path) -> None:
    """--resume on a dataset that changed would train new classes as background under the old labels."""
    then = plan.extra.get("dataset_sha256")
    labels_then = {s.value: s.name for s in plan.labels}
    if (then is None or then == digest) and labels_then == data.labels:
        return
    before, now = set(plan.extra.get("cases", ())), {c.name for c in data.dataset.cases}
    what = "; ".join(part for part in (
        f"case(s) added: {', '.join(sorted(now - before))}" if then and now - before else "",
        f"case(s) removed: {', '.join(sorted(before - now))}" if then and before - now else "",
        f"labels were {labels_then}, now {data.labels}" if labels_then != data.labels else "") if part) \
        or "the content of its image or label files differs"
    raise InputError(f"--resume: the dataset changed since the interrupted run in {work} started ({what}); "
                     "resuming would train on data the run's plan and labels do not describe. Restore the dataset "
                     "to continue; " + _start_over(work))


def _load_or_make_plan(options: TrainOptions, data, device, ctx, work: Path, digest: str) -> TrainingPlan:
    path = work / PLAN_FILE
    if options.resume:
        plan = _interrupted_plan(work)
        _check_same_dataset(plan, data, digest, work)
        return plan
    if (work / checkpoint.LATEST).exists():
        raise InputError(f"{work} holds the checkpoint of an earlier run: pass --resume to continue it, "
                         "or delete that folder to start over")
    plan = _make_plan(options, data, device) if ctx.is_main else None
    if plan is not None:
        plan = replace(plan, extra=dict(plan.extra, dataset_sha256=digest, cases=[c.name for c in data.dataset.cases],
                                        options={k: _as_json(getattr(options, k)) for k in RUN_OPTIONS}))
    plan = distributed.broadcast_object(ctx, plan)
    if ctx.is_main:
        write_bytes(path, json.dumps(plan_to_dict(plan), indent=1).encode("utf-8"))
    return plan


def _build_model(plan: TrainingPlan, options: TrainOptions, device: torch.device) -> MedNeXt:
    model = MedNeXt(plan.config.replace(deep_supervision=True))
    if plan.base_model and not options.resume and (plan.extra.get("base") or {}).get("format") == "amaes":
        load_encoder(model, read_amaes(Path(plan.extra["base_source"])))
    elif plan.base_model and not options.resume:
        base = _load_base(plan.extra.get("base_source", plan.base_model))
        init_from_base(model, base.load_state_dicts()[0], plan.labels, base.n_classes)
    if options.checkpointing:
        model.set_checkpointing(True)
    return model.to(device)


def run_training(options: TrainOptions) -> TrainResult:
    started = time.monotonic()
    threads = ThreadPolicy(options.threads)
    with threads.applied():
        return _train(options, threads, started)


def _train(options: TrainOptions, threads: ThreadPolicy, started: float) -> TrainResult:
    ctx = distributed.from_environment()
    device = distributed.device_for(options.device, ctx)
    threads.update()  # before planning and caching, which use torch too
    distributed.init(ctx, device)
    report = make_progress(options.progress) if ctx.is_main else null_progress
    work = options.work_path
    prefetch = None
    created = output.first_missing(work)  # the work folder, or a parent of it, this run will create
    lock = FileLock(work / output.WORK_LOCK, timeout=0)
    try:
        output.recover_interrupted_swap(Path(options.output))
        output.check_destinations(Path(options.output), work, Path(options.dataset), options.base)
        work.mkdir(parents=True, exist_ok=True)
        if ctx.is_main:
            _lock_work_folder(lock, options)
        data = validate_dataset(discover_dataset(options.dataset))
        if options.resume:
            options = resumed_options(options, _interrupted_plan(work).extra.get("options", {}))
        train_cases, val_cases = split_cases(data.dataset.cases, options.val_cases, options.val_fraction, options.seed,
                                             data.background_only)
        # The dataset's content hash, taken now: the bundle records what was trained on even if a
        # file is moved during training, and --resume refuses a dataset that changed.
        digest = output.dataset_digest(data.dataset.cases)
        log.info("%d training case(s), %d validation case(s): %s", len(train_cases), len(val_cases),
                 ", ".join(c.name for c in val_cases) or "none")
        report("check", 1.0, f"{len(data.dataset.cases)} case(s) valid")
        plan = _load_or_make_plan(options, data, device, ctx, work, digest)
        cache_dir = work / "cache"
        if ctx.is_main:
            build_cache(train_cases + val_cases, plan, cache_dir, report)
        distributed.barrier(ctx)  # the other ranks read what rank 0 wrote
        cached = {c.name: c for c in build_cache(train_cases + val_cases, plan, cache_dir)}
        seed_everything(options.seed, ctx.rank)
        model = _build_model(plan, options, device)
        net = model
        if ctx.enabled:
            net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = make_optimizer(model, options.lr, options.encoder_lr_scale)
        sampler = PatchSampler([cached[c.name] for c in train_cases], plan.patch_size, plan.batch_size,
                               seed=options.seed * 1000 + ctx.rank)
        prefetch = Prefetcher(sampler, pin_memory=device.type == "cuda")
        nearest = _thick_slice_axis(plan.target_spacing)
        cfg = LoopConfig(patch=plan.patch_size, iterations=options.iterations or ITERATIONS_PER_EPOCH.get(device.type, 50),
                         epochs=options.epochs_or_default(), minutes=options.minutes, lr=options.lr,
                         grad_clip=options.grad_clip, val_every=options.val_every,
                         amp_dtype=autocast_dtype(device) if options.precision == "auto" else None,
                         augment=AugmentConfig(in_plane_axis=nearest, mirror_axes=plan.mirror_axes,
                                               p_elastic=0.2 if options.elastic else 0.0))
        trainer = Trainer(TrainerParts(
            model=model, net=net, optimizer=optimizer, loss_fn=DiceCELoss(), batches=prefetch, cfg=cfg, ctx=ctx,
            device=device, val_cases=[cached[c.name] for c in val_cases], label_names=[s.name for s in plan.labels],
            work=work, report=report, seed=options.seed, started=started, threads=threads))
        if options.resume:
            trainer.load_state_dict(checkpoint.load(work / checkpoint.LATEST))
            log.info("resuming after epoch %d, iteration %d", trainer.state.epoch, trainer.state.iteration)
        state = trainer.run()
        bundle = None
        best = epochs.find(state.history, state.best_epoch)
        dice = dict(best.dice) if best else {}
        if ctx.is_main and state.epoch > 0:
            bundle = _export(options, plan, work, state, best, train_cases, val_cases, ctx, device)
        distributed.barrier(ctx)
        if state.stopped_by:
            raise Cancelled(f"training stopped by {state.stopped_by} at epoch {state.epoch + 1}, iteration "
                            f"{state.iteration}; checkpoint saved in {work}. Continue with the same command and --resume"
                            + (f"; the best model so far is in {bundle}" if bundle else ""))
        report("done", 1.0, f"model bundle {bundle}" if bundle else "done")
        return TrainResult(bundle, state.epoch, state.best_epoch, dice, tuple(state.history), time.monotonic() - started)
    except (InputError, ResourceError):
        if created is not None and ctx.is_main:
            lock.release()  # first: Windows cannot delete a locked file
            output.discard_unused_work(work, created)
        raise
    finally:
        if prefetch is not None:
            prefetch.close()
        lock.release()
        distributed.shutdown(ctx)


def _lock_work_folder(lock: FileLock, options: TrainOptions) -> None:
    """One run per work folder: two would share checkpoints and cache, and each would report
    the bundle the other overwrote. The OS releases the lock when a run dies."""
    try:
        lock.acquire()
    except ResourceError as e:
        raise InputError(f"another `mednextv2 train` is running with the work folder {options.work_path} (-o "
                         f"{options.output}); wait for it to finish, or give another -o or --work-dir") from e
    except OSError as e:
        raise InputError(f"work folder {options.work_path} is not writable ({e.strerror}); give another -o or "
                         "--work-dir") from e


def _thick_slice_axis(spacing: Sequence[float]) -> Optional[int]:
    """Rotate only in-plane when slices are > 3x thicker than the in-plane spacing (nnU-Net's dummy 2D)."""
    return None if spacing is None else anisotropic_axis(spacing)


def _export(options, plan, work, state, best_record, train_cases, val_cases, ctx, device) -> Path:
    metrics = {"dice": dict(best_record.dice) if best_record else {},
               "mean_dice": best_record.mean_dice if best_record else None, "epoch": state.best_epoch,
               "validation_cases": [c.name for c in val_cases]}
    source = Path(options.dataset).resolve()  # a folder, or its dataset.json
    training = {"dataset": (source.parent if source.is_file() else source).name,
                "dataset_sha256": plan.extra.get("dataset_sha256") or output.dataset_digest([*train_cases, *val_cases]),
                "n_train_cases": len(train_cases),
                "preset": plan.extra.get("preset"), "epochs": state.epoch,
                "iterations_per_epoch": state.history[-1].iterations if state.history else None,
                "patch_size": list(plan.patch_size), "batch_size": plan.batch_size, "world_size": ctx.world_size,
                "device": device.type, "lr": options.lr, "seconds": round(state.elapsed_s, 1),
                "skipped_steps": state.skipped_steps}
    if plan.extra.get("base"):
        training["base"] = plan.extra["base"]  # the base file: its name and checksum, never its path
    path = output.write_bundle(Path(options.output), plan, load_best(work), metrics, training, options.title)
    output.attach_reports(path, work)
    return path
