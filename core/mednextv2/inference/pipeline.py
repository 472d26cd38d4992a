"""Segmentation pipeline: read -> preprocess -> sliding window -> back to the input grid -> export.

`segment(image_or_path, model, **options)` segments one case and returns a SimpleITK labelmap on
exactly the input's grid. `Segmenter` holds a loaded model for many cases; `segment_folder` is
the batch mode (one model load for a folder of cases).
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import SimpleITK as sitk

from mednextv2 import stop_request
from mednextv2.bundle import Bundle, Label, load_bundle
from mednextv2.devices import resolve_device
from mednextv2.errors import InputError, ResourceError
from mednextv2.inference import export, image_io, postprocessing, preprocessing, run_record, statistics
from mednextv2.inference.finishing import LabelFinisher
from mednextv2.inference.options import UNCERTAINTY_CASE_SUFFIX, SegmentOptions, check_step
from mednextv2.inference.sliding_window import SlidingWindowPredictor
from mednextv2.output_guard import refuse_same_outputs, refuse_writing_over_inputs, same_path
from mednextv2.progress import null_progress
from mednextv2.ranks import DistContext as Shard

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
ImageInput = Union[sitk.Image, PathLike]
ModelInput = Union[Bundle, PathLike]
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def resolve_bundle(model: ModelInput, progress: Callable[..., None] = null_progress) -> Bundle:
    """A Bundle from a Bundle, a bundle folder/zip path, or an installed or catalog model id."""
    if isinstance(model, Bundle):
        return model
    from mednextv2.store.catalog import resolve_model

    return load_bundle(resolve_model(model, progress=progress))


@dataclass(frozen=True)
class InputCase:
    """One case's images (one per model channel), read and checked, with the names messages use."""
    images: Tuple[sitk.Image, ...]
    names: Tuple[str, ...]
    paths: Tuple[Path, ...]  # the files or folders they were read from (not the in-memory images)


def read_case(image_or_path: Union[ImageInput, Sequence[ImageInput], InputCase]) -> InputCase:
    """Read and check one case's images before any model is loaded or downloaded: a missing,
    unreadable or off-grid input is refused first (docs/promise.md)."""
    if isinstance(image_or_path, InputCase):
        return image_or_path
    items = list(image_or_path) if isinstance(image_or_path, (list, tuple)) else [image_or_path]
    images, names, paths = [], [], []
    for i, item in enumerate(items):
        if isinstance(item, sitk.Image):
            image_io.validate_image(item, f"input image {i}")
            images.append(item)
            names.append(f"input image {i}")
        else:
            images.append(image_io.read_image(item))
            names.append(str(item))
            paths.append(Path(item))
    for name, image in zip(names[1:], images[1:]):
        if not image_io.same_grid(images[0], image):
            raise InputError(f"{name}: channel is not on the grid of {names[0]} (size, origin, spacing or "
                             "direction differ); resample the channels onto one grid first")
    for name, image in zip(names, images):
        image_io.warn_if_label_map(image, name)
    return InputCase(tuple(images), tuple(names), tuple(paths))


def inference_settings(bundle: Bundle, opts: SegmentOptions) -> Tuple[float, Tuple[Tuple[int, ...], ...]]:
    """The tile step and each fold's mirror axes a run uses: the options over the bundle's defaults."""
    step = check_step(bundle.inference.step, f"model {bundle.id}: inference step") if opts.step is None else opts.step
    mirror = bundle.inference.mirror_axes_per_fold(len(bundle.weights)) if opts.tta and not opts.fast else ()
    return step, mirror


