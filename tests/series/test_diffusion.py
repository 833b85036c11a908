from __future__ import annotations

from phantom import mr_image
from pydicom.dataset import Dataset

from triage_node.series.diffusion import b0_companion, select_b0, select_dwi
from triage_node.series.geometry import plan


def image(
    z: int, b: float | None, image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY"), direction: str = ""
) -> Dataset:
    ds = Dataset()
    ds.ImagePositionPatient = [0, 0, z * 5.0]
    ds.ImageType = list(image_type)
    if b is not None:
        ds.add_new((0x0018, 0x9087), "FD", b)
    if direction:
        ds.DiffusionDirectionality = direction
    return ds


def test_trace_b1000_images_are_chosen_from_a_mixed_series() -> None:
    series = []
    for z in range(4):
        series.append(image(z, 0.0))
        series.append(image(z, 1000.0, direction="ISOTROPIC"))
        series.append(image(z, 1000.0, direction="DIRECTIONAL"))
        series.append(image(z, 1000.0, direction="DIRECTIONAL"))
        series.append(image(z, None, ("DERIVED", "PRIMARY", "ADC")))
    chosen = select_dwi(series)
    assert len(chosen) == 4
    assert all(ds.DiffusionDirectionality == "ISOTROPIC" for ds in chosen)


def test_highest_b_in_range_wins_and_series_without_b_values_pass_unchanged() -> None:
    series = [image(z, b) for z in range(3) for b in (0.0, 1000.0, 2000.0)]
    assert {float(ds[0x0018, 0x9087].value) for ds in select_dwi(series)} == {1000.0}
    plain = [image(z, None) for z in range(3)]
    assert select_dwi(plain) == plain


def test_b0_images_are_found_one_per_position_and_none_without_b_values() -> None:
    series = [image(z, b, direction=d) for z in range(3) for b, d in ((0.0, ""), (1000.0, "ISOTROPIC"))]
    b0 = select_b0(series)
    assert len(b0) == 3 and {float(ds[0x0018, 0x9087].value) for ds in b0} == {0.0}
    assert select_b0([image(z, None) for z in range(3)]) == []
    assert select_b0([image(z, 1000.0) for z in range(3)]) == []  # no b=0 in the series


def test_b0_companion_follows_the_kept_b1000_slices_in_their_order() -> None:
    series = [mr_image(z, b, 100.0 * (z + 1) + b / 100.0) for z in range(4) for b in (0.0, 1000.0)]
    kept = [s for s in plan(select_dwi(series)) if s.position[2] != 0.0]  # the filter dropped slice 0
    b0 = b0_companion(series, kept)
    assert b0 is not None and b0.shape == (3, 4, 4)
    assert [float(p[0, 0]) for p in b0] == [200.0, 300.0, 400.0]
    assert b0_companion([ds for ds in series if float(ds[0x0018, 0x9087].value) > 0], kept) is None
    partial = [ds for ds in series if not (float(ds[0x0018, 0x9087].value) == 0 and ds.ImagePositionPatient[2] == 10)]
    assert b0_companion(partial, kept) is None  # a kept slice without its b=0 partner
