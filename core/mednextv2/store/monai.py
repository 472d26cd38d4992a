"""`models import FILE --from monai --config CONFIG.json`: a MONAI MedNeXt becomes a bundle.

FILE is a state dict of `monai.networks.nets.MedNeXt` (`.pt`/`.pth` read only with
`torch.load(weights_only=True)`, or `.safetensors`), or a MONAI bundle (folder or zip) with
`configs/inference.json` (or `.yaml`) whose `network_def` builds a MedNeXt, and
`models/model.safetensors` or `models/model.pt`. The network comes from the weights
(`monai_network.py`); everything the weights cannot say (labels, channels, how images were
oriented, resampled and normalised, the sliding window) comes from the config, checked here in
one place (`MonaiImportConfig.read`).
"""
from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from mednextv2 import MODELS_DOC_URL
from mednextv2.atomic import sha256_file
from mednextv2.bundle import Bundle
from mednextv2.bundle_spec import (BundleSpec, Channel, InferenceDefaults, Label, NetworkSpec, Normalization,
                                   PreprocessingPlan, Provenance, default_color, strip_absolute_paths)
from mednextv2.errors import InputError
from mednextv2.schema import load_schema, loads_strict

STATE_DICT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
AXIS_ORDERS = {"xyz": (2, 1, 0), "zyx": (0, 1, 2)}  # MONAI array axis i is our (z, y, x) axis AXIS_ORDERS[o][i]
CONFIG_KEYS = ("network", "labels", "channels", "axis_order", "orientation", "pixdim", "normalization",
               "roi_size", "overlap", "mirror_axes", "id", "title", "description", "license")
REQUIRED_KEYS = ("orientation", "pixdim", "normalization")
MODALITIES = ("CT", "MR")
MAX_CONFIG_BYTES = 1 << 20


def orientations() -> List[str]:
    """The orientations a MONAI import can express: the plan's (the schema's list) but "RAS", whose
    (x, y, z) array the axis folding below (written for LPS's (z, y, x) array) would transpose twice;
    it stays refused until that folding is written and tested for it."""
    schema = load_schema("model.schema.json")
    return [o for o in schema["properties"]["preprocessing"]["properties"]["orientation"]["enum"] if o != "RAS"]