class Segmenter:
    """A loaded model ready to segment many cases with the same options."""

    def __init__(self, model: ModelInput, options: Optional[SegmentOptions] = None, **kwargs) -> None:
        self.options = options or SegmentOptions(**kwargs)
        opts = self.options
        self._report = stop_request.checked(opts.progress)  # each report is also a cancel point
        self.bundle = resolve_bundle(model, opts.progress)
        self.labels: List[Label] = list(self.bundle.labels)
        if opts.structures:
            self.labels = postprocessing.select_structures(self.labels, opts.structures)
        inference = self.bundle.inference
        step, mirror = inference_settings(self.bundle, opts)
        tta = bool(mirror)
        device = resolve_device(opts.device)
        self.predictor = SlidingWindowPredictor(self.bundle.build_models("cpu"), self.bundle.n_classes,
                                                inference.patch_size, step, mirror, device,
                                                opts.tile_batch, progress=self._report, threads=opts.threads,
                                                importance_map=inference.importance_map)
        log.info("model %s: %d fold(s), %d class(es), device %s, TTA %s, step %.2f%s", self.bundle.id,
                 len(self.bundle.weights), self.bundle.n_classes, device, "on" if tta and inference.mirror_axes else "off", step,
                 ", fast mode" if opts.fast else "")

    def __call__(self, image_or_path: Union[ImageInput, Sequence[ImageInput], InputCase]) -> sitk.Image:
        """Segment one case (one image per model channel, or a `read_case` result); a uint8
        labelmap on the input grid."""
        return self._segment_case(image_or_path, False)[0]

    def segment_with_uncertainty(self, image_or_path: Union[ImageInput, Sequence[ImageInput], InputCase]
                                 ) -> Tuple[sitk.Image, sitk.Image]:
        """`self(case)` and its uncertainty map: float32 in [0, 1] on the same grid,
        `preprocessing.class_uncertainty` of the class probabilities (docs/uncertainty.md); no extra
        network pass."""
        return self._segment_case(image_or_path, True)

    def _segment_case(self, image_or_path, with_uncertainty: bool):
        images = list(read_case(image_or_path).images)
        if len(images) != self.bundle.in_channels:
            raise InputError(f"model {self.bundle.id} takes {self.bundle.in_channels} input channel(s) "
                             f"({', '.join(n for n, _ in self.bundle.channels)}), got {len(images)} image(s)")
        try:
            return self._segment(images, with_uncertainty)
        except MemoryError as e:
            raise ResourceError("out of memory (RAM) while segmenting; try --fast or a machine with more memory") from e

    def _segment(self, images: List[sitk.Image], with_uncertainty: bool = False) -> Tuple[sitk.Image, Optional[sitk.Image]]:
        opts, plan, report = self.options, self.bundle.preprocessing, self._report
        report("preprocess", 0.0, "reading and resampling")
        spacing = None
        if opts.fast:
            spacing = preprocessing.fast_spacing(plan, self.bundle.inference.fast_spacing,
                                                 preprocessing.oriented_spacing_of(images[0], plan))
        pre = preprocessing.preprocess(images, plan, spacing)
        report("preprocess", 1.0, f"network grid {pre.record.network_shape}")
        # Rows of the stitched scores go back to the input grid as soon as no later tile touches
        # them, so neither the whole grid's scores nor their float32 copy ever exist.
        finisher = LabelFinisher(pre.record, self.bundle.n_classes, with_uncertainty=with_uncertainty)
        self.predictor.predict(pre.data, sink=finisher)
        del pre
        report("postprocess", 0.0, "back to the input grid")
        labels = finisher.result()
        uncertainty = finisher.uncertainty() if with_uncertainty else None
        values = [lab.value for lab in self.labels]
        if opts.structures:
            postprocessing.keep_values(labels, values)
        if opts.largest_component:
            postprocessing.keep_largest_component(labels, values)
        out = sitk.GetImageFromArray(labels)
        out.CopyInformation(images[0])
        if uncertainty is not None:
            uncertainty = sitk.GetImageFromArray(uncertainty)  # copies a strided view itself
            uncertainty.CopyInformation(images[0])
        report("postprocess", 1.0, "done")
        return out, uncertainty

    def segment_to_file(self, inputs: Union[ImageInput, Sequence[ImageInput], InputCase], output: PathLike) -> Path:
        """Segment one case into `output`, with the options' uncertainty map and statistics files."""
        sources = _sources(inputs)
        output = check_destination(output, self.options, sources)
        path, rows = self.write_case(inputs, output, self.options.uncertainty, case_name(sources),
                                     self.options.statistics is not None)
        if self.options.statistics is not None:
            statistics.write_statistics(rows, self.options.statistics)
        return path

    def write_case(self, inputs: Union[ImageInput, Sequence[ImageInput], InputCase], output: PathLike,
                   uncertainty: Optional[PathLike] = None, case: str = "",
                   with_statistics: bool = False) -> Tuple[Path, List[dict]]:
        """Segment one case and write the result (and the uncertainty map to `uncertainty`); the
        statistics rows of the case when `with_statistics` (else none). Outputs checked by the caller."""
        case_images = read_case(inputs)
        with_map = uncertainty is not None or with_statistics
        labelmap, unc = self._segment_case(case_images, with_map)
        confidence = None
        if unc is not None:
            confidence = statistics.mean_confidence(sitk.GetArrayViewFromImage(labelmap), sitk.GetArrayViewFromImage(unc),
                                                    [lab.value for lab in self.labels], self.bundle.n_classes)
        self.options.progress("export", 0.0, f"writing {Path(output).name}")
        if uncertainty is not None:
            export.write_uncertainty_map(unc, uncertainty)
        path = export.write_result(labelmap, self.labels, output, confidence)
        rows = (statistics.segment_statistics(labelmap, self.labels, case_images.images[0], unc, self.bundle.n_classes, case)
                if with_statistics else [])
        self.options.progress("export", 1.0, str(path))
        return path, rows


