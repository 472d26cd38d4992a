"""`BundleSpec`: the typed `model.json`, used by every producer and every reader.

`BundleSpec.to_json()` and `BundleSpec.from_json()` are the only way in or out of the JSON form;
`from_json` (and `validated`) check it against `schemas/model.schema.json` plus the cross-field
rules below, so every error names the file and the field. A new field goes here, in the schema
and in docs/bundle.md; the round-trip tests of every producer then cover it.
Array-ordered values (spacing, patch size, mirror axes) are (z, y, x).
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from mednextv2.errors import InputError
from mednextv2.schema import control_characters, load_schema, model_id_problem, non_finite_paths, schema_errors

MODEL_JSON = "model.json"
FORMAT_VERSION = 1
GRN_NORMS = ("mean", "sum")
# The order of the array axes the network sees under each `preprocessing.orientation`; spacing,
# patch size and mirror axes are given in it.
AXIS_ORDER = {"LPS": "zyx", "as-is": "zyx", "RAS": "xyz"}
ORIENTATIONS = tuple(AXIS_ORDER)


def _tuple(values: Optional[Sequence], kind=None) -> Optional[tuple]:
    if values is None:
        return None
    return tuple(kind(v) for v in values) if kind else tuple(values)


def _set(obj: Any, **values: Any) -> None:
    """Normalise fields of a frozen dataclass in __post_init__ (lists in, tuples stored)."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def _drop_none(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


# ---------------------------------------------------------------- sections
@dataclass(frozen=True)
class NetworkSpec:
    """`MedNeXtConfig` as stored in the bundle. `grn_norm`: the GRN divides each channel's norm
    by the channel "mean" (the official MedNeXt code; default) or their "sum" (the paper's formula)."""

    in_channels: int
    n_channels: int
    n_classes: int
    exp_r: Union[int, Tuple[int, ...]]
    kernel_size: int
    block_counts: Tuple[int, ...]
    grn: bool = True
    deep_supervision: bool = False
    grn_norm: str = "mean"
    down_exp_r: Optional[Tuple[int, ...]] = None  # None: the official rule (the next stage's ratio)
    residual: bool = True  # False: no residual connections (MONAI's MedNeXt default)

    def __post_init__(self) -> None:
        _set(self, exp_r=self.exp_r if isinstance(self.exp_r, int) else _tuple(self.exp_r, int),
             block_counts=(self.block_counts,) if isinstance(self.block_counts, int) else _tuple(self.block_counts, int),
             down_exp_r=_tuple(self.down_exp_r, int))

    @classmethod
    def from_config(cls, config: Any) -> "NetworkSpec":
        return cls.from_json(config.to_dict())

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "NetworkSpec":
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def to_json(self) -> Dict[str, Any]:
        out = dataclasses.asdict(self)
        out["exp_r"] = self.exp_r if isinstance(self.exp_r, int) else list(self.exp_r)
        out["block_counts"] = list(self.block_counts)
        if self.down_exp_r is None:
            del out["down_exp_r"]
        else:
            out["down_exp_r"] = list(self.down_exp_r)
        if self.residual:
            del out["residual"]
        return out

    def config(self, **changes: Any) -> Any:
        """The `MedNeXtConfig` (ValueError if the network code cannot build it)."""
        from mednextv2.network import MedNeXtConfig

        values = dict(self.to_json(), **changes)
        if "grn_norm" not in {f.name for f in dataclasses.fields(MedNeXtConfig)}:
            # A network without the option computes the official "mean" GRN only.
            if values.pop("grn_norm") != "mean":
                raise ValueError(f"grn_norm {self.grn_norm!r} is not supported by this version of the network")
        return MedNeXtConfig.from_dict(values)


