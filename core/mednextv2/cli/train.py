"""`mednextv2 train DATASET -o OUTPUT_BUNDLE ...`: fine-tune or train MedNeXt-v2 on labeled volumes."""
from __future__ import annotations

import argparse
import logging

from mednextv2.cli.dataclass_args import add_dataclass_arguments, dataclass_from_args

log = logging.getLogger(__name__)

EPILOG = """\
DATASET is one of:
  an nnU-Net raw folder (dataset.json, imagesTr/<case>_0000.nii.gz, labelsTr/<case>.nii.gz);
  a folder of pairs: <case>_image.nii.gz + <case>_label.nii.gz (or _seg, _mask, .seg.nrrd),
    or images/ + labels/ subfolders with equal file names;
  a .json list ({"labels": {"1": "liver"}, "cases": [{"image": ..., "label": ...}]})
    or a .csv list (columns image, label[, name]).
Checkpoints, the preprocessed cache and metrics go to OUTPUT_BUNDLE.training/ (see --work-dir);
--resume continues from there. Several GPUs: torchrun --nproc_per_node N -m mednextv2 train ...
"""


def add_parser(subparsers) -> None:
    from mednextv2.train.options import TrainOptions

    p = subparsers.add_parser("train", help="fine-tune or train a model on labeled volumes",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dataclass_arguments(p, TrainOptions)  # every option is a TrainOptions field
    p.set_defaults(func=run)


def options_from_args(args):
    from mednextv2.train.options import TrainOptions

    return dataclass_from_args(TrainOptions, args)


def run(args) -> int:
    from mednextv2.train import run_training

    result = run_training(options_from_args(args))
    if result.bundle is not None:
        dice = ", ".join(f"{k} {v:.3f}" for k, v in result.dice.items() if v is not None) or "no validation"
        print(f"model bundle: {result.bundle}\nbest epoch {result.best_epoch} of {result.epochs}; "
              f"validation Dice: {dice}; {result.seconds:.0f} s")
    return 0
