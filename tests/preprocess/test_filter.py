from __future__ import annotations

import numpy as np

from triage_node.preprocess.filter import brain_pct_ct, brain_pct_mr, head_mask, keep_slices


def test_air_only_slice_has_no_brain() -> None:
    assert brain_pct_ct(np.full((64, 64), -1000.0)) == 0.0


def test_skull_only_slice_has_no_brain() -> None:
    yy, xx = np.mgrid[-32:32, -32:32]
    ring = (np.hypot(yy, xx) < 28) & (np.hypot(yy, xx) > 24)
    hu = np.where(ring, 1200.0, -1000.0)
    assert brain_pct_ct(hu) == 0.0


def test_mid_brain_slice_of_the_real_head_ct_is_kept_and_the_vertex_is_dropped(head_ct) -> None:  # type: ignore[no-untyped-def]
    mid, top = head_ct.hu[60], head_ct.hu[105]
    assert brain_pct_ct(mid) > 20
    assert brain_pct_ct(top) < 5
    keep = keep_slices(head_ct.hu, "CT", 20.0)
    assert keep[60] and not keep[105]
    assert 30 < keep.sum() < 90


def test_fluid_outside_the_head_does_not_count() -> None:
    hu = np.full((64, 64), -1000.0)
    hu[10:30, 10:30] = 40  # head: brain-like tissue
    hu[50:60, 50:60] = 40  # a detached blob (e.g. a bag of saline on the table)
    assert head_mask(hu)[50:60, 50:60].sum() == 0
    assert brain_pct_ct(hu) == 100.0 * 400 / 4096


def test_mr_filter_uses_a_volume_threshold() -> None:
    vol = np.zeros((3, 32, 32), dtype=np.float32)
    vol[1, 4:28, 4:28] = 500.0
    vol[2, 14:18, 14:18] = 500.0
    assert brain_pct_mr(vol[1], 50.0) > 50
    assert list(keep_slices(vol, "MR", 20.0)) == [False, True, False]
