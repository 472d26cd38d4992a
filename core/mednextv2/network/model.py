"""MedNeXt: 5-level ConvNeXt U-Net with additive skips; parameter names equal the official checkpoint keys."""
from __future__ import annotations

import logging
from typing import Iterable, List, Union

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .config import DIVISOR, MedNeXtConfig
from .layers import MedNeXtBlock, OutBlock, pointwise_conv_to_channels_last

log = logging.getLogger(__name__)

STAGES = ("enc_block_0", "enc_block_1", "enc_block_2", "enc_block_3", "bottleneck",
          "dec_block_3", "dec_block_2", "dec_block_1", "dec_block_0")


def _stage(channels: int, count: int, exp_r: int, kernel: int, grn: bool, grn_norm: str, residual: bool) -> nn.Sequential:
    return nn.Sequential(*[MedNeXtBlock(channels, channels, exp_r, kernel, grn, grn_norm=grn_norm, residual=residual)
                           for _ in range(count)])


class MedNeXt(nn.Module):
    def __init__(self, config: MedNeXtConfig) -> None:
        super().__init__()
        self.config = config
        c, r, n, k, grn = config.n_channels, config.exp_r, config.block_counts, config.kernel_size, config.grn
        gn, res = config.grn_norm, config.residual
        self.stem = nn.Conv3d(config.in_channels, c, kernel_size=1)
        for level in range(4):
            ch = c * 2 ** level
            setattr(self, f"enc_block_{level}", _stage(ch, n[level], r[level], k, grn, gn, res))
            # Quirk of the official code: down_0 has no GRN, every other resampling block does.
            setattr(self, f"down_{level}", MedNeXtBlock(ch, 2 * ch, config.down_ratios[level], k, grn and level > 0, "down", gn, res))
        self.bottleneck = _stage(16 * c, n[4], r[4], k, grn, gn, res)
        for level in (3, 2, 1, 0):
            ch = c * 2 ** level
            stage = 8 - level  # dec_block_3 is stage 5, dec_block_0 stage 8
            setattr(self, f"up_{level}", MedNeXtBlock(2 * ch, ch, r[stage], k, grn, "up", gn, res))
            setattr(self, f"dec_block_{level}", _stage(ch, n[stage], r[stage], k, grn, gn, res))
        self.out_0 = OutBlock(c, config.n_classes)
        self.deep_supervision = False
        self.set_deep_supervision(config.deep_supervision)
        self.checkpointed: frozenset = frozenset()
        self.channels_last = None  # None: channels-last on the CPU only (measured faster there)

    # -- switches ---------------------------------------------------------------------------
    def set_deep_supervision(self, enabled: bool) -> None:
        """Turn the 1/2..1/16 outputs on or off; heads missing from a loaded checkpoint are created."""
        enabled = bool(enabled)
        if enabled:
            ref = self.out_0.conv_out.weight
            for level in range(1, 5):
                if not hasattr(self, f"out_{level}"):
                    head = OutBlock(self.config.n_channels * 2 ** level, self.config.n_classes)
                    setattr(self, f"out_{level}", head.to(device=ref.device, dtype=ref.dtype))
        self.deep_supervision = enabled
        self.config = self.config.replace(deep_supervision=enabled)

    def set_checkpointing(self, stages: Union[bool, Iterable[str]] = True) -> None:
        """Activation checkpointing per stage (names in STAGES, or True for all, False for none)."""
        if stages is True:
            chosen = set(STAGES)
        elif stages is False or stages is None:
            chosen = set()
        else:
            chosen = set(stages)
            unknown = chosen - set(STAGES)
            if unknown:
                raise ValueError(f"unknown stage(s) {sorted(unknown)} for checkpointing; choose from {STAGES}")
        self.checkpointed = frozenset(chosen)

    # -- forward ----------------------------------------------------------------------------
    def check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(f"MedNeXt expects a 5-D input (N, C, D, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.config.in_channels:
            raise ValueError(f"MedNeXt expects {self.config.in_channels} input channel(s), got {x.shape[1]} "
                             f"(input shape {tuple(x.shape)})")
        bad = [s for s in x.shape[2:] if s % DIVISOR]
        if bad:
            raise ValueError(f"each spatial size must be divisible by {DIVISOR}, got {tuple(x.shape[2:])}; "
                             "pad the input (the predictor does this for you)")

    def _run_stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        stage = getattr(self, name)
        if name in self.checkpointed and torch.is_grad_enabled():
            for block in stage:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        # Inside a stage every block input is a tensor this forward made and needs no longer.
        for block in stage:
            x = block(x, inplace=True)
        return x

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, List[torch.Tensor]]:
        self.check_input(x)
        channels_last = self.channels_last if self.channels_last is not None else x.device.type == "cpu"
        if channels_last and x.device.type == "cpu" and x.dtype == torch.float32 and not torch.is_grad_enabled():
            x = pointwise_conv_to_channels_last(x, self.stem)
        else:
            x = self.stem(x)
        if channels_last:
            # After the stem: with one input channel both layouts look alike and conv keeps the default.
            x = x.contiguous(memory_format=torch.channels_last_3d)
        skips = []
        for level in range(4):
            x = self._run_stage(f"enc_block_{level}", x)
            skips.append(x)
            x = getattr(self, f"down_{level}")(x)
        x = self._run_stage("bottleneck", x)
        # Heads run as soon as their level is done, so no decoder output is held longer than needed.
        coarse = [self.out_4(x)] if self.deep_supervision else []
        for level in (3, 2, 1, 0):
            # The skip is this forward's own tensor and used only here: the up block may add into it.
            x = getattr(self, f"up_{level}")(x, inplace=True, skip=skips.pop())
            x = self._run_stage(f"dec_block_{level}", x)
            if level and self.deep_supervision:
                coarse.append(getattr(self, f"out_{level}")(x))
        full = self.out_0(x).contiguous()
        if not self.deep_supervision:
            return full
        return [full] + [out.contiguous() for out in reversed(coarse)]
