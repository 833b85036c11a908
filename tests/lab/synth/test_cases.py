"""Synthetic CT cases: determinism, negatives, and each subtype's mask, place and density."""

from __future__ import annotations

import numpy as np
import pytest

from triage_lab.synth.anatomy import Tissue
from triage_lab.synth.cases import CLASSES, make_ct_case
from triage_lab.synth.hemorrhage import SUBTYPES


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


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_each_subtype_is_intracranial_blood(subtype: str) -> None:
    case = make_ct_case(40 + SUBTYPES.index(subtype), (subtype,), source="mni", n_slices=16)
    mask = case.masks[subtype]
    assert mask.any()
    intracranial = np.isin(case.tissue, [Tissue.BRAIN, Tissue.CSF, Tissue.VENTRICLE])
    assert (mask & ~intracranial).sum() == 0
    core = mask & (case.hu > -100)
    assert 45 <= float(np.median(case.hu[core])) <= 95  # acute blood 55-85 HU plus noise and partial volume
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
    from triage_lab.synth.augment import draw_acquisition

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
    case = make_ct_case(seeds[0], (), source="mni", n_slices=8, shifted=True, vary_storage=True)
    assert case.storage is not None and case.acquisition.noise_hu >= 7.0