@dataclass(frozen=True)
class MonaiImportConfig:
    """What `--config` says about a MONAI MedNeXt, in our terms: arrays (z, y, x), one
    `Normalization` per channel. `network` holds the MONAI constructor arguments it gives,
    which must agree with the weights (those it leaves out are read off them)."""

    network: Mapping[str, Any]
    labels: Optional[Tuple[Label, ...]]  # None: from the MONAI bundle's metadata.json
    channels: Optional[Tuple[Channel, ...]]  # None: from metadata.json, else CT
    axes: Tuple[int, int, int]  # MONAI array axis i -> our axis axes[i]
    orientation: str
    target_spacing: Optional[Tuple[float, float, float]]
    normalization: Tuple[Normalization, ...]
    use_mask_for_norm: Optional[bool]
    patch_size: Tuple[int, int, int]
    step: float
    mirror_axes: Tuple[int, ...]
    id: Optional[str] = None
    title: Optional[str] = None
    description: Optional[str] = None
    license: Optional[str] = None

    @classmethod
    def read(cls, path: Path) -> "MonaiImportConfig":
        path = Path(path)
        try:
            if path.stat().st_size > MAX_CONFIG_BYTES:
                raise InputError(f"--config {path}: larger than {MAX_CONFIG_BYTES} bytes; expected a small JSON file")
            doc = loads_strict(path.read_bytes(), str(path))
        except OSError as e:
            raise InputError(f"--config {path}: cannot read it ({e.strerror or e})") from e
        return cls.from_json(doc, f"--config {path}")

    @classmethod
    def from_json(cls, doc: Any, where: str) -> "MonaiImportConfig":
        if not isinstance(doc, dict):
            raise InputError(f"{where}: expected a JSON object with keys {', '.join(CONFIG_KEYS)}")
        unknown = sorted(set(doc) - set(CONFIG_KEYS))
        if unknown:
            raise InputError(f"{where}: unknown key(s) {unknown}; expected some of {list(CONFIG_KEYS)}")
        missing = [k for k in REQUIRED_KEYS if k not in doc]
        if missing:
            raise InputError(f"{where}: missing {missing}: how the MONAI pipeline oriented ('orientation'), resampled "
                             "('pixdim', MONAI's Spacingd, or null) and normalised ('normalization', one per channel) "
                             "the images cannot be read off the weights")
        axis_order = doc.get("axis_order", "xyz")
        if axis_order not in AXIS_ORDERS:
            raise InputError(f"{where}: axis_order must be 'xyz' (MONAI's LoadImage, the default) or 'zyx', got {axis_order!r}")
        axes = AXIS_ORDERS[axis_order]
        allowed = orientations()
        if doc["orientation"] not in allowed:
            raise InputError(f"{where}: orientation {doc['orientation']!r} cannot be reproduced; a bundle orients "
                             f"images {' or '.join(repr(o) for o in allowed)} ('LPS' is MONAI's Orientationd(axcodes="
                             "'LPS'), 'as-is' is no Orientationd). A network trained on other axis codes (e.g. "
                             "'RAS') sees mirrored anatomy here")
        network = _network_args(doc.get("network", {}), where)
        channels = _channels(doc["channels"], where) if "channels" in doc else None
        normalization, use_mask = _normalizations(doc["normalization"], where)
        if channels is not None and len(normalization) != len(channels):
            raise InputError(f"{where}: {len(normalization)} normalization entr(ies) for {len(channels)} channel(s)")
        pixdim = doc["pixdim"]
        if pixdim is not None:
            pixdim = _numbers(pixdim, where, "pixdim", positive=True)
        roi = _numbers(doc.get("roi_size", [96, 96, 96]), where, "roi_size", integer=True)
        bad = [r for r in roi if r % 16]
        if bad:
            raise InputError(f"{where}: roi_size {list(roi)}: each size must be divisible by 16 (four down-samplings)")
        overlap = doc.get("overlap", 0.5)
        if isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap <= 0.9:
            raise InputError(f"{where}: overlap must be a number in [0, 0.9] (MONAI's sliding window overlap), got {overlap!r}")
        mirror = doc.get("mirror_axes", [])
        if not isinstance(mirror, list) or any(a not in (0, 1, 2) or isinstance(a, bool) for a in mirror) \
                or len(set(mirror)) != len(mirror):
            raise InputError(f"{where}: mirror_axes must be a list of distinct axes 0..2 (in axis_order), got {mirror!r}")
        texts = {}
        for key in ("id", "title", "description", "license"):
            if key in doc and not isinstance(doc[key], str):
                raise InputError(f"{where}: {key} must be a string, got {doc[key]!r}")
            texts[key] = doc.get(key)
        return cls(network=network, labels=_labels(doc["labels"], where) if "labels" in doc else None,
                   channels=channels, axes=axes, orientation=doc["orientation"],
                   target_spacing=None if pixdim is None else _to_ours(pixdim, axes, float),
                   normalization=normalization, use_mask_for_norm=use_mask,
                   patch_size=_to_ours(roi, axes, int), step=round(1.0 - float(overlap), 6),
                   mirror_axes=tuple(sorted(axes[a] for a in mirror)), **texts)


def _to_ours(values, axes, kind) -> tuple:
    out = [None, None, None]
    for i, a in enumerate(axes):
        out[a] = kind(values[i])
    return tuple(out)


