"""Slice inputs for the 2-D CT models, shared by training and inference so both see identical pixels."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from triage_node.preprocess.windows import three_windows

log = logging.getLogger(__name__)


def square_pad(hu: np.ndarray, fill: float = -1024.0) -> np.ndarray:
    """Pad (n, H, W) symmetrically to (n, S, S) with S = max(H, W), filling with air."""
    n, h, w = hu.shape
    s = max(h, w)
    if h == w:
        return hu
    out = np.full((n, s, s), fill, dtype=hu.dtype)
    y0, x0 = (s - h) // 2, (s - w) // 2
    out[:, y0 : y0 + h, x0 : x0 + w] = hu
    return out


CHUNK = 16  # slices windowed at full resolution at a time: a long thin-slice series never triples in memory


def window_resize(hu: np.ndarray, size: int) -> torch.Tensor:
    """HU slices (n, H, W) -> float32 tensor (n, 3, size, size) in [0, 1]: brain, subdural and bone windows, averaged
    down (area interpolation) after windowing so thin bright blood is not aliased away. Works through the slices in
    chunks, so only the small output is held for the whole series."""
    parts = []
    for i in range(0, hu.shape[0], CHUNK):
        win = torch.from_numpy(three_windows(square_pad(np.asarray(hu[i : i + CHUNK], np.float32))))
        if win.shape[-1] != size:
            win = F.interpolate(win, size=(size, size), mode="area")
        parts.append(win)
    return torch.cat(parts) if parts else torch.zeros((0, 3, size, size))


def context_rows(win: torch.Tensor, idx: torch.Tensor, context: int) -> torch.Tensor:
    """``with_context(win, context)[idx]`` without building the whole stacked tensor (one batch at a time)."""
    if context == 0:
        return win[idx]
    n = win.shape[0]
    parts = [win[idx]]
    for k in range(1, context + 1):
        parts.append(win[(idx - k).clamp(0, n - 1)])
        parts.append(win[(idx + k).clamp(0, n - 1)])
    return torch.cat(parts, dim=1)


def with_context(win: torch.Tensor, context: int) -> torch.Tensor:
    """Stack each slice's neighbours (+-``context``, edges repeated) as extra channels (2.5-D input).

    (n, 3, s, s) -> (n, 3 * (2 * context + 1), s, s); the centre slice comes first.
    """
    if context == 0:
        return win
    n = win.shape[0]
    idx = torch.arange(n)
    parts = [win]
    for k in range(1, context + 1):
        parts.append(win[(idx - k).clamp(0, n - 1)])
        parts.append(win[(idx + k).clamp(0, n - 1)])
    return torch.cat(parts, dim=1)


NOISE_SLICES = 12  # slices sampled (between 30% and 80% of the series' height) to estimate its noise
SMOOTHING_STEPS = (0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8)  # in-plane Gaussian sigmas tried, in pixels at the model's size


def _at_size(hu: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(square_pad(np.asarray(hu, np.float32)))[:, None]
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="area")
    return np.asarray(x[:, 0].numpy())


def noise_sample(hu: np.ndarray) -> np.ndarray:
    """The slices :func:`noise_hu` looks at: ``NOISE_SLICES`` of them through the middle of the head (float32)."""
    z = hu.shape[0]
    idx = np.unique(np.linspace(z * 0.3, max(z * 0.8 - 1, z * 0.3), NOISE_SLICES).astype(int).clip(0, z - 1))
    return np.asarray(hu[idx], np.float32)


def noise_hu(hu: np.ndarray, size: int) -> float:
    """Pixel noise (HU, a robust standard deviation) of soft tissue as a network with input ``size`` sees it.

    The slices are averaged down to ``size`` (as :func:`window_resize` does), each pixel is compared with the median
    of its 3 x 3 neighbourhood, and the spread of that residual (1.4826 x its median absolute deviation) is taken over
    soft-tissue pixels (10-60 HU, away from edges). NaN when there is too little soft tissue to tell.
    """
    x = _at_size(hu, size)
    ref = ndimage.median_filter(x, size=(1, 3, 3))
    soft = ndimage.binary_erosion((ref > 10) & (ref < 60), structure=np.ones((1, 5, 5), bool))
    if soft.sum() < 200:
        return float("nan")
    r = (x - ref)[soft]
    return float(1.4826 * np.median(np.abs(r - np.median(r))))


def match_noise(hu: np.ndarray, size: int, limit: float | None) -> tuple[np.ndarray, float, float]:
    """Bring a series noisier than a model was trained on back within ``limit`` (HU, :func:`noise_hu`).

    A thin-slice, small-pixel or low-dose reconstruction can be several times noisier than anything in a model's
    training data; windowing clips that noise before the image is averaged down, and a bleed vanishes in it. Such a
    series is smoothed in-plane with the smallest Gaussian of :data:`SMOOTHING_STEPS` that brings its noise to
    ``limit`` or below (the largest when none does), as a reader would widen the window or thicken the slab.
    Returns the pixels (``hu`` itself when nothing is done), the noise measured and the sigma applied (pixels at
    ``size``; 0 when none).
    """
    if limit is None or hu.shape[0] == 0:
        return hu, float("nan"), 0.0
    sample = noise_sample(hu)
    before = noise_hu(sample, size)
    if not before > limit:  # NaN (no soft tissue) is left alone too
        return hu, before, 0.0
    scale = max(hu.shape[1:]) / size  # model pixels -> series pixels
    chosen = SMOOTHING_STEPS[-1]
    for sigma in SMOOTHING_STEPS:
        if noise_hu(ndimage.gaussian_filter(sample, (0.0, sigma * scale, sigma * scale)), size) <= limit:
            chosen = sigma
            break
    out = ndimage.gaussian_filter(np.asarray(hu, np.float32), (0.0, chosen * scale, chosen * scale))
    return out, before, chosen


def noise_limit(card_input: Mapping[str, Any]) -> float | None:
    """A CT card's ``input.noise_hu_max`` (the noisiest series its network was trained on), or None when absent."""
    limit = card_input.get("noise_hu_max")
    return None if limit is None else float(limit)


def within_noise(hu: np.ndarray, size: int, limit: float | None, model: str) -> np.ndarray:
    """:func:`match_noise` for an analyzer: the pixels to use, and one INFO line (no patient data) when smoothed."""
    out, noise, sigma = match_noise(hu, size, limit)
    if sigma:
        log.info(
            "%s: series noise %.1f HU at %d px is above the %.1f HU the model was trained on; smoothed in-plane"
            " (sigma %.2f px at %d px)", model, noise, size, limit, sigma, size,
        )
    return out
