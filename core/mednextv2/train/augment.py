"""Data augmentation on torch tensors, batched, on the training device.

The transforms and probabilities are nnU-Net v2's defaults (rotation, scaling, mirroring,
optional elastic; noise, blur, brightness, contrast, low resolution, gamma). Rotation, scaling,
mirroring and the elastic field are folded into one sampling grid per sample, so the whole
spatial part is a single `grid_sample` that also cuts the patch out of its larger context.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    p_rotation: float = 0.2
    rotation_deg: float = 30.0
    in_plane_axis: Optional[int] = None  # array axis of thick slices: rotate only around it
    p_scaling: float = 0.2
    scaling: Tuple[float, float] = (0.7, 1.4)
    p_elastic: float = 0.0  # off by default, as in nnU-Net v2
    elastic_voxels: float = 4.0  # peak displacement
    mirror_axes: Tuple[int, ...] = (0, 1, 2)
    p_noise: float = 0.1
    noise_variance: Tuple[float, float] = (0.0, 0.1)
    p_blur: float = 0.2
    blur_sigma: Tuple[float, float] = (0.5, 1.0)
    p_brightness: float = 0.15
    brightness: Tuple[float, float] = (0.75, 1.25)
    p_contrast: float = 0.15
    contrast: Tuple[float, float] = (0.75, 1.25)
    p_lowres: float = 0.25
    lowres_zoom: Tuple[float, float] = (0.5, 1.0)
    p_gamma_inverted: float = 0.1
    p_gamma: float = 0.3
    gamma: Tuple[float, float] = (0.7, 1.5)


NO_AUGMENTATION = AugmentConfig(p_rotation=0, p_scaling=0, p_elastic=0, mirror_axes=(), p_noise=0, p_blur=0,
                                p_brightness=0, p_contrast=0, p_lowres=0, p_gamma_inverted=0, p_gamma=0)


def _uniform(n: int, bounds: Sequence[float], gen: torch.Generator, device) -> torch.Tensor:
    lo, hi = bounds
    return lo + (hi - lo) * torch.rand(n, generator=gen, device=device)


def _hit(n: int, p: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) < p


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3) angles about x, y, z -> (B, 3, 3) rotation matrices Rz @ Ry @ Rx."""
    c, s = torch.cos(angles), torch.sin(angles)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])
    rx = torch.stack([one, zero, zero, zero, c[:, 0], -s[:, 0], zero, s[:, 0], c[:, 0]], 1).view(-1, 3, 3)
    ry = torch.stack([c[:, 1], zero, s[:, 1], zero, one, zero, -s[:, 1], zero, c[:, 1]], 1).view(-1, 3, 3)
    rz = torch.stack([c[:, 2], -s[:, 2], zero, s[:, 2], c[:, 2], zero, zero, zero, one], 1).view(-1, 3, 3)
    return rz @ ry @ rx


def _affine(batch: int, cfg: AugmentConfig, gen: torch.Generator, device):
    """(B, 3, 3) output->input voxel maps in grid_sample's (x, y, z) = (W, H, D) order, the mirror
    signs (B, 3) in the same order, and which samples are rotated or scaled (B,)."""
    limit = math.radians(cfg.rotation_deg)
    angles = (torch.rand(batch, 3, generator=gen, device=device) * 2 - 1) * limit
    if cfg.in_plane_axis is not None:  # array axis a is grid axis 2 - a; keep only rotation about it
        keep = torch.zeros(3, device=device)
        keep[2 - cfg.in_plane_axis] = 1
        angles = angles * keep
    rotated = _hit(batch, cfg.p_rotation, gen, device)
    angles = angles * rotated[:, None]
    matrix = _rotation(angles)
    scaled = _hit(batch, cfg.p_scaling, gen, device)
    scale = torch.where(scaled, _uniform(batch, cfg.scaling, gen, device), torch.ones(batch, device=device))
    matrix = matrix * scale[:, None, None]
    flips = torch.ones(batch, 3, device=device)
    for axis in cfg.mirror_axes:
        flips[:, 2 - axis] = torch.where(_hit(batch, 0.5, gen, device), -1.0, 1.0)
    return matrix * flips[:, None, :], flips, rotated | scaled


