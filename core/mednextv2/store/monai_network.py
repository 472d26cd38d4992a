"""MONAI's `monai.networks.nets.MedNeXt` state dicts in the official MedNeXt layout.

MONAI (>= 1.5) names the same blocks differently: `enc_stages.i.j` is `enc_block_i.j`,
`down_blocks.i` is `down_i`, `up_blocks.i` is `up_{3-i}`, `dec_stages.i.j` is `dec_block_{3-i}.j`,
`out_blocks.i` is `out_{4-i}`, and GRN's parameters are `global_resp_gamma/beta` (1.5, 1.6) or
`grn_gamma/beta` (later). Two differences are not names:
- MONAI's down blocks have no GRN; the official `down_1..3` have one. GRN with zero gamma and
  beta is the identity (gamma * (h * N) + beta + h = h), so those are set to zero.
- MONAI's `down_blocks[i]` expands by `encoder_expansion_ratio[i]`, the official `down_i` by the
  next stage's ratio (`exp_r[i + 1]`): the config's `down_exp_r` records MONAI's where they differ.
MONAI's default `use_residual_connection=False` becomes the config's `residual` False. Everything
else MONAI can build and the official network cannot (2D, LayerNorm, other depths) is refused
with the reason. MONAI's constructor arguments are read
off the shapes, as for official checkpoints; `MonaiNetworkArgs` holds them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from mednextv2.errors import InputError
from mednextv2.network.config import MedNeXtConfig
from mednextv2.network.official import named_tensors, state_dict_problems, strip_prefixes

LEVELS = 4  # the official MedNeXt has four resolution levels below the bottleneck
_WRAPPERS = ("state_dict", "model", "network", "network_weights", "model_state_dict")
_BLOCK_PART = r"(conv[123]|norm|res_conv)\.(weight|bias)|(?:global_resp|grn)_(gamma|beta)"
_KEY = re.compile(r"(stem|out_0\.conv_out|out_blocks\.\d+\.conv_out)\.(weight|bias)\Z"
                  rf"|(enc_stages|dec_stages)\.\d+\.\d+\.(?:{_BLOCK_PART})\Z"
                  rf"|bottleneck\.\d+\.(?:{_BLOCK_PART})\Z"
                  rf"|(down_blocks|up_blocks)\.\d+\.(?:{_BLOCK_PART})\Z")


@dataclass(frozen=True)
class MonaiNetworkArgs:
    """The arguments of `monai.networks.nets.MedNeXt(...)` (MONAI's names; `grn` is the later name
    of `global_resp_norm`)."""

    spatial_dims: int
    init_filters: int
    in_channels: int
    out_channels: int
    encoder_expansion_ratio: Tuple[int, ...]
    decoder_expansion_ratio: Tuple[int, ...]
    bottleneck_expansion_ratio: int
    kernel_size: int
    deep_supervision: bool
    use_residual_connection: bool
    blocks_down: Tuple[int, ...]
    blocks_bottleneck: int
    blocks_up: Tuple[int, ...]
    norm_type: str
    global_resp_norm: bool

    @classmethod
    def names(cls) -> Tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def to_json(self) -> Dict[str, Any]:
        return {name: list(v) if isinstance(v, tuple) else v for name in self.names() for v in [getattr(self, name)]}

    def official_config(self) -> MedNeXtConfig:
        """Our network's config; InputError naming what the official MedNeXt cannot compute."""
        problems = []
        if self.spatial_dims != 3:
            problems.append(f"spatial_dims {self.spatial_dims}: only 3D MedNeXt networks are supported")
        if self.norm_type != "group":
            problems.append(f"norm_type {self.norm_type!r}: the official MedNeXt normalises with GroupNorm "
                            "('group'); MONAI's 'layer' norm is a LayerNorm over a kernel-sized window, another function")
        if len(self.blocks_down) != LEVELS or len(self.blocks_up) != LEVELS:
            problems.append(f"blocks_down {list(self.blocks_down)} and blocks_up {list(self.blocks_up)}: the official "
                            f"MedNeXt has {LEVELS} levels (4 numbers each)")
        if self.kernel_size % 2 == 0:
            problems.append(f"kernel_size {self.kernel_size}: must be odd")
        if problems:
            raise InputError("this MONAI MedNeXt cannot be imported: " + "; ".join(problems))
        return MedNeXtConfig(
            in_channels=self.in_channels, n_channels=self.init_filters, n_classes=self.out_channels,
            exp_r=list(self.encoder_expansion_ratio) + [self.bottleneck_expansion_ratio] + list(self.decoder_expansion_ratio),
            kernel_size=self.kernel_size,
            block_counts=list(self.blocks_down) + [self.blocks_bottleneck] + list(self.blocks_up),
            grn=self.global_resp_norm, grn_norm="mean", deep_supervision=self.deep_supervision,
            # MONAI's down_blocks[i] expands by encoder ratio i, the official down_i by the next stage's.
            down_exp_r=list(self.encoder_expansion_ratio), residual=self.use_residual_connection)


