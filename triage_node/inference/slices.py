"""Slice inputs for the 2-D CT models, shared by training and inference so both see identical pixels."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from triage_node.preprocess.windows import three_windows


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