def _elastic(grid: torch.Tensor, context: Sequence[int], cfg: AugmentConfig, gen: torch.Generator,
             hit: torch.Tensor) -> torch.Tensor:
    batch, device = grid.shape[0], grid.device
    if not bool(hit.any()):
        return grid
    coarse = [max(2, s // 8) for s in grid.shape[1:4]]
    noise = torch.randn(batch, 3, *coarse, generator=gen, device=device)
    field = F.interpolate(noise, size=tuple(grid.shape[1:4]), mode="trilinear", align_corners=False)
    field = field / field.abs().amax(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6) * cfg.elastic_voxels
    # voxels -> normalized units of the context, per grid axis (x, y, z) = reversed array axes
    to_norm = torch.tensor([2.0 / s for s in reversed(context)], device=device).view(1, 3, 1, 1, 1)
    field = (field * to_norm * hit.view(-1, 1, 1, 1, 1)).permute(0, 2, 3, 4, 1)
    return grid + field


def spatial(image: torch.Tensor, label: torch.Tensor, patch: Sequence[int], cfg: AugmentConfig,
            gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotate, scale, mirror (and deform) the context crops and cut out the centred patch.

    Samples that are only mirrored (most of them: rotation and scaling have p 0.2 each) are cut and
    flipped directly; resampling them would cost a grid_sample and change nothing.
    """
    batch, channels = image.shape[:2]
    context = image.shape[2:]
    device = image.device
    matrix, flips, warped = _affine(batch, cfg, gen, device)
    if cfg.p_elastic > 0:
        deformed = _hit(batch, cfg.p_elastic, gen, device)
        warped = warped | deformed
    out_image = image.new_empty((batch, channels, *patch))
    out_label = torch.empty((batch, 1, *patch), dtype=torch.long, device=device)
    start = [(c - p) // 2 for c, p in zip(context, patch)]
    window = tuple(slice(s, s + p) for s, p in zip(start, patch))
    for b in torch.nonzero(~warped).flatten().tolist():
        dims = [1 + a for a in range(3) if flips[b, 2 - a] < 0]
        img, lab = image[b][(slice(None),) + window], label[b][(slice(None),) + window]
        out_image[b] = torch.flip(img, dims) if dims else img
        out_label[b] = torch.flip(lab, dims) if dims else lab
    chosen = torch.nonzero(warped).flatten()
    if len(chosen):
        # output normalized coords -> output voxels -> input voxels -> input normalized coords
        out_half = torch.tensor([s / 2.0 for s in reversed(patch)], device=device)
        in_half = torch.tensor([s / 2.0 for s in reversed(context)], device=device)
        theta = torch.zeros(len(chosen), 3, 4, device=device)
        theta[:, :, :3] = matrix[chosen] * out_half[None, None, :] / in_half[None, :, None]
        grid = F.affine_grid(theta, [len(chosen), channels, *patch], align_corners=False)
        if cfg.p_elastic > 0:
            grid = _elastic(grid, context, cfg, gen, deformed[chosen])
        out_image[chosen] = F.grid_sample(image[chosen], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        out_label[chosen] = F.grid_sample(label[chosen].float(), grid, mode="nearest", padding_mode="zeros",
                                          align_corners=False).round().long()
    return out_image, out_label


def _stats(x: torch.Tensor):
    """Per sample and channel mean, std, min, max, shaped to broadcast (reductions over one flat axis are
    much faster on the CPU than over three)."""
    flat = x.flatten(2)
    shape = x.shape[:2] + (1,) * (x.dim() - 2)
    std, mean = torch.std_mean(flat, dim=-1)
    lo, hi = torch.aminmax(flat, dim=-1)
    return mean.view(shape), std.view(shape), lo.view(shape), hi.view(shape)


def _gaussian_kernel(sigma: float, device) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    x = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _blur_one(volume: torch.Tensor, sigmas: Sequence[float]) -> torch.Tensor:
    """volume (C, D, H, W): separable Gaussian, replicate padding."""
    x = volume[:, None]
    for axis, sigma in enumerate(sigmas):
        k = _gaussian_kernel(float(sigma), volume.device)
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(k)
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = len(k) // 2
        x = F.conv3d(F.pad(x, pad, mode="replicate"), k.view(shape))
    return x[:, 0]


def intensity(image: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    batch, channels = image.shape[:2]
    device = image.device
    one = (batch, 1, 1, 1, 1)
    noise_hit = _hit(batch, cfg.p_noise, gen, device)
    if bool(noise_hit.any()):
        std = _uniform(batch, cfg.noise_variance, gen, device).sqrt() * noise_hit
        image = image + torch.randn(image.shape, generator=gen, device=device) * std.view(one)
    for b in torch.nonzero(_hit(batch, cfg.p_blur, gen, device)).flatten().tolist():
        sigmas = _uniform(3, cfg.blur_sigma, gen, device).tolist()
        image[b] = _blur_one(image[b], sigmas)
    factor = torch.where(_hit(batch, cfg.p_brightness, gen, device), _uniform(batch, cfg.brightness, gen, device),
                         torch.ones(batch, device=device))
    image = image * factor.view(one)
    contrast_hit = _hit(batch, cfg.p_contrast, gen, device)
    if bool(contrast_hit.any()):
        mean, _, lo, hi = _stats(image)
        factor = torch.where(contrast_hit, _uniform(batch, cfg.contrast, gen, device), torch.ones(batch, device=device))
        image = torch.maximum(torch.minimum((image - mean) * factor.view(one) + mean, hi), lo)
    for b in torch.nonzero(_hit(batch, cfg.p_lowres, gen, device)).flatten().tolist():
        size = image.shape[2:]
        zoom = _uniform(3, cfg.lowres_zoom, gen, device).tolist()
        small = F.interpolate(image[b:b + 1], size=[max(1, int(round(s * z))) for s, z in zip(size, zoom)], mode="nearest")
        image[b:b + 1] = F.interpolate(small, size=size, mode="trilinear", align_corners=False)
    image = _gamma(image, _hit(batch, cfg.p_gamma_inverted, gen, device), True, cfg, gen)
    return _gamma(image, _hit(batch, cfg.p_gamma, gen, device), False, cfg, gen)


def _gamma(image: torch.Tensor, hit: torch.Tensor, invert: bool, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    if not bool(hit.any()):
        return image
    batch = image.shape[0]
    device = image.device
    # nnU-Net draws gamma < 1 and > 1 equally often; uniform over (0.7, 1.5) would favour > 1.
    low = _uniform(batch, (cfg.gamma[0], 1.0), gen, device)
    high = _uniform(batch, (1.0, cfg.gamma[1]), gen, device)
    gamma = torch.where(torch.rand(batch, generator=gen, device=device) < 0.5, low, high).view(-1, 1, 1, 1, 1)
    x = -image if invert else image
    mean, std, lo, hi = _stats(x)
    y = ((x - lo) / (hi - lo).clamp_min(1e-7)).clamp_min(0) ** gamma * (hi - lo) + lo
    m2, s2, _, _ = _stats(y)
    y = (y - m2) / s2.clamp_min(1e-7) * std + mean  # keep each patch's mean and std (retain_stats)
    y = -y if invert else y
    return torch.where(hit.view(-1, 1, 1, 1, 1), y, image)


def augment(image: torch.Tensor, label: torch.Tensor, patch: Sequence[int], cfg: AugmentConfig,
            gen: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """(B, C, *context) float, (B, 1, *context) int -> augmented (B, C, *patch), (B, 1, *patch) long."""
    with torch.no_grad():
        image, label = spatial(image.float(), label, patch, cfg, gen)
        return intensity(image, cfg, gen), label
