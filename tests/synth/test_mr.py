"""Synthetic SWI and DWI series: determinism, shapes, lesion contrast, region placement."""

from __future__ import annotations

import numpy as np
import pytest

from triage_node.inference.atlas import Region
from triage_node.synth.mr import DwiCase, SwiCase, dwi_volume, make_dwi_case, make_swi_case, swi_volume


@pytest.fixture(scope="module")
def swi() -> SwiCase:
    return make_swi_case(11, n_bleeds=3, source="mni")


@pytest.fixture(scope="module")
def dwi() -> DwiCase:
    return make_dwi_case(12, region="thalamus", side="right")


def test_swi_shape_and_bleeds(swi: SwiCase) -> None:
    assert swi.volume.dtype == np.float32 and swi.volume.ndim == 3
    assert swi.centres.shape == (3, 3) and swi.radii.shape == (3,)
    assert np.all((swi.radii >= 1.0) & (swi.radii <= 5.0))  # 2-10 mm diameter
    brain_level = float(np.median(swi.volume[swi.brain]))
    for c in swi.centres:
        z, y, x = np.round(c).astype(int)
        assert swi.volume[z, y, x] < 0.6 * brain_level  # dark spot at each centre
    sp = np.asarray(swi.spacing)
    d = [np.linalg.norm((a - b) * sp) for i, a in enumerate(swi.centres) for b in swi.centres[i + 1 :]]
    assert min(d) >= 8.0


def test_swi_is_deterministic_per_seed(swi: SwiCase) -> None:
    again = make_swi_case(11, n_bleeds=3, source="mni")
    np.testing.assert_array_equal(again.volume, swi.volume)
    np.testing.assert_array_equal(again.centres, swi.centres)


def test_swi_from_the_real_head_ct() -> None:
    from peers import require

    from triage_node.synth.headct import HeadCTUnavailable, load_head_ct

    try:
        load_head_ct()
    except HeadCTUnavailable as exc:
        require(False, str(exc))
    case = make_swi_case(5, n_bleeds=2, source="ct")
    assert case.source == "ct" and case.centres.shape == (2, 3)


def test_dwi_infarct_is_bright_on_dwi_and_dark_on_adc(dwi: DwiCase) -> None:
    assert dwi.region is Region.THALAMUS and dwi.side == "right"
    assert dwi.mask.any() and dwi.dwi.shape == dwi.adc.shape == dwi.mask.shape
    ring = np.logical_xor(dwi.mask, _dilate(dwi.mask, 3)) & (dwi.adc > 500) & (dwi.adc < 1200)
    assert dwi.dwi[dwi.mask].mean() > 1.4 * dwi.dwi[ring].mean()
    assert np.median(dwi.adc[dwi.mask]) < 650 < np.median(dwi.adc[ring])


def test_dwi_right_side_is_patient_right(dwi: DwiCase) -> None:
    v = dwi_volume(dwi)
    lps = v.voxel_to_patient(np.argwhere(dwi.mask).mean(axis=0))[0]
    head = v.voxel_to_patient(np.argwhere(dwi.dwi > np.percentile(dwi.dwi, 60)).mean(axis=0))[0]
    assert lps[0] < head[0]  # LPS: patient right has the smaller x


def test_dwi_without_infarct_has_an_empty_mask() -> None:
    c = make_dwi_case(13, infarct=False)
    assert c.region is None and c.side is None and not c.mask.any()


def test_volume_wrappers_carry_one_uid_per_slice(swi: SwiCase) -> None:
    v = swi_volume(swi)
    assert len(v.sop_instance_uids) == swi.volume.shape[0] and v.modality == "MR"
    assert v.sop_instance_uids == swi_volume(swi).sop_instance_uids


def _dilate(m: np.ndarray, it: int) -> np.ndarray:
    from scipy import ndimage

    return ndimage.binary_dilation(m, iterations=it)