def _sources(inputs) -> List[Path]:
    """The input files and folders of a case (none for in-memory images)."""
    if isinstance(inputs, InputCase):
        return list(inputs.paths)
    items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    return [Path(i) for i in items if not isinstance(i, sitk.Image)]


def case_name(sources: Sequence[PathLike]) -> str:
    """The case's name in statistics: the first input's file name without its image extension
    (a DICOM folder's name); "" for in-memory images."""
    if not sources:
        return ""
    path = Path(sources[0])
    suffix = export.known_suffix(path) if path.is_file() or path.suffix else ""
    return path.name[: len(path.name) - len(suffix)] if suffix else path.name


def check_destination(output: PathLike, options: SegmentOptions, sources: Sequence[PathLike]) -> Path:
    """Every refusal about one case's outputs, before any model loads: `output` is a file name of a
    known type in a folder that takes files; the uncertainty map and statistics files likewise
    (files, not folders, here); none over an input or over another output. Returns `output`."""
    output = Path(output)
    if output.is_dir():
        raise InputError(f"output {output} is a folder; give a file name (.seg.nrrd, .nii.gz, .nrrd)")
    export.output_kind(output)
    image_io.check_output_writable(output)
    named = [("-o", f) for f in export.result_files(output)]
    for what, extra in (("--uncertainty", options.uncertainty), ("--statistics", options.statistics)):
        if extra is None:
            continue
        if Path(extra).is_dir():
            raise InputError(f"{what} {extra} is a folder; for one case give a file name")
        image_io.check_output_writable(extra)
        named.append((what, Path(extra)))
    refuse_same_outputs(named)
    refuse_writing_over_inputs([path for _, path in named], sources)
    return output


def segment(image_or_path: Union[ImageInput, Sequence[ImageInput]], model: ModelInput, **options) -> sitk.Image:
    """Segment one case: a labelmap (uint8 SimpleITK image) on exactly the input's grid.

    `image_or_path`: a SimpleITK image, a file or DICOM folder path, or a list of them (one per
    model channel). `model`: a Bundle, a bundle folder/zip, or a catalog id. Options: see
    SegmentOptions (device, tta, step, fast, structures, largest_component, tile_batch, progress).
    """
    options = SegmentOptions(**options)
    _refuse_file_options(options, "segment()")
    case = read_case(image_or_path)  # the inputs are refused before a model is loaded or downloaded
    return Segmenter(model, options)(case)