def _numbers(value: Any, where: str, key: str, positive: bool = False, integer: bool = False) -> tuple:
    ok = isinstance(value, list) and len(value) == 3 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and (not integer or isinstance(v, int))
        and (not positive or v > 0) and v >= 0 for v in value)
    if not ok or (integer and min(value) < 16):
        kind = "positive integers (each at least 16)" if integer else "positive numbers"
        raise InputError(f"{where}: {key} must be 3 {kind} in axis_order, got {value!r}")
    return tuple(value)


def _network_args(raw: Any, where: str) -> Dict[str, Any]:
    from mednextv2.store.monai_network import MonaiNetworkArgs

    if not isinstance(raw, dict):
        raise InputError(f"{where}: network must be an object of MONAI MedNeXt constructor arguments")
    raw = dict(raw)
    if "grn" in raw:  # the later MONAI name of global_resp_norm
        if "global_resp_norm" in raw and raw["global_resp_norm"] != raw["grn"]:
            raise InputError(f"{where}: network.grn and network.global_resp_norm disagree")
        raw["global_resp_norm"] = raw.pop("grn")
    known = MonaiNetworkArgs.names()
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise InputError(f"{where}: unknown MONAI MedNeXt argument(s) {unknown} in network; expected some of "
                         f"{list(known) + ['grn']}")
    for name, value in raw.items():
        if name in ("deep_supervision", "use_residual_connection", "global_resp_norm"):
            good = isinstance(value, bool)
        elif name == "norm_type":
            good = isinstance(value, str)
        elif name in ("encoder_expansion_ratio", "decoder_expansion_ratio"):
            good = _is_int(value) or (isinstance(value, list) and all(_is_int(v) for v in value))
        elif name in ("blocks_down", "blocks_up"):
            good = isinstance(value, list) and all(_is_int(v) for v in value)
        else:
            good = _is_int(value)
        if not good:
            raise InputError(f"{where}: network.{name} has the wrong type: {value!r}")
    return raw


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _labels(raw: Any, where: str) -> Tuple[Label, ...]:
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{where}: labels must be a list of the foreground label names in output-channel order "
                         "(channel 0, background, left out), e.g. [\"spleen\"], or objects {\"name\", \"color\"}")
    labels = []
    for i, item in enumerate(raw, start=1):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"].strip() \
                or set(item) - {"name", "color", "terminology"}:
            raise InputError(f"{where}: labels[{i - 1}] must be a name or an object with name (and color, "
                             f"terminology), got {item!r}")
        color = item.get("color", list(default_color(i)))
        if not (isinstance(color, list) and len(color) == 3 and all(_is_byte(c) for c in color)):
            raise InputError(f"{where}: labels[{i - 1}].color must be [r, g, b] with 0..255, got {color!r}")
        labels.append(Label(i, item["name"], color, item.get("terminology")))
    return tuple(labels)


def _is_byte(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255


def _channels(raw: Any, where: str) -> Tuple[Channel, ...]:
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{where}: channels must be a list, one per input channel: \"CT\", \"MR\" or "
                         "{\"name\": ..., \"modality\": \"CT\"|\"MR\"}")
    out = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            item = {"name": item, "modality": item}
        if not isinstance(item, dict) or set(item) != {"name", "modality"} or item["modality"] not in MODALITIES \
                or not isinstance(item["name"], str):
            raise InputError(f"{where}: channels[{i}] must be \"CT\", \"MR\" or {{\"name\": ..., \"modality\": "
                             f"\"CT\"|\"MR\"}}, got {item!r}")
        out.append(Channel(item["name"], item["modality"]))
    return tuple(out)


