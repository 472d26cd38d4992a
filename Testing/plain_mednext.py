"""A plain, literal MedNeXt written from the MedNeXt-v2 paper: the benchmarks' baseline
and the tests' independent reference.

Default layout, `torch.norm` GRN, `nn.ConvTranspose3d` heads: exactly what the spec says and no
more. Its parameter names equal the official keys, so it loads the same state dict as ours.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PlainBlock(nn.Module):
    def __init__(self, cin, cout, r, k, grn, mode=None):
        super().__init__()
        self.mode = mode
        conv = nn.ConvTranspose3d if mode == "up" else nn.Conv3d
        stride = 1 if mode is None else 2
        self.conv1 = conv(cin, cin, k, stride=stride, padding=k // 2, groups=cin)
        self.norm = nn.GroupNorm(cin, cin)
        self.conv2 = nn.Conv3d(cin, r * cin, 1)
        self.act = nn.GELU()
        self.conv3 = nn.Conv3d(r * cin, cout, 1)
        self.grn = grn
        if grn:
            self.grn_gamma = nn.Parameter(torch.zeros(1, r * cin, 1, 1, 1))
            self.grn_beta = nn.Parameter(torch.zeros(1, r * cin, 1, 1, 1))
        if mode is not None:
            self.res_conv = conv(cin, cout, 1, stride=2)

    def forward(self, x):
        h = self.act(self.conv2(self.norm(self.conv1(x))))
        if self.grn:
            g = torch.norm(h, p=2, dim=(-3, -2, -1), keepdim=True)
            n = g / (g.mean(dim=1, keepdim=True) + 1e-6)
            h = self.grn_gamma * (h * n) + self.grn_beta + h
        h = self.conv3(h)
        if not getattr(self, "residual", True):  # MONAI's default MedNeXt: no residual branch
            return F.pad(h, (1, 0, 1, 0, 1, 0)) if self.mode == "up" else h
        if self.mode is None:
            return x + h
        res = self.res_conv(x)
        if self.mode == "up":
            h, res = F.pad(h, (1, 0, 1, 0, 1, 0)), F.pad(res, (1, 0, 1, 0, 1, 0))
        return h + res


class PlainHead(nn.Module):
    def __init__(self, c, ncls):
        super().__init__()
        self.conv_out = nn.ConvTranspose3d(c, ncls, 1)

    def forward(self, x):
        return self.conv_out(x)


class PlainMedNeXt(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        c, r, n, k, g = cfg.n_channels, cfg.exp_r, cfg.block_counts, cfg.kernel_size, cfg.grn
        self.ds = cfg.deep_supervision
        self.stem = nn.Conv3d(cfg.in_channels, c, 1)
        for s in range(4):
            ch = c * 2 ** s
            setattr(self, f"enc_block_{s}", nn.Sequential(*[PlainBlock(ch, ch, r[s], k, g) for _ in range(n[s])]))
            down_r = r[s + 1] if getattr(cfg, "down_exp_r", None) is None else cfg.down_exp_r[s]
            setattr(self, f"down_{s}", PlainBlock(ch, 2 * ch, down_r, k, g and s > 0, "down"))
        self.bottleneck = nn.Sequential(*[PlainBlock(16 * c, 16 * c, r[4], k, g) for _ in range(n[4])])
        for s in (3, 2, 1, 0):
            ch = c * 2 ** s
            setattr(self, f"up_{s}", PlainBlock(2 * ch, ch, r[8 - s], k, g, "up"))
            setattr(self, f"dec_block_{s}", nn.Sequential(*[PlainBlock(ch, ch, r[8 - s], k, g) for _ in range(n[8 - s])]))
        self.out_0 = PlainHead(c, cfg.n_classes)
        if not getattr(cfg, "residual", True):
            for block in [m for m in self.modules() if isinstance(m, PlainBlock)]:
                block.residual = False
                if hasattr(block, "res_conv"):
                    del block.res_conv
        if self.ds:
            for s in range(1, 5):
                setattr(self, f"out_{s}", PlainHead(c * 2 ** s, cfg.n_classes))

    def forward(self, x):
        x = self.stem(x)
        skips = []
        for s in range(4):
            x = getattr(self, f"enc_block_{s}")(x)
            skips.append(x)
            x = getattr(self, f"down_{s}")(x)
        x = self.bottleneck(x)
        outs = {4: x}
        for s in (3, 2, 1, 0):
            x = getattr(self, f"dec_block_{s}")(getattr(self, f"up_{s}")(x) + skips.pop())
            outs[s] = x
        full = self.out_0(outs[0])
        if not self.ds:
            return full
        return [full] + [getattr(self, f"out_{s}")(outs[s]) for s in range(1, 5)]
