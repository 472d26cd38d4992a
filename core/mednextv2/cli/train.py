"""`mednextv2 train DATASET -o OUTPUT_BUNDLE ...`: fine-tune or train MedNeXt-v2 on labeled volumes."""
from __future__ import annotations

import argparse
import logging

from mednextv2.progress import MODES

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
    p = subparsers.add_parser("train", help="fine-tune or train a model on labeled volumes",
                              description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", help="dataset folder or .json/.csv list of image/label pairs")
    p.add_argument("-o", "--output", required=True, help="output model bundle (folder, or .zip)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--base", help="bundle path or catalog id to fine-tune from (keeps its preprocessing)")
    start.add_argument("--preset", help="architecture to train from scratch (v2-tiny, v2-base, ...; "
                                        "default v2-base on CUDA, v2-tiny elsewhere)")
    p.add_argument("--minutes", type=float, help="time budget; training ends gracefully when it runs out")
    p.add_argument("--epochs", type=int, help="number of epochs (default 100 unless --minutes is given)")
    p.add_argument("--iterations", type=int, help="iterations per epoch (default 250 on CUDA, 50 on the CPU)")
    p.add_argument("--patch", type=int, nargs=3, metavar=("Z", "Y", "X"), help="patch size, multiples of 16")
    p.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                   help="target spacing in mm (default: the dataset median, or the base model's)")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-fraction", type=float, default=0.2, help="fraction of cases held out (default 0.2)")
    val.add_argument("--val-cases", nargs="+", default=(), metavar="NAME", help="case names held out for validation")
    p.add_argument("--val-every", type=int, help="validate every N epochs and after the last (default: as often as "
                                                 "keeps validation under ~20%% of the time)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--progress", choices=MODES, default="bar")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of AdamW (default 1e-3)")
    p.add_argument("--encoder-lr-scale", type=float, default=1.0,
                   help="encoder learning rate as a fraction of --lr; 0 freezes the encoder (default 1)")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing: less memory, slower")
    p.add_argument("--precision", choices=("auto", "fp32"), default="auto",
                   help="auto: bf16 (else fp16) autocast on CUDA, fp32 elsewhere")
    p.add_argument("--elastic", action="store_true", help="add elastic deformation to the augmentation")
    p.add_argument("--work-dir", help="folder for cache, checkpoints and metrics (default OUTPUT.training)")
    p.add_argument("--title", help="model title written into the bundle")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: the cores free now)")
    p.set_defaults(func=run)


def options_from_args(args):
    from mednextv2.train.options import TrainOptions

    return TrainOptions(
        dataset=args.dataset, output=args.output, base=args.base, preset=args.preset, minutes=args.minutes,
        epochs=args.epochs, iterations=args.iterations, patch=tuple(args.patch) if args.patch else None,
        spacing=tuple(args.spacing) if args.spacing else None, batch_size=args.batch_size, device=args.device,
        val_fraction=args.val_fraction, val_cases=tuple(args.val_cases), val_every=args.val_every,
        resume=args.resume, seed=args.seed, progress=args.progress, lr=args.lr,
        encoder_lr_scale=args.encoder_lr_scale, checkpointing=args.checkpointing, precision=args.precision,
        elastic=args.elastic, work_dir=args.work_dir, title=args.title, threads=args.threads)


def run(args) -> int:
    from mednextv2.train import run_training

    result = run_training(options_from_args(args))
    if result.bundle is not None:
        dice = ", ".join(f"{k} {v:.3f}" for k, v in result.dice.items() if v is not None) or "no validation"
        print(f"model bundle: {result.bundle}\nbest epoch {result.best_epoch} of {result.epochs}; "
              f"validation Dice: {dice}; {result.seconds:.0f} s")
    return 0