def segment_with_uncertainty(image_or_path: Union[ImageInput, Sequence[ImageInput]], model: ModelInput,
                             **options) -> Tuple[sitk.Image, sitk.Image]:
    """`segment`, and the uncertainty map on the same grid (see `Segmenter.segment_with_uncertainty`)."""
    options = SegmentOptions(**options)
    _refuse_file_options(options, "segment_with_uncertainty()")
    case = read_case(image_or_path)
    return Segmenter(model, options).segment_with_uncertainty(case)


def _refuse_file_options(options: SegmentOptions, where: str) -> None:
    if options.uncertainty is not None or options.statistics is not None:
        raise InputError(f"{where} returns images and writes no files: the uncertainty and statistics options name "
                         "files for Segmenter.segment_to_file, segment_folder or the command line")


def find_cases(folder: PathLike, n_channels: Optional[int]) -> Dict[str, List[Path]]:
    """Cases of a folder: each image file, or with several channels nnU-Net's CASE_0000, CASE_0001...
    `n_channels` None (the model is not loaded yet): as the file names say, channel counts unchecked."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if image_io.is_image_file(p) and not _own_uncertainty_map(p))
    cases: Dict[str, List[Path]] = {}
    for path in files:
        stem = path.name[: -len(export.known_suffix(path))] if export.known_suffix(path) else path.stem
        match = _CHANNEL_SUFFIX.match(stem)
        if (n_channels or 1) > 1 or match:
            if not match:
                raise InputError(f"{path}: with a {n_channels}-channel model, name files CASE_0000, CASE_0001, ...")
            cases.setdefault(match.group("case"), []).append(path)
        elif stem in cases:
            raise InputError(f"{folder}: {cases[stem][0].name} and {path.name} are both case {stem}; "
                             "keep one of them (or move earlier results out of the folder)")
        else:
            cases[stem] = [path]
    for case, paths in cases.items():
        if n_channels is not None and len(paths) != n_channels:
            raise InputError(f"case {case} in {folder}: {len(paths)} channel file(s), the model takes {n_channels}")
    if not cases:
        raise InputError(f"{folder}: no image files ({', '.join(image_io.IMAGE_SUFFIXES)}) to segment")
    return cases


def _own_uncertainty_map(path: Path) -> bool:
    """A map an earlier batch wrote into this folder: not a case (its marker decides; the name only
    spares reading every file's header)."""
    if not path.name.lower().endswith(UNCERTAINTY_CASE_SUFFIX) or not export.is_uncertainty_map(path):
        return False
    log.info("%s: an uncertainty map this engine wrote, not a case; skipped", path.name)
    return True


def _batch_outputs(cases: Dict[str, List[Path]], output_dir: Path, output_suffix: str,
                   options: SegmentOptions) -> List[Tuple[str, Path]]:
    """Every file a batch writes, named by its option."""
    named = [("-o", f) for case in cases for f in export.result_files(output_dir / f"{case}{output_suffix}")]
    if options.uncertainty is not None:
        named += [("--uncertainty", Path(options.uncertainty) / f"{case}{UNCERTAINTY_CASE_SUFFIX}") for case in cases]
    if options.statistics is not None:
        named.append(("--statistics", Path(options.statistics)))
    return named


def _refuse_batch(cases: Dict[str, List[Path]], input_dir: PathLike, output_dir: Path, output_suffix: str,
                  options: SegmentOptions) -> None:
    """Outputs may share the input folder only where no written name is an input's name, and no
    two outputs may be one file."""
    named = _batch_outputs(cases, output_dir, output_suffix, options)
    refuse_same_outputs(named)
    refuse_writing_over_inputs([path for _, path in named], [input_dir])


def segment_folder(input_dir: PathLike, model: ModelInput, output_dir: PathLike,
                   output_suffix: str = export.SEG_SUFFIX, options: Optional[SegmentOptions] = None,
                   skip_done: bool = False, shard: Optional[Shard] = None, **kwargs) -> List[Path]:
    """Batch mode: segment every case of a folder with one model load; returns the written files.

    Each finished case gets a run record (`run_record.py`); `skip_done` skips the cases whose record
    still holds. `shard` (torchrun's rank and world size): this process takes the cases at
    positions rank, rank + world_size, ... of the case names in sorted order."""
    output_dir = Path(output_dir)
    shard = shard or Shard()
    if not output_dir.is_dir():
        raise InputError(f"output folder {output_dir} does not exist")
    if shard.world_size > 1 and same_path(input_dir, output_dir):
        raise InputError(f"output folder {output_dir} is the input folder: with {shard.world_size} ranks, a rank "
                         "listing the cases would find another rank's results; give another output folder")
    image_io.check_output_writable(output_dir / f"probe{output_suffix}")
    options = options or SegmentOptions(**kwargs)
    if options.uncertainty is not None:
        if not Path(options.uncertainty).is_dir():
            raise InputError(f"--uncertainty {options.uncertainty}: in batch mode give an existing folder; each case's "
                             f"map is written there as CASE{UNCERTAINTY_CASE_SUFFIX}")
        image_io.check_output_writable(Path(options.uncertainty) / f"probe{UNCERTAINTY_CASE_SUFFIX}")
    if options.statistics is not None:
        if shard.world_size > 1:
            # Ranks share no process group to gather rows into one file; each case's rows are kept
            # in its run record instead, so one process can write the whole table afterwards.
            raise InputError(f"--statistics with {shard.world_size} ranks: each rank has only its share of the "
                             "cases; run without --statistics, then once without torchrun with --skip-done "
                             "--statistics FILE (the recorded cases are not segmented again)")
        image_io.check_output_writable(options.statistics)
    listed = find_cases(input_dir, None)
    _refuse_batch(listed, input_dir, output_dir, output_suffix, options)  # before the model loads
    records = run_record.RunRecords(output_dir)
    records.check(sorted(listed)[shard.rank::shard.world_size])
    bundle = resolve_bundle(model, options.progress)
    cases = find_cases(input_dir, bundle.in_channels)
    _refuse_batch(cases, input_dir, output_dir, output_suffix, options)
    mine = sorted(cases)[shard.rank::shard.world_size]
    step, mirror = inference_settings(bundle, options)
    identity = run_record.RunIdentity.create(bundle, {
        "step": step, "mirror_axes": mirror, "fast": options.fast, "structures": options.structures,
        "largest_component": options.largest_component, "format": output_suffix,
        "uncertainty": options.uncertainty is not None})
    if shard.world_size > 1:
        log.info("%d of %d case(s) for rank %d of %d", len(mine), len(cases), shard.rank, shard.world_size)
    want_rows = options.statistics is not None
    segmenter, written, rows, skipped = None, [], [], 0
    for i, case in enumerate(mine):
        output = output_dir / f"{case}{output_suffix}"
        unc = None if options.uncertainty is None else Path(options.uncertainty) / f"{case}{UNCERTAINTY_CASE_SUFFIX}"
        results = export.result_files(output) + ([unc] if unc is not None else [])
        inputs = run_record.input_identity(cases[case])
        if skip_done:
            why = records.redo_reason(case, inputs, identity, results, want_rows)
            if why is None:
                log.info("case %d/%d: %s done (run record %s), skipped", i + 1, len(mine), case, records.path(case))
                rows += records.statistics(case) if want_rows else []
                skipped += 1
                continue
            log.info("case %d/%d: %s (%s)", i + 1, len(mine), case, why)
        else:
            log.info("case %d/%d: %s", i + 1, len(mine), case)
        segmenter = segmenter or Segmenter(bundle, options)
        path, case_rows = segmenter.write_case(cases[case], output, unc, case, want_rows)
        records.write(case, inputs, identity, results, shard.rank, shard.world_size, case_rows if want_rows else None)
        written.append(path)
        rows += case_rows
    if skip_done:
        log.info("%d case(s) skipped as done", skipped)
    if want_rows:
        statistics.write_statistics(rows, options.statistics)
    return written
