"""Synthetic CT cases: determinism, negatives, and each subtype's mask, place and density."""

from __future__ import annotations

import numpy as np
import pytest

from triage_lab.synth.cases import CLASSES, make_ct_case
from triage_lab.synth.hemorrhage import SUBTYPES
from triage_lab.synth.tissue import Tissue


def test_negative_case_has_no_masks_or_labels() -> None:
    case = make_ct_case(3, (), source="mni", n_slices=16)
    assert case.hu.dtype == np.int16
    assert case.hu.shape == (16, 256, 256)
    assert case.masks == {}
    assert case.labels.shape == (16, len(CLASSES))
    assert not case.labels.any()
    assert not case.positive


def test_same_seed_same_case() -> None:
    a = make_ct_case(11, ("subdural",), source="mni", n_slices=12)
    b = make_ct_case(11, ("subdural",), source="mni", n_slices=12)
    assert np.array_equal(a.hu, b.hu)
    assert np.array_equal(a.masks["subdural"], b.masks["subdural"])
    c = make_ct_case(12, ("subdural",), source="mni", n_slices=12)
    assert not np.array_equal(a.hu, c.hu)


@pytest.mark.parametrize("profile", ["legacy", "randomised"])
@pytest.mark.parametrize("subtype", SUBTYPES)
def test_each_subtype_is_intracranial_blood(subtype: str, profile: str) -> None:
    case = make_ct_case(40 + SUBTYPES.index(subtype), (subtype,), source="mni", n_slices=16, profile=profile)
    mask = case.masks[subtype]
    assert mask.any()
    intracranial = np.isin(case.tissue, [Tissue.BRAIN, Tissue.CSF, Tissue.VENTRICLE])
    # Legacy masks are drawn on the output grid; randomised ones are the slab average of the source-space lesion, and
    # the tissue label is the slab centre's, so a thin rim may sit over the table's label (partial volume).
    outside = (mask & ~intracranial).sum() / mask.sum()
    assert outside == 0 if profile == "legacy" else outside <= 0.1
    # Away from the table: a slab-averaged rim next to the skull holds bone by partial volume.
    from scipy import ndimage

    away = ndimage.binary_erosion(intracranial, iterations=2) if profile == "randomised" else intracranial
    core = mask & (case.hu > -100) & away
    # acute blood 46-92 HU plus noise, calibration offset and partial volume
    assert 40 <= float(np.median(case.hu[core])) <= 105
    col = CLASSES.index(subtype)
    assert case.labels[:, col].any()
    assert np.array_equal(case.labels[:, 0], case.labels[:, col])


def test_unknown_subtype_is_rejected() -> None:
    with pytest.raises(ValueError, match="subtypes must be drawn from"):
        make_ct_case(0, ("chronic",), source="mni")


def test_invesalius_source() -> None:
    from peers import require

    from triage_lab.synth.headct import DEFAULT_PATH

    require(DEFAULT_PATH.exists(), f"{DEFAULT_PATH} missing (apt-get install invesalius-examples)")
    case = make_ct_case(5, ("epidural", "intraventricular"), source="invesalius", n_slices=20)
    assert set(case.masks) == {"epidural", "intraventricular"}
    assert case.labels[:, 0].any()


def test_shifted_acquisitions_fall_outside_every_training_range() -> None:
    from triage_lab.synth.acquisition import draw_acquisition

    train = [draw_acquisition(np.random.default_rng(s)) for s in range(300)]
    shifted = [draw_acquisition(np.random.default_rng(s), shifted=True) for s in range(300)]

    def span(accs: list, name: str) -> tuple[float, float]:  # type: ignore[type-arg]
        vals = [getattr(a, name) for a in accs]
        return min(vals), max(vals)

    for name in ("yaw", "pitch", "roll", "head_scale", "slice_mm"):
        lo, hi = span(train, name)
        assert all(not lo <= getattr(a, name) <= hi for a in shifted), name
    for name in ("pixel_mm", "warp_mm", "noise_hu", "blur_px"):  # drawn beyond the training maximum
        assert span(shifted, name)[0] >= span(train, name)[1] - 1e-9, name


def test_test_shifted_split_uses_shifted_settings_and_storage(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from triage_lab.training.synthdata import SPLIT_SEED_BASE, is_shifted, split_seeds

    seeds = split_seeds("test_shifted", 3)
    assert seeds[0] == SPLIT_SEED_BASE["test_shifted"] and all(is_shifted(s) for s in seeds)
    assert not any(is_shifted(s) for s in split_seeds("test", 3) + split_seeds("val", 3) + split_seeds("train", 3))
    case = make_ct_case(seeds[0], (), source="mni", n_slices=8, shifted=True, vary_storage=True, profile="legacy")
    assert case.storage is not None and case.acquisition.noise_hu >= 7.0


def test_randomised_cases_vary_every_acquisition_parameter() -> None:
    from triage_lab.synth.acquisition import draw_randomised

    acqs = [draw_randomised(np.random.default_rng(s)) for s in range(200)]
    thick = [a.thickness_mm for a in acqs]
    assert min(thick) < 0.9 and max(thick) > 4.5  # 0.6-5 mm slabs
    assert {a.kernel for a in acqs} == {"smooth", "standard", "sharp"}
    assert {a.matrix for a in acqs} == {256, 512}
    offsets = [a.hu_offset for a in acqs]
    assert min(offsets) < -8 and max(offsets) > 8
    assert any(a.motion_px > 0 for a in acqs) and any(a.streaks > 0 for a in acqs)
    assert any(a.fossa_band_hu > 0 for a in acqs) and any(a.atrophy_mm > 0 for a in acqs)
    assert max(abs(a.pitch) for a in acqs) > 18  # gantry tilt beyond the legacy +-8


def test_randomised_normal_heads_carry_mimics_and_are_at_least_40_percent() -> None:
    from triage_lab.synth.cases import P_NEGATIVE, draw_subtypes

    assert P_NEGATIVE["randomised"] >= 0.45
    draws = [draw_subtypes(np.random.default_rng([s, 0x1C5]), P_NEGATIVE["randomised"]) for s in range(2000)]
    assert sum(1 for d in draws if not d) / len(draws) >= 0.42
    case = make_ct_case(2, (), source="mni", n_slices=10)
    assert not case.masks and not case.labels.any()
    assert case.mimics  # this seed draws calcification / sinus mimics into a normal head
    assert case.hu.max() > 90  # a mimic brighter than any blood, in a normal head


def test_the_real_head_is_axial() -> None:
    from peers import require

    from triage_lab.synth.headct import HeadCTUnavailable, axial_head_ct

    try:
        ct = axial_head_ct()
    except HeadCTUnavailable as exc:
        require(False, str(exc))
    # Axial: the top slices (vertex) hold a small ring of skull around brain, the lowest the skull base; the head is
    # taller (z) than the 162 mm the stored coronal stack covers front to back.
    z_mm = ct.hu.shape[0] * ct.spacing[0]
    assert z_mm > 200
    area = [(s > -300).sum() for s in ct.hu]
    top = max(i for i, a in enumerate(area) if a > 500)
    assert area[top - 5] < max(area) * 0.5  # the vertex narrows