def _normalizations(raw: Any, where: str) -> Tuple[Tuple[Normalization, ...], Optional[bool]]:
    """Our schemes, or MONAI's ScaleIntensityRanged / NormalizeIntensityd written as they are.

    ScaleIntensityRange with clip maps [a_min, a_max] linearly onto [b_min, b_max] and clips:
    that is our "ct" scheme, clip [a_min, a_max], mean a_min - b_min * s, std s = (a_max - a_min) / (b_max - b_min)."""
    if not isinstance(raw, list) or not raw:
        raise InputError(f"{where}: normalization must be a list, one entry per input channel")
    out, masks = [], set()
    for i, item in enumerate(raw):
        at = f"{where}: normalization[{i}]"
        if not isinstance(item, dict) or len(item) != 1 and "scheme" not in item:
            raise InputError(f"{at} must be {{\"scale_intensity_range\": {{...}}}}, {{\"normalize_intensity\": "
                             f"{{\"nonzero\": bool}}}} or one of our schemes {{\"scheme\": \"ct\"|\"zscore\"|\"none\", ...}}, got {item!r}")
        if "scale_intensity_range" in item:
            args = item["scale_intensity_range"]
            keys = {"a_min", "a_max", "b_min", "b_max", "clip"}
            if not isinstance(args, dict) or set(args) - keys or not {"a_min", "a_max", "b_min", "b_max"} <= set(args):
                raise InputError(f"{at}.scale_intensity_range needs a_min, a_max, b_min, b_max (and clip), got {args!r}")
            if args.get("clip") is not True:
                raise InputError(f"{at}.scale_intensity_range: only clip true can be reproduced (the bundle's 'ct' "
                                 "scheme clips); without clipping, values outside [a_min, a_max] would differ")
            a0, a1, b0, b1 = (args[k] for k in ("a_min", "a_max", "b_min", "b_max"))
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a0, a1, b0, b1)) \
                    or a1 <= a0 or b1 <= b0:
                raise InputError(f"{at}.scale_intensity_range needs numbers with a_min < a_max and b_min < b_max, got {args!r}")
            std = (a1 - a0) / (b1 - b0)
            out.append(Normalization("ct", (a0, a1), a0 - b0 * std, std))
        elif "normalize_intensity" in item:
            args = item["normalize_intensity"]
            if not isinstance(args, dict) or set(args) - {"nonzero", "channel_wise"} \
                    or not all(isinstance(v, bool) for v in args.values()):
                raise InputError(f"{at}.normalize_intensity takes only nonzero and channel_wise (true/false), got {args!r}")
            if len(raw) > 1 and not args.get("channel_wise", False):
                raise InputError(f"{at}.normalize_intensity: with several channels only channel_wise true can be "
                                 "reproduced (MONAI's default, false, takes one mean and std over all channels together)")
            masks.add(bool(args.get("nonzero", False)))
            out.append(Normalization("zscore"))
        else:
            try:
                out.append(Normalization.from_json(item))
            except (KeyError, TypeError, ValueError) as e:
                raise InputError(f"{at}: {item!r} is not a normalization entry ({e})") from e
    if len(masks) > 1:
        raise InputError(f"{where}: normalize_intensity nonzero must be the same for every channel")
    return tuple(out), (masks.pop() if masks else None)


# ---------------------------------------------------------------- MONAI bundles
def find_monai_bundle(folder: Path, max_depth: int = 2) -> Path:
    level = [folder]
    for _ in range(max_depth + 1):
        found = [p for p in level if (p / "configs").is_dir() and (p / "models").is_dir()]
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise InputError(f"{folder} holds several MONAI bundles: {[str(p) for p in found]}; import one")
        level = [c for p in level for c in sorted(p.iterdir()) if c.is_dir() and not c.name.startswith(".")]
    raise InputError(f"{folder} is not a MONAI bundle: expected configs/ (inference.json) and models/ "
                     "(model.safetensors or model.pt)")


def _read_structured(path: Path) -> Any:
    if path.suffix == ".json":
        return loads_strict(path.read_bytes(), str(path))
    try:
        import yaml
    except ImportError as e:
        raise InputError(f"{path}: reading a YAML bundle config needs PyYAML (pip install pyyaml); or convert it "
                         "to inference.json") from e
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"{path} is not valid YAML: {e}") from e


