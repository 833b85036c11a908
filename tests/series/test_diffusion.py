from __future__ import annotations

from pydicom.dataset import Dataset

from triage_node.series.diffusion import select_dwi


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