# ---------------------------------------------------------------- reading the state dict
def monai_tensors(obj: Any, where: str) -> Dict[str, torch.Tensor]:
    """The tensors of a MONAI state dict (or a checkpoint dict holding one), prefixes removed and
    GRN parameters under their later name `grn_*`."""
    try:
        obj = named_tensors(obj, "a MONAI MedNeXt state dict", _WRAPPERS)
    except ValueError as e:
        raise InputError(f"{where}: {e}") from e
    out = {}
    for key, value in obj.items():
        key = strip_prefixes(key)
        if not _KEY.match(key):
            hint = (" (this looks like an official/nnU-Net MedNeXt: import it without --from monai)"
                    if key.startswith(("enc_block_", "dec_block_", "down_", "up_")) else "")
            raise InputError(f"{where}: not a MONAI MedNeXt state dict: unexpected entry {key[:80]!r}{hint}")
        key = re.sub(r"global_resp_(gamma|beta)\Z", r"grn_\1", key)
        if key in out:
            raise InputError(f"{where}: {key!r} is present under both GRN names (global_resp_* and grn_*)")
        out[key] = value
    return out


def _indices(sd: Mapping[str, torch.Tensor], pattern: str) -> list:
    found = sorted({int(m.group(1)) for k in sd for m in [re.match(pattern, k)] if m})
    return found


def _count(sd: Mapping[str, torch.Tensor], pattern: str, what: str, where: str) -> int:
    found = _indices(sd, pattern)
    if not found or found != list(range(len(found))):
        raise InputError(f"{where}: not a MONAI MedNeXt state dict: {what} has indices {found}")
    return len(found)


def _shape(sd: Mapping[str, torch.Tensor], key: str, where: str) -> Tuple[int, ...]:
    if key not in sd:
        raise InputError(f"{where}: not a MONAI MedNeXt state dict: {key!r} is missing")
    return tuple(sd[key].shape)


def args_from_state_dict(sd: Mapping[str, torch.Tensor], where: str) -> MonaiNetworkArgs:
    """MONAI's constructor arguments, read off the shapes and names of a `monai_tensors` dict."""
    stem = _shape(sd, "stem.weight", where)
    if len(stem) not in (4, 5):
        raise InputError(f"{where}: stem.weight has shape {stem}, not a 2D or 3D convolution")
    spatial_dims = len(stem) - 2
    levels_down = _count(sd, r"enc_stages\.(\d+)\.", "enc_stages", where)
    levels_up = _count(sd, r"dec_stages\.(\d+)\.", "dec_stages", where)

    def ratio(block: str) -> int:
        conv2 = _shape(sd, f"{block}.conv2.weight", where)
        return conv2[0] // max(conv2[1], 1)

    enc_blocks = [_count(sd, rf"enc_stages\.{i}\.(\d+)\.", f"enc_stages.{i}", where) for i in range(levels_down)]
    dec_blocks = [_count(sd, rf"dec_stages\.{i}\.(\d+)\.", f"dec_stages.{i}", where) for i in range(levels_up)]
    norm = _shape(sd, "enc_stages.0.0.norm.weight", where)
    return MonaiNetworkArgs(
        spatial_dims=spatial_dims, init_filters=stem[0], in_channels=stem[1],
        out_channels=_shape(sd, "out_0.conv_out.weight", where)[1],
        encoder_expansion_ratio=tuple(ratio(f"enc_stages.{i}.0") for i in range(levels_down)),
        decoder_expansion_ratio=tuple(ratio(f"dec_stages.{i}.0") for i in range(levels_up)),
        bottleneck_expansion_ratio=ratio("bottleneck.0"),
        kernel_size=_shape(sd, "enc_stages.0.0.conv1.weight", where)[-1],
        deep_supervision=any(k.startswith("out_blocks.") for k in sd),
        use_residual_connection="down_blocks.0.res_conv.weight" in sd,
        blocks_down=tuple(enc_blocks), blocks_bottleneck=_count(sd, r"bottleneck\.(\d+)\.", "bottleneck", where),
        blocks_up=tuple(dec_blocks),
        norm_type="group" if len(norm) == 1 else "layer",
        global_resp_norm="enc_stages.0.0.grn_gamma" in sd)