# Colours of labels that bring none (an nnU-Net dataset, a new training label): Slicer's
# GenericAnatomyColors start, so a model's first structures look as they do in Slicer's own tables.
PALETTE = ((128, 174, 128), (241, 214, 145), (177, 122, 101), (111, 184, 210), (216, 101, 79),
           (221, 130, 101), (144, 238, 144), (192, 104, 88), (220, 245, 20), (78, 63, 0),
           (255, 250, 220), (230, 220, 70), (200, 200, 235), (250, 250, 210), (244, 214, 49))


def default_color(value: int) -> Tuple[int, int, int]:
    """The colour of label value `value` (1, 2, ...) when it has none of its own."""
    return PALETTE[(value - 1) % len(PALETTE)]


@dataclass(frozen=True)
class Label:
    value: int  # head channel 1..n_classes-1
    name: str
    color: Tuple[int, int, int]
    terminology: Optional[Mapping[str, Any]] = None  # DICOM codes, see docs/bundle.md

    def __post_init__(self) -> None:
        _set(self, color=_tuple(self.color, int),
             terminology={k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in self.terminology.items()}
             if self.terminology else None)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Label":
        return cls(int(d["value"]), d["name"], d["color"], d.get("terminology"))

    def to_json(self) -> Dict[str, Any]:
        out = {"value": self.value, "name": self.name, "color": list(self.color)}
        if self.terminology:
            out["terminology"] = dict(self.terminology)
        return out


@dataclass(frozen=True)
class Channel:
    name: str
    modality: str  # "CT" | "MR"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Channel":
        return cls(d["name"], d["modality"])

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "modality": self.modality}


@dataclass(frozen=True)
class Normalization:
    """One channel's intensity normalization (preprocessing.normalize_channel applies it).

    "volume_znorm" is Yucca's `volume_wise_znorm` (AMAES): the voxels above the image's minimum are
    its foreground; values above their `upper_quantile` are clipped, the whole image is z-scored
    with the foreground's mean and std, then stretched linearly onto `rescale` (low, high)."""

    scheme: str  # "ct" | "zscore" | "volume_znorm" | "none"
    clip: Optional[Tuple[float, float]] = None  # ct: training foreground's 0.5/99.5 percentiles
    mean: Optional[float] = None  # ct only: the training foreground's statistics
    std: Optional[float] = None
    upper_quantile: Optional[float] = None  # volume_znorm: clip above this quantile of the foreground
    rescale: Optional[Tuple[float, float]] = None  # volume_znorm: the output range, min -> low, max -> high

    def __post_init__(self) -> None:
        _set(self, clip=_tuple(self.clip, float),
             mean=None if self.mean is None else float(self.mean), std=None if self.std is None else float(self.std),
             upper_quantile=None if self.upper_quantile is None else float(self.upper_quantile),
             rescale=_tuple(self.rescale, float))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Normalization":
        return cls(d["scheme"], d.get("clip"), d.get("mean"), d.get("std"), d.get("upper_quantile"), d.get("rescale"))

    def to_json(self) -> Dict[str, Any]:
        return _drop_none({"scheme": self.scheme, "clip": None if self.clip is None else list(self.clip),
                           "mean": self.mean, "std": self.std, "upper_quantile": self.upper_quantile,
                           "rescale": None if self.rescale is None else list(self.rescale)})


@dataclass(frozen=True)
class ResampleOrder:
    """nnU-Net's resampling kwargs: spline `order` in-plane, `order_z` across the slices of an
    anisotropic image, `force_separate_z` (None: decide by anisotropy, as nnU-Net does)."""

    order: int = 1
    order_z: int = 0
    force_separate_z: Optional[bool] = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "ResampleOrder":
        return cls(int(d.get("order", 1)), int(d.get("order_z", 0)), d.get("force_separate_z"))

    def to_json(self) -> Dict[str, Any]:
        return {"order": self.order, "order_z": self.order_z, "force_separate_z": self.force_separate_z}


