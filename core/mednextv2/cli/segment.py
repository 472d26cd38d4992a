"""`mednextv2 segment INPUT... -m MODEL -o OUTPUT`: segment one case, or a folder of cases.

One case: INPUT is one file or DICOM folder per model channel; OUTPUT a .seg.nrrd or a labelmap
(.nii.gz/.nii/.nrrd/.mha, with OUTPUT-stem.labels.json beside it).
Batch: INPUT is one folder of image files and OUTPUT an existing folder; the model loads once.
Under torchrun each rank takes its share of the cases (segmentation.segment_folder).
--uncertainty MAP writes the per-voxel uncertainty map (a folder in batch mode: CASE.uncertainty.nrrd
each); --statistics FILE.csv|FILE.json a row per segment (and case) with volume, intensity, confidence.
Exit codes: 0 success, 2 bad input, 3 out of resources, 130 cancelled.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from mednextv2.cli.dataclass_args import add_dataclass_arguments, dataclass_from_args
from mednextv2.errors import InputError
from mednextv2.inference import image_io
from mednextv2.inference.options import SegmentOptions
from mednextv2.output_guard import resolved
from mednextv2.progress import make_progress, with_rank

log = logging.getLogger(__name__)


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "segment", help="segment images with a model bundle",
        description="Segment CT/MR images. Output lies exactly on the input's grid. "
                    "Exit codes: 0 success, 2 bad input, 3 out of resources, 130 cancelled.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image file(s) or DICOM folder, one per model channel; or one folder of images (batch)")
    p.add_argument("-m", "--model", required=True, metavar="MODEL", help="a model bundle folder (model.json + weights) or its .zip; or the id of an installed model, or "
                        "of a catalog model (downloaded on first use): `mednextv2 models list` shows both")
    p.add_argument("-o", "--output", required=True, metavar="OUTPUT",
                   help="output .seg.nrrd, or labelmap .nii.gz/.nii/.nrrd/.mha; a folder in batch mode")
    add_dataclass_arguments(p, SegmentOptions)  # every option of a run is a SegmentOptions field
    p.add_argument("--format", default="seg.nrrd", choices=("seg.nrrd", "nii.gz", "nrrd", "mha"),
                   help="output file type in batch mode (default seg.nrrd)")
    p.add_argument("--skip-done", action="store_true",
                   help="batch mode: skip the cases the engine recorded as finished with this model and these "
                        "options (OUTPUT/.mednextv2-run/CASE.json) whose outputs are unchanged; redo the rest")
    p.set_defaults(func=run)
    return p


def _is_batch(inputs) -> bool:
    if len(inputs) != 1 or not Path(inputs[0]).is_dir():
        return False
    return any(image_io.is_image_file(p) for p in Path(inputs[0]).iterdir())


def run(args: argparse.Namespace) -> int:
    from mednextv2.inference.pipeline import Segmenter, check_destination, read_case, segment_folder
    from mednextv2.train import distributed

    shard = distributed.from_environment()  # torchrun's RANK / WORLD_SIZE; no process group is needed
    progress = make_progress(args.progress)
    device = args.device
    if shard.enabled:
        progress = with_rank(progress, shard.rank)
        device = str(distributed.device_for(args.device, shard))  # one GPU per rank: cuda:LOCAL_RANK
    options = dataclass_from_args(SegmentOptions, args, device=device, progress=progress)
    extras = [(what, path) for what, path in (("--uncertainty", args.uncertainty), ("--statistics", args.statistics))
              if path is not None]
    for what, path in [("input", p) for p in args.inputs] + [("output", args.output), ("model", args.model)] + extras:
        resolved(path, what)  # a symbolic link loop: said plainly, before anything else
    if _is_batch(args.inputs):
        written = segment_folder(args.inputs[0], args.model, args.output, "." + args.format, options,
                                 skip_done=args.skip_done, shard=shard)
        log.info("segmented %d case(s) into %s", len(written), args.output)
        return 0
    if args.skip_done:
        raise InputError("--skip-done needs a folder of cases as INPUT (batch mode); one case is always segmented")
    if shard.enabled:
        raise InputError(f"{shard.world_size} ranks (torchrun) share out the cases of a folder; INPUT is one case: "
                         "give a folder of image files, or run without torchrun")
    # Every refusal before the model loads (or downloads): the outputs, then the inputs.
    output = check_destination(args.output, options, args.inputs)
    case = read_case(args.inputs)
    segmenter = Segmenter(args.model, options)
    segmenter.segment_to_file(case, output)
    log.info("wrote %s", output)
    return 0
