"""CT pixel storage of the synthetic writer: every kind decodes, through the daemon's own path, to the HU written."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from triage_lab.synth.cases import make_ct_case
from triage_lab.synth.dicom import write_series
from triage_lab.synth.storage import STORAGES, Storage, draw_storage, round_trip
from triage_node.series.geometry import pixels, plan

SPACING = (5.0, 0.5, 0.5)


def hu_volume() -> np.ndarray:
    """(3, 4, 6) HU from far below air to far above bone, with fractional values; float32."""
    values = np.array(
        [-40000, -3000, -2048.6, -1024, -1000.25, -0.4, 0, 12.5, 40.3, 85.7, 1000.75, 3071,
         3072, 5000, 6142, 6200, 16000.5, 31743.5, 32767, 40000, 65535, -32768, 7.75, 60.1],
        dtype=np.float32,
    )  # fmt: skip
    return np.stack([np.roll(values, k).reshape(4, 6) for k in range(3)])


def decode_like_the_daemon(paths: list[Path]) -> tuple[np.ndarray, list]:  # type: ignore[type-arg]
    """Headers read without pixels, slices planned and decoded one by one, as pipeline._process does."""
    headers = [dcmread(p, stop_before_pixels=True) for p in paths]
    slices = plan(headers)
    return np.stack([pixels(s) for s in slices]), headers


@pytest.mark.parametrize("name", list(STORAGES))
def test_every_storage_gives_back_the_written_hu_within_half_a_step(name: str, tmp_path: Path) -> None:
    storage = STORAGES[name]
    hu = hu_volume()
    decoded, headers = decode_like_the_daemon(write_series(tmp_path, hu, SPACING, seed=5, storage=storage))
    lo, hi = storage.hu_range
    expected = np.clip(hu, lo, hi)
    np.testing.assert_allclose(decoded, expected, rtol=0, atol=storage.slope / 2 + 1e-3)
    # out of range is clipped to the end of the range, never wrapped to the other end
    assert decoded.min() == pytest.approx(lo) and decoded.max() == pytest.approx(hi)
    assert decoded[hu >= hi].min() == pytest.approx(hi) and decoded[hu <= lo].max() == pytest.approx(lo)
    # the same quantisation as an augmentation of an HU array
    np.testing.assert_allclose(round_trip(hu, storage), decoded, rtol=0, atol=1e-3)
    for h in headers:
        assert h.PixelRepresentation == (1 if storage.signed else 0)
        assert (h.BitsAllocated, h.BitsStored, h.HighBit) == (16, storage.bits_stored, storage.bits_stored - 1)
        assert (float(h.RescaleSlope), float(h.RescaleIntercept)) == (storage.slope, storage.intercept)
    raw = np.stack([dcmread(p).pixel_array for p in sorted(tmp_path.glob("*.dcm"))])
    assert storage.raw_range[0] <= raw.min() and raw.max() <= storage.raw_range[1]


def test_kinds_cover_signed_unsigned_and_scaled_storage() -> None:
    kinds = {(s.signed, s.slope, s.intercept) for s in STORAGES.values()}
    assert (True, 1.0, 0.0) in kinds and (False, 1.0, -1024.0) in kinds
    assert {s.slope for s in STORAGES.values()} >= {0.5, 1.0, 2.0}
    for s in STORAGES.values():  # every kind holds the full CT range a head scan produces
        assert s.hu_range[0] <= -1024 and s.hu_range[1] >= 3071


def test_seeded_storage_is_drawn_per_case_from_the_seed(tmp_path: Path) -> None:
    drawn = [draw_storage(seed) for seed in range(200)]
    assert drawn == [draw_storage(seed) for seed in range(200)]
    assert {s.name for s in drawn} == set(STORAGES)
    for seed in (1, 2, 3):
        (path, *_) = write_series(tmp_path / str(seed), hu_volume(), SPACING, seed=seed, storage="seeded")
        ds = dcmread(path, stop_before_pixels=True)
        s = draw_storage(seed)
        assert (ds.PixelRepresentation, ds.BitsStored, float(ds.RescaleSlope)) == (
            int(s.signed),
            s.bits_stored,
            s.slope,
        )


def test_default_storage_is_unchanged(tmp_path: Path) -> None:
    hu = hu_volume()
    signed = dcmread(write_series(tmp_path / "s", hu, SPACING, seed=5)[0])
    unsigned = dcmread(write_series(tmp_path / "u", hu, SPACING, seed=5, unsigned=True)[0])
    assert (signed.PixelRepresentation, signed.RescaleIntercept, signed.RescaleSlope) == (1, 0, 1)
    assert (unsigned.PixelRepresentation, unsigned.RescaleIntercept, unsigned.RescaleSlope) == (0, -1024, 1)
    assert signed.BitsStored == unsigned.BitsStored == 16


def test_storage_arguments_are_checked(tmp_path: Path) -> None:
    hu = hu_volume()
    with pytest.raises(ValueError, match="storage applies to CT only, got modality 'MR'"):
        write_series(tmp_path, hu, SPACING, seed=1, modality="MR", storage="signed")
    with pytest.raises(ValueError, match="storage must be one of"):
        write_series(tmp_path, hu, SPACING, seed=1, storage="float")
    with pytest.raises(ValueError, match="either unsigned=True or storage"):
        write_series(tmp_path, hu, SPACING, seed=1, unsigned=True, storage="unsigned12")
    with pytest.raises(ValueError, match="bits_stored must be between 8 and 16, got 20"):
        Storage("wide", signed=True, bits_stored=20, slope=1.0, intercept=0.0)
    with pytest.raises(ValueError, match="slope must be positive"):
        Storage("zero", signed=True, bits_stored=16, slope=0.0, intercept=0.0)


def test_vary_storage_is_opt_in_and_changes_only_the_quantisation() -> None:
    seed = next(s for s in range(100) if draw_storage(s).name == "double")
    plain = make_ct_case(seed, (), source="mni", n_slices=6, profile="legacy")
    varied = make_ct_case(seed, (), source="mni", n_slices=6, vary_storage=True, profile="legacy")
    assert plain.storage is None and varied.storage == STORAGES["double"]
    assert varied.hu.dtype == np.int16 and not np.array_equal(plain.hu, varied.hu)
    expected = np.clip(np.rint(round_trip(plain.hu, STORAGES["double"])), -1024, 3071).astype(np.int16)
    np.testing.assert_array_equal(varied.hu, expected)
    assert (varied.hu % 2 == 0).all()  # slope 2, intercept -2048: even HU only
    assert np.abs(varied.hu.astype(np.int32) - plain.hu).max() <= 1