def bundle_network_def(root: Path) -> Tuple[Dict[str, Any], Path]:
    """The MedNeXt arguments of a MONAI bundle's `network_def`, literal values only."""
    names = ("inference.json", "inference.yaml", "inference.yml")
    path = next((root / "configs" / n for n in names if (root / "configs" / n).is_file()), None)
    if path is None:
        raise InputError(f"{root / 'configs'}: no inference.json (or .yaml) with the network_def")
    doc = _read_structured(path)
    net = doc.get("network_def") if isinstance(doc, dict) else None
    if not isinstance(net, dict) or not isinstance(net.get("_target_"), str):
        raise InputError(f"{path}: no network_def with a _target_")
    target = net["_target_"].rsplit(".", 1)[-1]
    if target not in ("MedNeXt", "MedNext"):
        raise InputError(f"{path}: network_def._target_ is {net['_target_']!r}; only monai.networks.nets.MedNeXt "
                         "can be imported")
    args = {k: v for k, v in net.items() if not k.startswith("_")}
    for key, value in args.items():
        if isinstance(value, str) and value[:1] in "@$%":
            raise InputError(f"{path}: network_def.{key} is the expression {value!r}; write its value in "
                             "--config's network section instead (only literal values are read)")
    return args, path


def bundle_weights(root: Path) -> Path:
    for name in ("model.safetensors", "model.pt", "model.pth"):
        if (root / "models" / name).is_file():
            return root / "models" / name
    raise InputError(f"{root / 'models'}: no model.safetensors or model.pt")


def bundle_metadata(root: Path) -> Tuple[Optional[Tuple[Label, ...]], Optional[Tuple[Channel, ...]], Dict[str, Any]]:
    """Labels and channels from metadata.json's network_data_format, where it has them."""
    path = root / "configs" / "metadata.json"
    if not path.is_file():
        return None, None, {}
    doc = loads_strict(path.read_bytes(), str(path))
    fmt = doc.get("network_data_format") if isinstance(doc, dict) else None
    labels = channels = None
    if isinstance(fmt, dict):
        pred = next(iter((fmt.get("outputs") or {}).values()), None)
        channel_def = pred.get("channel_def") if isinstance(pred, dict) else None
        if isinstance(channel_def, dict) and all(str(k).isdigit() for k in channel_def):
            names = [str(channel_def[k]) for k in sorted(channel_def, key=int) if int(k) > 0]
            labels = _labels(names, str(path)) if names else None
        image = next(iter((fmt.get("inputs") or {}).values()), None)
        if isinstance(image, dict) and image.get("modality") in MODALITIES and isinstance(image.get("num_channels"), int):
            channels = tuple(Channel(image["modality"], image["modality"]) for _ in range(image["num_channels"]))
    facts = {k: doc[k] for k in ("name", "version", "monai_version") if isinstance(doc, dict) and isinstance(doc.get(k), str)}
    return labels, channels, facts


