"""Synthetic SWI and DWI series: determinism, shapes, lesion contrast, region placement."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from triage_lab.synth.mr import DwiCase, SwiCase, dwi_volume, make_dwi_case, make_swi_case, swi_volume
from triage_node.inference.atlas import Region


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

    from triage_lab.synth.headct import HeadCTUnavailable, load_head_ct

    try:
        load_head_ct()
    except HeadCTUnavailable as exc:
        require(False, str(exc))
    case = make_swi_case(5, n_bleeds=2, source="ct")
    assert case.source == "ct" and case.centres.shape == (2, 3)


def test_swi_microbleeds_are_2_to_10_mm_and_bloom(swi: SwiCase) -> None:
    """The dark spot of each bleed is larger than its nominal sphere (susceptibility blooming)."""
    other = make_swi_case(22, n_bleeds=4, source="mni")
    for case in (swi, other):
        assert np.all((2 * case.radii >= 2.0) & (2 * case.radii <= 10.0))
        sp = np.asarray(case.spacing)
        zz, yy, xx = np.indices(case.volume.shape, sparse=True)
        for centre, radius in zip(case.centres, case.radii, strict=True):
            d = np.sqrt(
                ((zz - centre[0]) * sp[0]) ** 2 + ((yy - centre[1]) * sp[1]) ** 2 + ((xx - centre[2]) * sp[2]) ** 2
            )
            background = np.median(case.volume[(d > 1.6 * radius + 4) & (d < 1.6 * radius + 10) & case.brain])
            dark, _ = ndimage.label((case.volume < 0.7 * background) & (d < 2.5 * radius + 4))
            spot = dark == dark[tuple(np.round(centre).astype(int))]
            dark_radius = (3 * spot.sum() * np.prod(sp) / (4 * np.pi)) ** (1 / 3)
            assert radius < dark_radius < 2.5 * radius


def _bright_on_dwi_dark_on_adc(dwi: DwiCase) -> None:
    assert dwi.mask.any() and dwi.dwi.shape == dwi.adc.shape == dwi.mask.shape
    ring = np.logical_xor(dwi.mask, _dilate(dwi.mask, 3)) & (dwi.adc > 500) & (dwi.adc < 1200)
    assert dwi.dwi[dwi.mask].mean() > 1.4 * dwi.dwi[ring].mean()
    assert np.median(dwi.adc[dwi.mask]) < 650 < np.median(dwi.adc[ring])


def _on_patient_right(dwi: DwiCase) -> bool:
    v = dwi_volume(dwi)
    lps = v.voxel_to_patient(np.argwhere(dwi.mask).mean(axis=0))[0]
    head = v.voxel_to_patient(np.argwhere(dwi.dwi > np.percentile(dwi.dwi, 60)).mean(axis=0))[0]
    return bool(lps[0] < head[0])  # LPS: patient right has the smaller x


def test_dwi_infarct_is_bright_on_dwi_and_dark_on_adc(dwi: DwiCase) -> None:
    assert dwi.region is Region.THALAMUS and dwi.side == "right" and dwi.source == "mni"
    _bright_on_dwi_dark_on_adc(dwi)
    other = make_dwi_case(14, region="occipital lobe", side="left")
    _bright_on_dwi_dark_on_adc(other)
    assert not _on_patient_right(other)


def test_dwi_right_side_is_patient_right(dwi: DwiCase) -> None:
    assert _on_patient_right(dwi)


def test_dwi_from_the_real_head_ct() -> None:
    from peers import require

    from triage_lab.synth.headct import HeadCTUnavailable, load_head_ct

    try:
        load_head_ct()
    except HeadCTUnavailable as exc:
        require(False, str(exc))
    case = make_dwi_case(2, region="frontal lobe", side="right", source="seeded")  # seed 2 draws the CT head
    assert case.source == "ct" and case.region is Region.FRONTAL
    _bright_on_dwi_dark_on_adc(case)
    assert _on_patient_right(case)
    deep = make_dwi_case(1, region="thalamus", side="left", source="ct")
    _bright_on_dwi_dark_on_adc(deep)
    assert not _on_patient_right(deep)


def test_dwi_source_option_keeps_the_default_cases() -> None:
    plain = make_dwi_case(0, infarct=False)
    seeded = make_dwi_case(0, infarct=False, source="seeded")  # seed 0 draws the MNI head: the very same case
    assert plain.source == seeded.source == "mni"
    np.testing.assert_array_equal(plain.dwi, seeded.dwi)
    with pytest.raises(ValueError, match="source must be one of"):
        make_dwi_case(0, source="t1")


def test_dwi_without_infarct_has_an_empty_mask() -> None:
    c = make_dwi_case(13, infarct=False)
    assert c.region is None and c.side is None and not c.mask.any()


def test_volume_wrappers_carry_one_uid_per_slice(swi: SwiCase) -> None:
    v = swi_volume(swi)
    assert len(v.sop_instance_uids) == swi.volume.shape[0] and v.modality == "MR"
    assert v.sop_instance_uids == swi_volume(swi).sop_instance_uids


def _dilate(m: np.ndarray, it: int) -> np.ndarray:
    return ndimage.binary_dilation(m, iterations=it)


def test_randomised_dwi_draws_small_infarcts_as_often_as_40_percent() -> None:
    """Lacunes and small embolic infarcts (from 2.5 mm radius) are drawn in ~40% of cases, in every region."""
    import numpy as np

    from triage_lab.synth.mr import _RADIUS
    from triage_lab.synth.mr_randomise import infarct_radius
    from triage_node.inference.atlas import Region

    rng = np.random.default_rng(0)
    for region in Region:
        draws = [infarct_radius(rng, region) for _ in range(400)]
        small = [d for d in draws if d == (2.5, _RADIUS[region][0])]
        assert 0.3 < len(small) / len(draws) < 0.5
        assert all(d in (small[0], _RADIUS[region]) for d in draws)