@dataclass(frozen=True)
class Resampling:
    """How images go to the network grid (`data`) and class probabilities come back (`probabilities`).
    Absent from a bundle = linear everywhere (mednextv2's own bundles); nnU-Net imports carry the plan's.
    `normalize_first` False: resample the raw image, then normalize (nnU-Net v1's order; v2 and
    mednextv2 normalize first). The CT clip does not commute with a cubic spline's overshoot.
    `softmax_first` True: the class scores go back to the input grid as softmax probabilities
    (nnU-Net v1's export), not as logits (nnU-Net v2 and mednextv2)."""

    data: ResampleOrder
    probabilities: ResampleOrder
    normalize_first: bool = True
    softmax_first: bool = False

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Resampling":
        return cls(ResampleOrder.from_json(d["data"]), ResampleOrder.from_json(d["probabilities"]),
                   bool(d.get("normalize_first", True)), bool(d.get("softmax_first", False)))

    def to_json(self) -> Dict[str, Any]:
        out = {"data": self.data.to_json(), "probabilities": self.probabilities.to_json()}
        if not self.normalize_first:
            out["normalize_first"] = False
        if self.softmax_first:
            out["softmax_first"] = True
        return out


@dataclass(frozen=True)
class PreprocessingPlan:
    target_spacing: Optional[Tuple[float, float, float]]  # (z, y, x) mm; None = keep the input spacing
    normalization: Tuple[Normalization, ...]
    crop_to_nonzero: bool = False
    # "LPS": permute/flip the array axes to the nearest LPS order, array (z, y, x) along (S, P, L);
    # "RAS": to nearest RAS with the axes reversed, array (x, y, z) along (R, A, S), as nibabel's
    # canonical array (Yucca, AMAES); "as-is": the file's voxel order. See ORIENTATIONS.
    orientation: str = "LPS"
    resampling: Optional[Resampling] = None  # None: linear everywhere
    # z-score over the non-zero voxels only; None: when cropping (mednextv2's bundles). nnU-Net
    # crops every image but takes the mask only where its plan's use_mask_for_norm says so.
    use_mask_for_norm: Optional[bool] = None

    def __post_init__(self) -> None:
        _set(self, target_spacing=_tuple(self.target_spacing, float), normalization=tuple(self.normalization),
             crop_to_nonzero=bool(self.crop_to_nonzero))

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "PreprocessingPlan":
        resampling = d.get("resampling")
        return cls(d.get("target_spacing"), tuple(Normalization.from_json(n) for n in d["normalization"]),
                   bool(d.get("crop_to_nonzero", False)), d.get("orientation", "LPS"),
                   Resampling.from_json(resampling) if resampling is not None else None,
                   None if d.get("use_mask_for_norm") is None else bool(d["use_mask_for_norm"]))

    def to_json(self) -> Dict[str, Any]:
        out = {"axis_order": AXIS_ORDER[self.orientation], "orientation": self.orientation,
               "target_spacing": None if self.target_spacing is None else list(self.target_spacing),
               "crop_to_nonzero": self.crop_to_nonzero, "normalization": [n.to_json() for n in self.normalization]}
        if self.resampling is not None:
            out["resampling"] = self.resampling.to_json()
        if self.use_mask_for_norm is not None:
            out["use_mask_for_norm"] = self.use_mask_for_norm
        return out