def check_agreement(given: Mapping[str, Any], read: MonaiNetworkArgs, where: str) -> None:
    """Arguments the user gave must be what the weights were built with."""
    differ = []
    for name, value in given.items():
        actual = getattr(read, name)
        if isinstance(actual, tuple) and isinstance(value, int) and not isinstance(value, bool):
            value = (value,) * len(actual)  # MONAI repeats an int ratio over the stages
        elif isinstance(actual, tuple):
            value = tuple(value)
        if value != actual:
            differ.append(f"{name} is {_show(value)} in the config but {_show(actual)} in the weights")
    if differ:
        raise InputError(f"{where}: the network config does not match the weights: " + "; ".join(differ))


def _show(value: Any) -> str:
    return str(list(value)) if isinstance(value, tuple) else repr(value)


# ---------------------------------------------------------------- the official layout
def official_key(key: str) -> str:
    """A MONAI key (GRN already `grn_*`) under its official name."""
    m = re.match(r"(enc_stages|dec_stages)\.(\d+)\.(.*)\Z", key)
    if m:
        stage = int(m.group(2))
        return (f"enc_block_{stage}" if m.group(1) == "enc_stages" else f"dec_block_{LEVELS - 1 - stage}") + "." + m.group(3)
    m = re.match(r"(down_blocks|up_blocks|out_blocks)\.(\d+)\.(.*)\Z", key)
    if m:
        index = int(m.group(2))
        name = {"down_blocks": f"down_{index}", "up_blocks": f"up_{LEVELS - 1 - index}",
                "out_blocks": f"out_{LEVELS - index}"}[m.group(1)]
        return f"{name}.{m.group(3)}"
    return key  # stem, bottleneck, out_0 keep their names


def to_official(sd: Mapping[str, torch.Tensor], args: MonaiNetworkArgs, where: str,
                deep_supervision: Optional[bool] = None) -> Tuple[MedNeXtConfig, Dict[str, torch.Tensor]]:
    """Our config and the state dict in the official layout, checked to load into our MedNeXt exactly.

    `deep_supervision` False drops the training-only heads (out_1..out_4)."""
    from mednextv2.network import MedNeXt

    config = args.official_config()
    out = {official_key(k): v.to(torch.float32) if v.is_floating_point() else v for k, v in sd.items()}
    if config.grn:
        for level in range(1, LEVELS):  # official down_1..3 have a GRN; zero parameters are the identity
            hidden = out[f"down_{level}.conv2.weight"].shape[0] if f"down_{level}.conv2.weight" in out else 0
            for part in ("grn_gamma", "grn_beta"):
                key = f"down_{level}.{part}"
                if key in out:
                    raise InputError(f"{where}: down_blocks.{level} has GRN parameters, which MONAI's down blocks "
                                     "never have: not a MONAI MedNeXt state dict")
                out[key] = torch.zeros(1, hidden, 1, 1, 1)
    with torch.device("meta"):
        expected = MedNeXt(config).state_dict()
    problems = state_dict_problems(expected, out, monai_key)
    if problems:
        raise InputError(f"{where}: the weights are not those of the MONAI MedNeXt read off their shapes "
                         f"({args.to_json()}): {problems}")
    if deep_supervision is False:
        out = {k: v for k, v in out.items() if not re.match(r"out_[1-9]\.", k)}
        config = config.replace(deep_supervision=False)
    return config, out


def monai_key(key: str) -> str:
    """An official key under MONAI's name (the inverse of `official_key`), for messages."""
    m = re.match(r"(enc_block|dec_block|down|up|out)_(\d+)\.(.*)\Z", key)
    if not m:
        return key
    index = int(m.group(2))
    kind = m.group(1)
    if kind == "out" and index == 0:
        return key
    name = {"enc_block": f"enc_stages.{index}", "dec_block": f"dec_stages.{LEVELS - 1 - index}",
            "down": f"down_blocks.{index}", "up": f"up_blocks.{LEVELS - 1 - index}",
            "out": f"out_blocks.{LEVELS - index}"}[kind]
    return f"{name}.{m.group(3)}"
