"""Crop-grid cutting and reassembly and the segmentation post-processing (pure numpy)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage


def pad_to_multiple(img: np.ndarray, n: int, value: float = 0.0) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad the last two axes at the bottom/right to multiples of ``n``; returns (padded, original (h, w))."""
    h, w = img.shape[-2:]
    ph, pw = (-h) % n, (-w) % n
    if ph or pw:
        pad = [(0, 0)] * (img.ndim - 2) + [(0, ph), (0, pw)]
        img = np.pad(img, pad, constant_values=value)
    return img, (h, w)


def cut_grid(img: np.ndarray, n: int = 4) -> np.ndarray:
    """Cut (..., H, W) into an n x n grid: -> (..., n*n, H/n, W/n), row-major. H and W must be divisible by n."""
    h, w = img.shape[-2:]
    if h % n or w % n:
        raise ValueError(f"image height and width must be divisible by the grid size {n}, got {h}x{w}")
    lead = img.shape[:-2]
    t = img.reshape(*lead, n, h // n, n, w // n)
    t = np.moveaxis(t, -3, -2)  # (..., n, n, h/n, w/n)
    return t.reshape(*lead, n * n, h // n, w // n)


def reassemble_grid(crops: np.ndarray, n: int = 4) -> np.ndarray:
    """Inverse of :func:`cut_grid`: (..., n*n, h, w) -> (..., n*h, n*w)."""
    lead = crops.shape[:-3]
    h, w = crops.shape[-2:]
    t = crops.reshape(*lead, n, n, h, w)
    t = np.moveaxis(t, -2, -3)  # (..., n, h, n, w)
    return t.reshape(*lead, n * h, n * w)


def keep_components(
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    min_area_mm2: float,
    max_components: int = 1,
    min_extent_mm: float = 0.0,
    accept: Callable[[np.ndarray], bool] | None = None,
) -> np.ndarray:
    """Keep the ``max_components`` largest 3-D connected components of ``mask`` (bool (z, y, x)), then drop any kept
    component whose largest in-plane cross-section is under ``min_area_mm2`` (the source study's minimum size, made
    independent of resolution) or whose through-plane extent (slices it spans x slice spacing) is under
    ``min_extent_mm``. ``max_components=0`` keeps all. Returns bool (z, y, x).

    ``accept`` judges each candidate (its bool mask) before the largest are taken: the components that pass the size
    rules and ``accept`` compete, largest first, so a large rejected component (an artefact or a mimic) never hides a
    smaller accepted one. It is called in size order and no more than needed."""
    return Components.of(mask, spacing, min_area_mm2, min_extent_mm, max_components if accept is None else 0).keep(
        max_components, accept
    )


class Components:
    """The labelled components of a mask, largest first, that pass the size rules (:func:`keep_components`); split
    out so that one labelling serves several selections (``tune-mr`` tries several ADC limits on one mask)."""

    def __init__(self, lab: np.ndarray, order: np.ndarray) -> None:
        self.lab, self.order = lab, order

    @classmethod
    def of(
        cls,
        mask: np.ndarray,
        spacing: tuple[float, float, float],
        min_area_mm2: float,
        min_extent_mm: float = 0.0,
        largest: int = 0,
    ) -> Components:
        """``largest`` > 0: only the ``largest`` biggest components are candidates, before the size rules (the rule
        without an ``accept`` test)."""
        lab, n = ndimage.label(mask)
        if n == 0:
            return cls(lab, np.zeros(0, np.int64))
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        order = np.argsort(sizes)[::-1]
        order = order[sizes[order] > 0]
        if largest > 0:
            order = order[:largest]
        # Voxels of every component on every slice, (n + 1, z), in one pass per slice (not one pass over the volume
        # per component: a noisy mask has hundreds).
        per_slice = np.stack([np.bincount(plane.ravel(), minlength=n + 1) for plane in lab], axis=1)
        area_ok = per_slice.max(axis=1) * (spacing[1] * spacing[2]) >= min_area_mm2
        extent_ok = (per_slice > 0).sum(axis=1) * spacing[0] >= min_extent_mm
        return cls(lab, order[area_ok[order] & extent_ok[order]])

    def keep(self, max_components: int = 0, accept: Callable[[np.ndarray], bool] | None = None) -> np.ndarray:
        """bool mask of the first ``max_components`` candidates (0: all) that ``accept`` passes (all when None)."""
        keep = self.order
        if accept is not None:
            accepted = []
            for c in keep:
                if accept(self.lab == c):
                    accepted.append(c)
                    if len(accepted) == max_components:
                        break
            keep = np.asarray(accepted, dtype=np.int64)
        elif max_components > 0:
            keep = keep[:max_components]
        return np.isin(self.lab, keep)
