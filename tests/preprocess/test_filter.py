from __future__ import annotations

import numpy as np
from scipy import ndimage

from triage_node.preprocess.filter import (
    brain_fraction_ct,
    head_mask,
    keep_by_fraction,
    keep_slices,
    relative_pct,
    tissue_fraction_mr,
)


def test_air_only_slice_has_no_brain() -> None:
    assert brain_fraction_ct(np.full((64, 64), -1000.0)) == 0.0


def test_skull_only_slice_has_no_brain() -> None:
    yy, xx = np.mgrid[-32:32, -32:32]
    ring = (np.hypot(yy, xx) < 28) & (np.hypot(yy, xx) > 24)
    hu = np.where(ring, 1200.0, -1000.0)
    assert brain_fraction_ct(hu) == 0.0


def test_mid_brain_slice_of_the_real_head_ct_is_kept_and_the_vertex_is_dropped(head_ct) -> None:  # type: ignore[no-untyped-def]
    keep = keep_slices(head_ct.hu, "CT", 10.0)
    pct = relative_pct(np.array([brain_fraction_ct(s) for s in head_ct.hu]))
    assert pct[60] > 50 and keep[60]
    assert pct[105] < 5 and not keep[105]
    assert 40 < keep.sum() < 105


def _zoom_out(hu: np.ndarray, factor: float) -> np.ndarray:
    """The same slices seen with a field of view ``factor`` times larger (air around, same matrix)."""
    small = ndimage.zoom(hu, (1, 1 / factor, 1 / factor), order=1)
    out = np.full(hu.shape, -1000.0, dtype=np.float32)
    y0 = (hu.shape[1] - small.shape[1]) // 2
    x0 = (hu.shape[2] - small.shape[2]) // 2
    out[:, y0 : y0 + small.shape[1], x0 : x0 + small.shape[2]] = small
    return out


def test_the_kept_slices_do_not_depend_on_the_field_of_view(head_ct) -> None:  # type: ignore[no-untyped-def]
    """The source study's share of all pixels dropped most of a head seen at a wide field of view; relative to the
    fullest slice the same slices are kept however much air surrounds the head."""
    hu = head_ct.hu[::4].astype(np.float32)
    near = keep_slices(hu, "CT", 10.0)
    far = keep_slices(_zoom_out(hu, 1.6), "CT", 10.0)
    assert near.sum() >= 0.4 * len(hu)
    assert int((near != far).sum()) <= 1  # at most a slice at the very edge of the threshold


def test_a_blank_series_keeps_nothing() -> None:
    assert not keep_by_fraction(np.zeros(5), 10.0).any()
    assert not keep_slices(np.full((3, 32, 32), -1000.0), "CT", 0.0).any()


def test_a_slice_is_kept_relative_to_the_fullest_slice() -> None:
    assert list(keep_by_fraction(np.array([0.0, 0.01, 0.05, 0.2, 0.3]), 10.0)) == [False, False, True, True, True]


def test_fluid_outside_the_head_does_not_count() -> None:
    hu = np.full((64, 64), -1000.0)
    hu[10:30, 10:30] = 40  # head: brain-like tissue
    hu[50:60, 50:60] = 40  # a detached blob (e.g. a bag of saline on the table)
    assert head_mask(hu)[50:60, 50:60].sum() == 0
    assert brain_fraction_ct(hu) == 400 / 4096


def test_mr_filter_uses_a_volume_threshold() -> None:
    vol = np.zeros((3, 32, 32), dtype=np.float32)
    vol[1, 4:28, 4:28] = 500.0
    vol[2, 14:18, 14:18] = 500.0
    assert tissue_fraction_mr(vol[1], 50.0) > 0.5
    assert list(keep_slices(vol, "MR", 20.0)) == [False, True, False]
