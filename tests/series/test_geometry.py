from __future__ import annotations

import numpy as np
import pytest
from pydicom import dcmread

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head
from triage_node.series.geometry import GeometryError, build_volume, pixels, plan


@pytest.fixture
def series(tmp_path):  # type: ignore[no-untyped-def]
    hu, spacing = phantom_head(6, 32)
    return hu, spacing, [dcmread(p) for p in write_series(tmp_path, hu, spacing, seed=3, unsigned=True)]


def test_slices_are_sorted_along_the_normal_whatever_the_arrival_order(series) -> None:  # type: ignore[no-untyped-def]
    hu, spacing, dss = series
    shuffled = [dss[i] for i in (3, 0, 5, 1, 4, 2)]
    slices = plan(shuffled)
    vol = build_volume(slices, np.stack([pixels(s) for s in slices]))
    np.testing.assert_array_equal(vol.pixels, hu)  # unsigned storage + intercept -1024 gives HU back
    assert vol.spacing == pytest.approx(spacing)
    assert vol.sop_instance_uids == tuple(d.SOPInstanceUID for d in dss)
    assert vol.voxel_to_patient(np.array([[1, 0, 0]]))[0][2] == pytest.approx(spacing[0])


def test_keep_mask_selects_slices_and_their_uids(series) -> None:  # type: ignore[no-untyped-def]
    _, _, dss = series
    slices = plan(dss)
    keep = np.array([False, True, True, True, False, False])
    vol = build_volume(slices, np.stack([pixels(s) for s in slices]), keep)
    assert vol.pixels.shape[0] == 3
    assert vol.sop_instance_uids == tuple(dss[i].SOPInstanceUID for i in (1, 2, 3))


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: setattr(d[1], "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]), "mixed image orientations"),
        (lambda d: setattr(d[2], "ImagePositionPatient", d[1].ImagePositionPatient), "duplicate slice positions"),
        (lambda d: setattr(d[0], "PixelSpacing", [-1, 1]), "PixelSpacing must be positive"),
        (lambda d: delattr(d[0], "ImagePositionPatient"), "lacks ImagePositionPatient"),
        (lambda d: setattr(d[0], "SamplesPerPixel", 3), "SamplesPerPixel 3"),
        (lambda d: setattr(d[0], "BitsAllocated", 1), "BitsAllocated 1"),
    ],
)
def test_inconsistent_geometry_is_rejected_with_a_reason(series, mutate, reason) -> None:  # type: ignore[no-untyped-def]
    _, _, dss = series
    mutate(dss)
    with pytest.raises(GeometryError, match=reason):
        plan(dss)


def test_mixed_sizes_and_too_few_slices_are_rejected(tmp_path, series) -> None:  # type: ignore[no-untyped-def]
    _, _, dss = series
    hu, spacing = phantom_head(3, 16)
    other = [dcmread(p) for p in write_series(tmp_path / "o", hu, spacing, seed=4)]
    with pytest.raises(GeometryError, match="inconsistent image sizes"):
        plan(dss[:3] + other[:1])
    with pytest.raises(GeometryError, match="at least 3"):
        plan(dss[:1])


def test_truncated_pixel_data_fails_at_decode_with_a_reason(series) -> None:  # type: ignore[no-untyped-def]
    _, _, dss = series
    dss[0].PixelData = dss[0].PixelData[:10]
    with pytest.raises(GeometryError, match="pixel data cannot be decoded"):
        pixels(plan(dss)[0])