@dataclass(frozen=True)
class InferenceDefaults:
    patch_size: Tuple[int, int, int]
    step: float = 0.5
    mirror_axes: Tuple[int, ...] = (0, 1, 2)
    fast_spacing: Optional[Tuple[float, float, float]] = None
    # The sliding window's Gaussian weights: "mednextv2" (ours) or "nnunet" (nnU-Net's own map, which
    # nnU-Net imports record so that they stitch tiles as nnU-Net does). Absent from JSON = ours.
    importance_map: str = "mednextv2"
    # One axes list per `weights` entry, when the folds mirror differently (nnU-Net folds trained
    # with different allowed axes); `mirror_axes` is then their union. None: every fold uses `mirror_axes`.
    fold_mirror_axes: Optional[Tuple[Tuple[int, ...], ...]] = None

    def __post_init__(self) -> None:
        _set(self, patch_size=_tuple(self.patch_size, int), step=float(self.step),
             mirror_axes=_tuple(self.mirror_axes, int), fast_spacing=_tuple(self.fast_spacing, float),
             fold_mirror_axes=None if self.fold_mirror_axes is None
             else tuple(_tuple(a, int) for a in self.fold_mirror_axes))

    def mirror_axes_per_fold(self, n_folds: int) -> Tuple[Tuple[int, ...], ...]:
        """Each fold's test-time mirror axes, in `weights` order."""
        return self.fold_mirror_axes if self.fold_mirror_axes is not None else (self.mirror_axes,) * n_folds

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "InferenceDefaults":
        return cls(d["patch_size"], d.get("step", 0.5), d.get("mirror_axes", (0, 1, 2)), d.get("fast_spacing"),
                   d.get("importance_map", "mednextv2"), d.get("fold_mirror_axes"))

    def to_json(self) -> Dict[str, Any]:
        out = {"patch_size": list(self.patch_size), "step": self.step, "mirror_axes": list(self.mirror_axes)}
        if self.fast_spacing is not None:
            out["fast_spacing"] = list(self.fast_spacing)
        if self.importance_map != "mednextv2":
            out["importance_map"] = self.importance_map
        if self.fold_mirror_axes is not None:
            out["fold_mirror_axes"] = [list(a) for a in self.fold_mirror_axes]
        return out


@dataclass(frozen=True)
class Provenance:
    """Where the model came from. Never an absolute path: bundles are shared (`strip_absolute_paths`)."""

    base_model: Optional[str] = None  # id of the model fine-tuned from
    training_data: Optional[str] = None  # a name, never a path
    metrics: Optional[Mapping[str, Any]] = None  # e.g. {"dice": {"tumor": 0.8}}
    date: Optional[str] = None
    training: Optional[Mapping[str, Any]] = None  # `mednextv2 train`'s settings and dataset digest
    imported_from: Optional[Mapping[str, Any]] = None  # `models import` of an nnU-Net folder
    extra: Mapping[str, Any] = field(default_factory=dict)  # other keys, kept as they are

    _KNOWN = ("base_model", "training_data", "metrics", "date", "training", "imported_from")

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Provenance":
        return cls(**{k: d.get(k) for k in cls._KNOWN}, extra={k: v for k, v in d.items() if k not in cls._KNOWN})

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"base_model": self.base_model}
        out.update(_drop_none({k: getattr(self, k) for k in self._KNOWN[1:]}))
        out.update(self.extra)
        return out


