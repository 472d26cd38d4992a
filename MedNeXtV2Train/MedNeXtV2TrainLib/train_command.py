"""The `mednextv2 train` command line for a set of wizard settings."""
from __future__ import annotations

from typing import List, Optional

from MedNeXtV2SegmentLib.command import engine_command
from MedNeXtV2TrainLib.settings import TrainSettings


class SettingsError(ValueError):
    """Settings that cannot make a valid command; the message lists every problem."""


def train_arguments(settings: TrainSettings, dataset: str, output_bundle: str, resume: bool = False,
                    threads: Optional[int] = None) -> List[str]:
    """Arguments after the program: `train DATASET -o OUTPUT [...] --progress json`."""
    problems = settings.problems()
    if problems:
        raise SettingsError(" ".join(problems))
    args = ["train", str(dataset), "-o", str(output_bundle)]
    if settings.base_model:
        args += ["--base", settings.base_model]
    else:
        args += ["--preset", settings.architecture]
    if settings.minutes is not None:
        args += ["--minutes", str(settings.minutes)]
    else:
        args += ["--epochs", str(settings.epochs)]
    if settings.iterations is not None:
        args += ["--iterations", str(settings.iterations)]
    if settings.patch_size is not None:
        args += ["--patch"] + [str(side) for side in settings.patch_size]
    args += ["--device", settings.device]
    if settings.val_fraction is not None:
        args += ["--val-fraction", f"{settings.val_fraction:g}"]
    if settings.seed is not None:
        args += ["--seed", str(settings.seed)]
    args += ["--title", settings.model_name.strip()]
    if resume:
        args.append("--resume")
    if threads is not None:
        args += ["--threads", str(int(threads))]
    return args + ["--progress", "json"]


def train_command(python: str, settings: TrainSettings, dataset: str, output_bundle: str,
                  resume: bool = False, threads: Optional[int] = None) -> List[str]:
    """The full command: `python` is PythonSlicer inside Slicer (see MedNeXtV2SegmentLib.command)."""
    return engine_command(python, *train_arguments(settings, dataset, output_bundle, resume, threads))