# ---------------------------------------------------------------- the conversion
def read_state_dict(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{path} is not a readable safetensors file: {e}") from e
    if suffix in STATE_DICT_SUFFIXES:
        from mednextv2.store.checkpoints import load_checkpoint

        return load_checkpoint(path)
    raise InputError(f"{path}: expected a MONAI MedNeXt state dict ({', '.join(STATE_DICT_SUFFIXES)} or .safetensors) "
                     "or a MONAI bundle (folder or .zip)")


def convert_monai(source: Path, config_path: Optional[Path], model_id: Optional[str], unpack_dir: Path) -> Bundle:
    """An in-memory bundle from a MONAI MedNeXt state dict or MONAI bundle."""
    from mednextv2.safezip import safe_extract_zip
    from mednextv2.store.cache import check_model_id
    from mednextv2.store.monai_network import args_from_state_dict, check_agreement, monai_tensors, to_official
    from mednextv2.store.nnunet_v2 import permute_spatial

    if config_path is None:
        raise InputError(f"--from monai needs --config CONFIG.json: labels, channels, orientation, pixdim and "
                         f"normalization of {source.name} cannot be read off its weights (see {MODELS_DOC_URL})")
    config = MonaiImportConfig.read(Path(config_path).expanduser())
    network_given = dict(config.network)
    labels, channels, facts = config.labels, config.channels, {}
    if source.is_dir() or source.suffix.lower() == ".zip":
        if source.is_file():
            safe_extract_zip(source, unpack_dir)
            root = find_monai_bundle(unpack_dir)
        else:
            root = find_monai_bundle(source)
        bundle_args, def_path = bundle_network_def(root)
        for key, value in _network_args(bundle_args, str(def_path)).items():
            if key in network_given and network_given[key] != value:
                raise InputError(f"{def_path}: network_def.{key} is {value!r} but --config says {network_given[key]!r}")
            network_given[key] = value
        weights = bundle_weights(root)
        meta_labels, meta_channels, facts = bundle_metadata(root)
        labels, channels = labels or meta_labels, channels or meta_channels
        name = facts.get("name") or root.name
    else:
        weights = source
        name = source.stem
    where = str(weights)
    sd = monai_tensors(read_state_dict(weights), where)
    args = args_from_state_dict(sd, where)
    check_agreement(network_given, args, where)
    net_config, state = to_official(sd, args, where, deep_supervision=False)
    if labels is None:
        raise InputError(f"{config_path}: labels missing: name the {args.out_channels - 1} foreground output "
                         "channel(s) in order, e.g. \"labels\": [\"spleen\"]")
    if channels is None:
        channels = tuple(Channel("CT", "CT") for _ in range(args.in_channels)) if args.in_channels == 1 else None
        if channels is None:
            raise InputError(f"{config_path}: channels missing: the network takes {args.in_channels} input channels; "
                             "list them, e.g. \"channels\": [\"MR\", \"MR\"]")
    if len(labels) != args.out_channels - 1:
        raise InputError(f"{config_path}: {len(labels)} label(s) for a network with {args.out_channels} output channels "
                         f"(background + {args.out_channels - 1})")
    if len(channels) != args.in_channels or len(config.normalization) != args.in_channels:
        raise InputError(f"{config_path}: the network takes {args.in_channels} input channel(s) but channels lists "
                         f"{len(channels)} and normalization {len(config.normalization)}")
    final_id = model_id or config.id or _id_from(name)
    check_model_id(final_id)
    spec = BundleSpec(
        id=final_id, title=config.title or f"{name} (MONAI MedNeXt)",
        description=config.description or f"Imported from the MONAI MedNeXt {weights.name}.",
        license=config.license,
        network=NetworkSpec.from_config(net_config),
        weights=("weights.safetensors",),
        labels=labels, channels=channels,
        preprocessing=PreprocessingPlan(target_spacing=config.target_spacing, normalization=config.normalization,
                                        crop_to_nonzero=False, orientation=config.orientation,
                                        use_mask_for_norm=config.use_mask_for_norm),
        inference=InferenceDefaults(patch_size=config.patch_size, step=config.step, mirror_axes=config.mirror_axes),
        provenance=Provenance(date=datetime.date.today().isoformat(), imported_from={
            "format": "monai", "weights": weights.name, "weights_sha256": sha256_file(weights),
            "monai_args": args.to_json(), "axis_order": "xyz" if config.axes == (2, 1, 0) else "zyx", **facts}),
    )
    import torch

    # MONAI's arrays are (x, y, z) by default, ours (z, y, x): the permutation goes into the kernels.
    return Bundle.create(strip_absolute_paths(spec), [permute_spatial(state, config.axes, torch)])


def _id_from(name: str) -> str:
    base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "model"
    return ("monai-" + base)[:64].strip("-")