# ---------------------------------------------------------------- the bundle spec
@dataclass(frozen=True)
class BundleSpec:
    id: str
    title: str
    network: NetworkSpec
    labels: Tuple[Label, ...]  # head channels 1..n_classes-1
    channels: Tuple[Channel, ...]  # network input order
    preprocessing: PreprocessingPlan
    inference: InferenceDefaults
    weights: Tuple[str, ...] = ()  # one file per fold; () lets Bundle.create name them
    description: Optional[str] = None
    license: Optional[str] = None
    provenance: Optional[Provenance] = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _set(self, labels=tuple(self.labels), channels=tuple(self.channels), weights=tuple(self.weights))

    @classmethod
    def from_json(cls, doc: Any, where: str = MODEL_JSON) -> "BundleSpec":
        """The spec of a parsed model.json; InputError listing every problem, each with its field."""
        validate_model_json(doc, where)
        provenance = doc.get("provenance")
        return cls(id=doc["id"], title=doc["title"], network=NetworkSpec.from_json(doc["network"]),
                   labels=tuple(Label.from_json(d) for d in sorted(doc["labels"], key=lambda d: d["value"])),
                   channels=tuple(Channel.from_json(d) for d in doc["channels"]),
                   preprocessing=PreprocessingPlan.from_json(doc["preprocessing"]),
                   inference=InferenceDefaults.from_json(doc["inference"]), weights=tuple(doc["weights"]),
                   description=doc.get("description"), license=doc.get("license"),
                   provenance=Provenance.from_json(provenance) if provenance is not None else None,
                   format_version=doc["format_version"])

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"format_version": self.format_version, "id": self.id, "title": self.title}
        out.update(_drop_none({"description": self.description, "license": self.license}))
        out.update({"network": self.network.to_json(), "weights": list(self.weights),
                    "labels": [lab.to_json() for lab in self.labels], "channels": [c.to_json() for c in self.channels],
                    "preprocessing": self.preprocessing.to_json(), "inference": self.inference.to_json()})
        if self.provenance is not None:
            out["provenance"] = self.provenance.to_json()
        return out

    def validated(self, where: str = "new bundle") -> "BundleSpec":
        validate_model_json(self.to_json(), where)
        return self

    def replace(self, **changes: Any) -> "BundleSpec":
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------- validation
def validate_model_json(doc: Any, where: str = MODEL_JSON) -> None:
    """Raise InputError listing every problem of a model.json document, each with its field."""
    if not isinstance(doc, dict):
        raise InputError(f"{where}: expected a JSON object at the top level")
    errors = [f"{p}: must be a finite number" for p in non_finite_paths(doc)]
    errors = errors or schema_errors(doc, load_schema("model.schema.json"))
    errors = errors or _semantic_errors(doc)
    if errors:
        raise InputError(f"invalid model bundle {where}:\n  " + "\n  ".join(errors))


def _semantic_errors(spec: Mapping[str, Any]) -> List[str]:
    """Rules that JSON Schema cannot say: counts and values that must agree across fields."""
    errors = []
    problem = model_id_problem(spec["id"])
    if problem:
        errors.append(f"id: {problem}")
    net = spec["network"]
    n_classes, in_channels = net["n_classes"], net["in_channels"]
    values = [lab["value"] for lab in spec["labels"]]
    if sorted(values) != list(range(1, n_classes)):
        errors.append(f"labels: values must be 1..{n_classes - 1} (one per network.n_classes head channel "
                      f"except background 0), got {sorted(values)}")
    names = [lab["name"] for lab in spec["labels"]]
    if len(set(names)) != len(names):
        errors.append(f"labels: names must be unique, got {names}")
    errors += _control_character_errors(spec)
    if len(spec["channels"]) != in_channels:
        errors.append(f"channels: network.in_channels is {in_channels} but {len(spec['channels'])} channel(s) are listed")
    norms = spec["preprocessing"]["normalization"]
    if len(norms) != in_channels:
        errors.append(f"preprocessing.normalization: needs one entry per input channel ({in_channels}), got {len(norms)}")
    for i, norm in enumerate(norms):
        if norm["scheme"] == "ct" and not {"clip", "mean", "std"} <= set(norm):
            errors.append(f"preprocessing.normalization[{i}]: scheme 'ct' needs clip, mean and std")
        for key in ("clip", "rescale"):
            if key in norm and norm[key][0] >= norm[key][1]:
                errors.append(f"preprocessing.normalization[{i}].{key}: low must be below high, got {norm[key]}")
        extra = sorted({"upper_quantile", "rescale"} & set(norm))
        if extra and norm["scheme"] != "volume_znorm":
            errors.append(f"preprocessing.normalization[{i}]: {', '.join(extra)} only apply to scheme 'volume_znorm'")
    pre = spec["preprocessing"]
    order = AXIS_ORDER.get(pre.get("orientation", "LPS"))
    if "axis_order" in pre and order and pre["axis_order"] != order:
        errors.append(f"preprocessing.axis_order: orientation {pre.get('orientation', 'LPS')!r} gives the array "
                      f"axes in {order!r} order, got {pre['axis_order']!r}")
    patch = spec["inference"]["patch_size"]
    if any(p % 16 for p in patch):
        errors.append(f"inference.patch_size: each size must be divisible by 16 (4 downsamplings), got {patch}")
    if len(set(spec["weights"])) != len(spec["weights"]):
        errors.append("weights: file names must be unique")
    errors += _fold_mirror_errors(spec["inference"], len(spec["weights"]))
    return errors


