"""Batch augmentation on tensors: flips, rotation, zoom, shift, shear, blur and contrast.

Works on (N, C, H, W) float images in [0, 1] and optional (N, 1, H, W) masks transformed with the same geometry.
All randomness comes from the ``torch.Generator`` passed in, so runs are reproducible from the seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    hflip: bool = True
    vflip: bool = False
    rotate_deg: float = 15.0
    zoom: float = 0.1
    shift: float = 0.06
    shear: float = 0.05
    blur_p: float = 0.2
    contrast: float = 0.1

    @classmethod
    def off(cls) -> AugmentConfig:
        return cls(False, False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

    def describe(self) -> str:
        """One line for the model card, e.g. ``"horizontal flip, rotation +-15 deg, zoom +-10%"``."""
        parts = [name for on, name in ((self.hflip, "horizontal flip"), (self.vflip, "vertical flip")) if on]
        parts += [
            text
            for value, text in (
                (self.rotate_deg, f"rotation +-{self.rotate_deg:g} deg"),
                (self.zoom, f"zoom +-{self.zoom:.0%}"),
                (self.shift, f"shift +-{self.shift:.0%}"),
                (self.shear, f"shear +-{self.shear:g}"),
                (self.blur_p, f"3x3 blur p={self.blur_p:g}"),
                (self.contrast, f"contrast/brightness +-{self.contrast:.0%}"),
            )
            if value
        ]
        return ", ".join(parts) or "off"


# ``--augment`` choices. "flips-zoom" is what the crop-grid segmenter's source study kept: of everything it tried, only
# flips and a small zoom improved the segmentation.
AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "full": AugmentConfig(),
    "flips-zoom": AugmentConfig(
        hflip=True, vflip=True, rotate_deg=0.0, zoom=0.08, shift=0.0, shear=0.0, blur_p=0.0, contrast=0.05
    ),
    "off": AugmentConfig.off(),
}


def _uniform(n: int, lim: float, g: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=g) * 2 - 1) * lim


def augment(
    x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Augment a batch: ``x`` float (N, C, H, W) in [0, 1], ``mask`` (N, 1, H, W) with values 0/1 or None.

    Flips and the affine warp (rotation, zoom, shift, shear) move image and mask with the same parameters; the mask is
    resampled bilinearly and thresholded at 0.5, so it stays binary. Blur and contrast touch the image only.
    Random draws come from the CPU generator ``g``; the tensors may live on any device.
    """
    n, dev = x.shape[0], x.device
    if cfg.hflip:
        f = (torch.rand(n, generator=g) < 0.5).to(dev)
        x = torch.where(f[:, None, None, None], x.flip(-1), x)
        if mask is not None:
            mask = torch.where(f[:, None, None, None], mask.flip(-1), mask)
    if cfg.vflip:
        f = (torch.rand(n, generator=g) < 0.5).to(dev)
        x = torch.where(f[:, None, None, None], x.flip(-2), x)
        if mask is not None:
            mask = torch.where(f[:, None, None, None], mask.flip(-2), mask)
    if cfg.rotate_deg or cfg.zoom or cfg.shift or cfg.shear:
        ang = _uniform(n, math.radians(cfg.rotate_deg), g)
        scale = 1.0 + _uniform(n, cfg.zoom, g)
        sh = _uniform(n, cfg.shear, g)
        cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos, -sin + sh
        theta[:, 1, 0], theta[:, 1, 1] = sin, cos
        theta[:, :, 2] = torch.stack([_uniform(n, cfg.shift, g), _uniform(n, cfg.shift, g)], dim=1) * 2
        grid = F.affine_grid(theta.to(dev, x.dtype), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if mask is not None:
            mask = (F.grid_sample(mask.float(), grid, mode="bilinear", align_corners=False) > 0.5).to(mask.dtype)
    if cfg.blur_p > 0:
        b = torch.rand(n, generator=g) < cfg.blur_p
        if b.any():
            b = b.to(dev)
            k = torch.tensor([0.25, 0.5, 0.25], device=dev, dtype=x.dtype)
            k2 = (k[:, None] * k[None, :]).expand(x.shape[1], 1, 3, 3)
            blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k2, groups=x.shape[1])
            x = torch.where(b[:, None, None, None], blurred, x)
    if cfg.contrast > 0:
        gain = 1.0 + _uniform(n, cfg.contrast, g)[:, None, None, None].to(dev)
        bias = _uniform(n, cfg.contrast / 2, g)[:, None, None, None].to(dev)
        x = (x * gain + bias).clamp(0.0, 1.0)
    return x, mask
