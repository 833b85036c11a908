"""The blank-slice filter: drop the slices with little or no brain before inference.

A slice's brain is the pixels inside the head and within the brain window (40/80, i.e. 0-80 HU) for CT; for MR,
the pixels inside the head above a tissue threshold derived from the whole volume. Its **brain percentage** is its
brain as a percentage of the brain on the series' fullest slice: 100 on the slices through the middle of the brain,
a few percent on a skull cap, 0 on a blank slice. CT slices under ``filter.min_brain_pct`` (default 10) are dropped;
MR slices under ``filter.min_tissue_pct_mr`` (default 2: only the nearly empty ends, since the MR models read the
volume in 3-D).

The source RSNA study divided by all the slice's pixels instead ("img_pct_window", slices under 20% dropped). That
share depends on the field of view and the head's size, not on the brain: a 230 mm field of view of a small head has
no slice above 20%, and on the project's second renderer the rule dropped half of every series and 39 of 41 slices of
one, with the hemorrhage. Relative to the series' own fullest slice the percentage is the same at any field of view,
matrix or head size.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from triage_node.preprocess.windows import Preset

HEAD_HU = -300.0  # soft tissue, skull and brain are above this; air and most padding values below


def head_mask(slice_hu: np.ndarray, threshold: float = HEAD_HU) -> np.ndarray:
    """The head on one slice: the largest connected region above ``threshold``, holes filled.

    ``slice_hu``: (y, x) numeric -> bool (y, x).
    """
    fg = np.asarray(slice_hu) > threshold
    if not fg.any():
        return fg
    labels, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
        fg = labels == (int(np.argmax(sizes)) + 1)
    return np.asarray(ndimage.binary_fill_holes(fg))


MAX_FILTER_SIZE = 256  # larger slices are subsampled first: a percentage needs no more pixels than this


def _subsample(plane: np.ndarray) -> np.ndarray:
    step = max(1, int(np.ceil(max(plane.shape) / MAX_FILTER_SIZE)))
    return plane[::step, ::step] if step > 1 else plane


def brain_fraction_ct(slice_hu: np.ndarray) -> float:
    """The share (0-1) of the slice's pixels inside the head and within the brain window. (y, x) HU -> float.

    Slices above 256 pixels a side are subsampled (every 2nd pixel at 512): the same share, a quarter of the cost.
    Only its ratio between slices of one series is used (``relative_pct``): the share itself depends on the field of
    view.
    """
    hu = _subsample(np.asarray(slice_hu, dtype=np.float32))
    if hu.size == 0:
        return 0.0
    w = Preset.BRAIN.value
    lo, hi = w.center - w.width / 2.0, w.center + w.width / 2.0
    brain = (hu >= lo) & (hu <= hi) & head_mask(hu)
    return float(brain.sum()) / hu.size


def relative_pct(fractions: np.ndarray) -> np.ndarray:
    """Each slice's brain as a percentage (0-100) of the series' fullest slice. (n,) shares -> (n,) percentages;
    all zeros when no slice holds any brain."""
    f = np.asarray(fractions, dtype=np.float64)
    top = float(f.max()) if f.size else 0.0
    return 100.0 * f / top if top > 0 else np.zeros_like(f)


def tissue_threshold_mr(volume: np.ndarray) -> float:
    """A tissue threshold for an MR volume: 10% of its 99th intensity percentile. (z, y, x) -> float."""
    v = np.asarray(volume, dtype=np.float32)
    return 0.1 * float(np.percentile(v, 99)) if v.size else 0.0


def tissue_fraction_mr(slice_px: np.ndarray, threshold: float) -> float:
    """The share (0-1) of the slice's pixels inside the head with signal above ``threshold``."""
    px = _subsample(np.asarray(slice_px, dtype=np.float32))
    if px.size == 0:
        return 0.0
    tissue = (px > threshold) & head_mask(px, threshold)
    return float(tissue.sum()) / px.size


def keep_by_fraction(fractions: np.ndarray, min_pct: float) -> np.ndarray:
    """Keep a slice when it holds brain and its brain is at least ``min_pct`` percent of the fullest slice's."""
    f = np.asarray(fractions, dtype=np.float64)
    return (f > 0) & (relative_pct(f) >= min_pct)


def keep_slices(volume: np.ndarray, modality: str, min_brain_pct: float) -> np.ndarray:
    """Which slices to keep. ``volume``: (z, y, x) HU (CT) or signal (MR) -> bool (z,)."""
    v = np.asarray(volume)
    if modality.upper() == "CT":
        f = np.array([brain_fraction_ct(s) for s in v])
    else:
        t = tissue_threshold_mr(v)
        f = np.array([tissue_fraction_mr(s, t) for s in v])
    return keep_by_fraction(f, min_brain_pct)
