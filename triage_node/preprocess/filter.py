"""The blank-slice filter of the source RSNA hemorrhage study: drop slices with too little brain.

A slice's brain percentage is the share of all its pixels that lie inside the head and within the brain window
(40/80, i.e. 0-80 HU) for CT; for MR, the share of pixels inside the head above a tissue threshold derived from the
whole volume. CT slices under ``filter.min_brain_pct`` (default 20) are dropped before inference; MR slices under
``filter.min_tissue_pct_mr`` (default 2: only the nearly empty ends, since the MR models read the volume in 3-D).
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


def brain_pct_ct(slice_hu: np.ndarray) -> float:
    """Percentage (0-100) of the slice's pixels inside the head and within the brain window. (y, x) HU -> float.

    Slices above 256 pixels a side are subsampled (every 2nd pixel at 512): the same percentage, a quarter of the cost.
    """
    hu = _subsample(np.asarray(slice_hu, dtype=np.float32))
    if hu.size == 0:
        return 0.0
    w = Preset.BRAIN.value
    lo, hi = w.center - w.width / 2.0, w.center + w.width / 2.0
    brain = (hu >= lo) & (hu <= hi) & head_mask(hu)
    return 100.0 * float(brain.sum()) / hu.size


def tissue_threshold_mr(volume: np.ndarray) -> float:
    """A tissue threshold for an MR volume: 10% of its 99th intensity percentile. (z, y, x) -> float."""
    v = np.asarray(volume, dtype=np.float32)
    return 0.1 * float(np.percentile(v, 99)) if v.size else 0.0


def brain_pct_mr(slice_px: np.ndarray, threshold: float) -> float:
    """Percentage (0-100) of the slice's pixels inside the head with signal above ``threshold``."""
    px = _subsample(np.asarray(slice_px, dtype=np.float32))
    if px.size == 0:
        return 0.0
    tissue = (px > threshold) & head_mask(px, threshold)
    return 100.0 * float(tissue.sum()) / px.size


def keep_slices(volume: np.ndarray, modality: str, min_brain_pct: float) -> np.ndarray:
    """Which slices to keep. ``volume``: (z, y, x) HU (CT) or signal (MR) -> bool (z,)."""
    v = np.asarray(volume)
    if modality.upper() == "CT":
        pct = np.array([brain_pct_ct(s) for s in v])
    else:
        t = tissue_threshold_mr(v)
        pct = np.array([brain_pct_mr(s, t) for s in v])
    return pct >= min_brain_pct