def _control_character_errors(spec: Mapping[str, Any]) -> List[str]:
    """Label and channel texts go into file headers (.seg.nrrd) and onto screens: one line of
    printable text each, so a name can never forge a header field or a terminal's output."""
    texts = [(f"labels[{i}].name", lab["name"]) for i, lab in enumerate(spec["labels"])]
    texts += [(f"labels[{i}].terminology.{key}", value)
              for i, lab in enumerate(spec["labels"]) for key, value in _strings(lab.get("terminology") or {})]
    texts += [(f"channels[{i}].name", ch["name"]) for i, ch in enumerate(spec["channels"])]
    texts += [(key, spec[key]) for key in ("id", "title") if isinstance(spec.get(key), str)]
    return [f"{where}: must be one line of printable text, got {value!r} (holds {', '.join(found[:3])})"
            for where, value in texts if isinstance(value, str) for found in [control_characters(value)] if found]


def _strings(value: Any, path: str = ""):
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(v, f"{path}.{k}" if path else str(k))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _strings(v, f"{path}[{i}]")


def _fold_mirror_errors(inference: Mapping[str, Any], n_weights: int) -> List[str]:
    per_fold = inference.get("fold_mirror_axes")
    if per_fold is None:
        return []
    errors = []
    if len(per_fold) != n_weights:
        errors.append(f"inference.fold_mirror_axes: needs one axes list per weights file ({n_weights}), got {len(per_fold)}")
    errors += [f"inference.fold_mirror_axes[{i}]: axes must not repeat, got {axes}"
               for i, axes in enumerate(per_fold) if len(set(axes)) != len(axes)]
    union = sorted(set(a for axes in per_fold for a in axes))
    if sorted(set(inference.get("mirror_axes", (0, 1, 2)))) != union:
        errors.append(f"inference.mirror_axes: must be the union of fold_mirror_axes {union}, "
                      f"got {inference.get('mirror_axes', [0, 1, 2])}")
    return errors


# ---------------------------------------------------------------- sharing
# POSIX (/x/y, not inside a URL or a ratio like 0.5/0.8), Windows (C:\\x) and UNC (\\\\host\\x)
# paths; they end at whitespace, quotes, ',', ';' or ')'.
_END = r"\s\"'`,;)"
_ABSOLUTE = re.compile(rf"(?<![\w.~:/-])/(?:[^{_END}/]+/)*[^{_END}/]+|\b[A-Za-z]:[\\/][^{_END}]*|\\\\[^{_END}]+")
REDACTED = "<path removed>"


def _strip(value: Any) -> Any:
    if isinstance(value, str):
        return _ABSOLUTE.sub(REDACTED, value)
    if isinstance(value, Mapping):
        return {k: _strip(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_strip(v) for v in value)
    return value


def strip_absolute_paths(spec: BundleSpec) -> BundleSpec:
    """The spec with every absolute path in `description` and `provenance` replaced by
    "<path removed>": a path can carry a patient's or a project's name, and bundles are shared.
    `models import` applies it to every bundle it installs."""
    provenance = spec.provenance
    if provenance is not None:
        provenance = Provenance.from_json(_strip(provenance.to_json()))
    description = None if spec.description is None else _strip(spec.description)
    return spec.replace(description=description, provenance=provenance)
