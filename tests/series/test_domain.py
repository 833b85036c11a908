"""The training-domain check: a series outside what a model was trained on is "not assessed", with the reason."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from triage_node.preprocess.volume import Volume
from triage_node.series.domain import age_years, contrast_enhanced, head_width_mm, outside_domain

DOMAIN = {"max_slice_thickness_mm": 5.0, "contrast": False, "min_head_width_mm": 125, "min_age_years": 18}


def _volume(width_mm: float, spacing: tuple[float, float, float] = (5.0, 0.7, 0.7)) -> Volume:
    n = 256
    yy, xx = np.mgrid[:n, :n]
    r = np.hypot((yy - n / 2) * spacing[1] / (width_mm * 0.45), (xx - n / 2) * spacing[2] / (width_mm / 2))
    plane = np.where(r < 1.0, 35.0, -1000.0).astype(np.float32)
    px = np.repeat(plane[None], 6, axis=0)
    px[:, 248:252, 4:252] = 200.0  # the table: wide, but not part of the head
    return Volume(px, spacing, (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), tuple(f"1.2.{i}" for i in range(6)),
                  "CT")


def _ds(**kw: object) -> Dataset:
    ds = Dataset()
    ds.SliceThickness = kw.pop("thickness", 5.0)
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def test_an_adult_non_contrast_5mm_head_is_inside() -> None:
    assert outside_domain(DOMAIN, [_ds(PatientAge="054Y", SeriesDescription="Head non-contrast")], _volume(150)) is None


@pytest.mark.parametrize("thickness", [5.0, 5.0156, 5.049])
def test_a_5mm_series_with_a_computed_thickness_is_still_inside(thickness: float) -> None:
    """Headers of reformatted or synthesised 5 mm series say 5.0156; the limit is read at the 0.1 mm scanners show."""
    assert outside_domain(DOMAIN, [_ds(thickness=thickness)], _volume(150)) is None


def test_slices_just_above_the_limit_are_not_assessed() -> None:
    reason = outside_domain(DOMAIN, [_ds(thickness=5.1)], _volume(150))
    assert reason == "slice thickness 5.1 mm is above the 5 mm the model was trained on"


def test_thick_slices_are_not_assessed() -> None:
    reason = outside_domain(DOMAIN, [_ds(thickness=7.0)], _volume(150))
    assert reason == "slice thickness 7.0 mm is above the 5 mm the model was trained on"


@pytest.mark.parametrize(
    ("attrs", "expected"),
    [
        ({"ContrastBolusAgent": "Iomeron 350"}, True),
        ({"SeriesDescription": "CT HEAD C+"}, True),
        ({"SeriesDescription": "Kopf mit KM"}, True),
        ({"SeriesDescription": "HEAD NON-CONTRAST"}, False),
        ({"SeriesDescription": "Head w/o contrast"}, False),
        ({"ContrastBolusAgent": "NONE", "SeriesDescription": "Routine head"}, False),
        ({}, False),
    ],
)
def test_contrast_is_read_from_the_agent_or_the_description(attrs: dict[str, str], expected: bool) -> None:
    assert contrast_enhanced(_ds(**attrs)) is expected


def test_contrast_enhanced_series_are_not_assessed() -> None:
    reason = outside_domain(DOMAIN, [_ds(ContrastBolusAgent="Iomeron 350")], _volume(150))
    assert reason is not None and reason.startswith("contrast-enhanced")


def test_a_small_head_is_not_assessed_and_the_table_does_not_count() -> None:
    assert 95 <= head_width_mm(_volume(100)) <= 105
    reason = outside_domain(DOMAIN, [_ds()], _volume(100))
    assert reason is not None and "paediatric head size" in reason


def test_a_child_by_age_is_not_assessed() -> None:
    assert age_years(_ds(PatientAge="006Y")) == 6
    assert age_years(_ds(PatientAge="018M")) == 1.5
    assert age_years(_ds(PatientAge="bad")) is None
    reason = outside_domain(DOMAIN, [_ds(PatientAge="006Y")], _volume(150))
    assert reason is not None and reason.startswith("paediatric study")


def test_no_domain_means_no_check() -> None:
    assert outside_domain({}, [_ds(thickness=10.0)], _volume(50)) is None
