"""Per-subtype shape, place and density of the synthetic hemorrhages, and the acquisition variation between seeds.

Each case holds one lesion of every subtype (their masks are separate, so one case per seed tests all five), on the
MNI pseudo-CT and on the real head CT. Slices are few and thick (``n_slices=20``) to keep the module fast; the
shape measures are taken in-plane or in mm so they do not depend on the slice count.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage
from skimage.morphology import convex_hull_image

from triage_lab.synth.acquisition import Acquisition, acquire, draw_acquisition, resample_head
from triage_lab.synth.anatomy import mni_head
from triage_lab.synth.cases import CTCase, make_ct_case
from triage_lab.synth.hemorrhage import SUBTYPES, Canvas, draw_lesion, paint_blood
from triage_lab.synth.tissue import Tissue

CASES = [("mni", 100), ("mni", 101), ("mni", 102), ("invesalius", 100), ("invesalius", 101)]
IN_PLANE = np.zeros((3, 3, 3), bool)
IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


@pytest.fixture(scope="module")
def cases() -> dict[tuple[str, int], tuple[CTCase, Canvas]]:
    out = {}
    for source, seed in CASES:
        if source == "invesalius":
            from peers import require

            from triage_lab.synth.headct import DEFAULT_PATH

            require(DEFAULT_PATH.exists(), f"{DEFAULT_PATH} missing (apt-get install invesalius-examples)")
        case = make_ct_case(seed, SUBTYPES, source=source, n_slices=20, profile="legacy")
        out[(source, seed)] = (case, Canvas.from_labels(case.tissue, case.spacing))
    return out


def touches_bone(mask: np.ndarray, tissue: np.ndarray) -> bool:
    return bool((ndimage.binary_dilation(mask, IN_PLANE, iterations=2) & (tissue == Tissue.BONE)).any())


def largest_slice(mask: np.ndarray) -> np.ndarray:
    return mask[int(np.argmax(mask.sum(axis=(1, 2))))]


def solidity(plane: np.ndarray) -> float:
    """Area over convex-hull area of a 2-D mask: 1 for a convex shape, low for a crescent or scattered lines."""
    return float(plane.sum() / convex_hull_image(plane).sum())


def extent_mm(plane: np.ndarray, spacing: tuple[float, float, float]) -> float:
    pts = np.argwhere(plane) * np.asarray(spacing[1:])
    return float(np.ptp(pts, axis=0).max())


def components(mask: np.ndarray) -> tuple[int, float]:
    """(number of 3-D components, fraction of voxels in the largest)."""
    lab, n = ndimage.label(mask)
    return n, float(np.bincount(lab.ravel())[1:].max() / mask.sum())


@pytest.mark.parametrize("key", CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_epidural_is_a_convex_lens_against_the_inner_table(cases, key) -> None:  # type: ignore[no-untyped-def]
    case, canvas = cases[key]
    m = case.masks["epidural"]
    assert touches_bone(m, case.tissue)
    assert components(m)[1] >= 0.95  # one piece
    assert solidity(largest_slice(m)) >= 0.8  # convex: bulges towards the brain, follows the bone on the other side
    assert 5.0 <= canvas.table_mm[m].max() <= 22.0  # 5-18 mm thick at its centre


@pytest.mark.parametrize("key", CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_subdural_is_a_long_thin_crescent_along_the_inner_table(cases, key) -> None:  # type: ignore[no-untyped-def]
    case, canvas = cases[key]
    m = case.masks["subdural"]
    assert touches_bone(m, case.tissue)
    thickness = float(canvas.table_mm[m].max())
    assert thickness <= 14.0  # never deeper than 13 mm from the table
    assert extent_mm(largest_slice(m), case.spacing) >= 5.0 * thickness  # long and thin
    assert components(m)[1] >= 0.6  # one sheet (with a few voxel crumbs where it tapers below a voxel)


@pytest.mark.parametrize("key", CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_intraparenchymal_is_a_compact_blob_in_the_parenchyma(cases, key) -> None:  # type: ignore[no-untyped-def]
    case, canvas = cases[key]
    m = case.masks["intraparenchymal"]
    centre = tuple(np.round(np.argwhere(m).mean(axis=0)).astype(int))
    assert case.tissue[centre] in (Tissue.BRAIN, Tissue.VENTRICLE)
    assert canvas.table_mm[centre] >= 10.0  # centred deep, away from the inner table
    assert (case.tissue[m] == Tissue.BRAIN).mean() >= 0.6
    assert components(m)[1] >= 0.9 and solidity(largest_slice(m)) >= 0.75
    # Not touching the bone holds for most draws, not all: see the next test.


def test_intraparenchymal_rarely_reaches_the_inner_table() -> None:
    """A known limit of the generator, kept because the shipped models were trained on it: the blob is centred at
    least 14 mm deep but its radius (up to 20 mm, lobulated) is not clipped, so it reaches the table (and sometimes
    a ventricle) in a minority of draws. This pins that rate so a change to it is noticed."""
    case = make_ct_case(7, (), source="mni", n_slices=20, profile="legacy")
    canvas = Canvas.from_labels(case.tissue, case.spacing)
    draws = [draw_lesion("intraparenchymal", canvas, np.random.default_rng(i)) for i in range(40)]
    touching = sum(touches_bone(m, case.tissue) for m in draws)
    assert touching <= 8  # at most one in five
    assert all((case.tissue[m] == Tissue.BRAIN).mean() >= 0.55 for m in draws)


@pytest.mark.parametrize("key", CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_intraventricular_lies_in_the_ventricles_layering_posteriorly(cases, key) -> None:  # type: ignore[no-untyped-def]
    case, _ = cases[key]
    m = case.masks["intraventricular"]
    assert (case.tissue[m] == Tissue.VENTRICLE).all()
    assert not touches_bone(m, case.tissue)
    zs = np.unique(np.argwhere(m)[:, 0])
    ventricle_rows = np.argwhere(case.tissue[zs] == Tissue.VENTRICLE)[:, 1]
    blood_rows = np.argwhere(m[zs])[:, 1]
    assert blood_rows.mean() >= ventricle_rows.mean() - 1.0  # dependent (posterior, higher row) part, or a cast


@pytest.mark.parametrize("key", CASES, ids=[f"{s}-{n}" for s, n in CASES])
def test_subarachnoid_is_thin_scattered_and_follows_csf_spaces(cases, key) -> None:  # type: ignore[no-untyped-def]
    case, canvas = cases[key]
    m = case.masks["subarachnoid"]
    n, _ = components(m)
    assert n >= 5  # many pieces
    assert ndimage.binary_erosion(m, IN_PLANE).sum() / m.sum() <= 0.5  # thin: most voxels lie on its surface
    assert solidity(largest_slice(m)) <= 0.6
    csf = (case.tissue[m] == Tissue.CSF).mean()
    idx = np.argwhere(m)
    box = tuple(slice(a, b) for a, b in zip(idx.min(axis=0), idx.max(axis=0) + 1, strict=True))
    around = (case.tissue[box] == Tissue.CSF)[canvas.intracranial[box]].mean()
    # Sulcal / cisternal CSF is enriched against its surroundings (on the axial real head a convexity bleed can lie
    # mostly on sulcal lines through thin cortex, so the absolute share can be as low as ~0.1).
    assert csf >= 0.05 and csf >= 2.0 * around


@pytest.mark.parametrize("subtype", SUBTYPES)
def test_blood_is_painted_at_55_to_85_hu_before_noise(subtype: str) -> None:
    base = np.full((9, 40, 40), 30.0, np.float32)
    zz, yy, xx = np.indices(base.shape)
    mask = ((zz - 4) * 2.0) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 8**2
    core = ndimage.binary_erosion(mask, iterations=2)
    for seed in range(8):
        out = paint_blood(base, mask, np.random.default_rng(seed), subtype)
        assert 55.0 <= float(np.median(out[core])) <= 85.0
        lo, hi = np.percentile(out[core], [1, 99])
        assert lo >= 45.0 and hi <= 95.0  # texture of a few HU around the drawn density
        far = ~ndimage.binary_dilation(mask, iterations=4)
        assert np.array_equal(out[far], base[far])  # nothing painted away from the lesion
        if subtype == "intraparenchymal":
            rim = ndimage.binary_dilation(mask, iterations=2) & ~ndimage.binary_dilation(mask, iterations=1)
            assert float(np.median(out[rim])) < 30.0  # low-density oedema rim


def test_drawn_acquisitions_vary_between_seeds() -> None:
    acqs = [draw_acquisition(np.random.default_rng(s)) for s in range(60)]

    def spread(field: str) -> float:
        values = [getattr(a, field) for a in acqs]
        return float(max(values) - min(values))

    assert spread("yaw") >= 20 and spread("pitch") >= 10 and spread("roll") >= 8  # rotation
    assert spread("head_scale") >= 0.15  # head size
    assert spread("warp_mm") >= 2.5  # deformation
    assert spread("noise_hu") >= 3 and spread("blur_px") >= 0.4  # noise and blur
    assert len({a.slice_mm for a in acqs}) >= 10 and spread("slice_mm") >= 2.0  # slice thickness
    assert all(-15 <= a.yaw <= 15 and 0.88 <= a.head_scale <= 1.12 and 1.5 <= a.slice_mm <= 5 for a in acqs)


def test_cases_of_different_seeds_differ_in_grid_and_spacing() -> None:
    cases = [make_ct_case(s, (), source="mni", matrix=128, profile="legacy") for s in (3, 4, 5)]
    for c in cases:
        assert c.spacing[1:] == (c.acquisition.pixel_mm, c.acquisition.pixel_mm)
        assert c.spacing[0] == pytest.approx(c.acquisition.slice_mm)
    assert len({c.hu.shape[0] for c in cases}) == 3
    assert len({c.spacing for c in cases}) == 3


@pytest.fixture(scope="module")
def still() -> Acquisition:
    """An acquisition with no rotation, deformation, blur or noise, to vary one parameter at a time."""
    return Acquisition(yaw=0, pitch=0, roll=0, head_scale=1.0, pixel_mm=1.8, slice_mm=5.0, shift_mm=(0, 0, 0),
                       warp_mm=0.0, noise_hu=0.0, blur_px=0.0, matrix=128)  # fmt: skip


def _intracranial(acq: Acquisition, seed: int = 0) -> tuple[np.ndarray, tuple[float, float, float]]:
    _, labels, spacing = resample_head(mni_head(), acq, np.random.default_rng(seed), n_slices=24)
    return np.isin(labels, [Tissue.BRAIN, Tissue.CSF, Tissue.VENTRICLE]), spacing


def _axis_angle_deg(mask: np.ndarray) -> float:
    """Orientation of the intracranial space's long in-plane axis (degrees)."""
    pts = np.argwhere(mask)[:, 1:].astype(float)
    pts -= pts.mean(axis=0)
    w, v = np.linalg.eigh(np.cov(pts.T))
    major = v[:, int(np.argmax(w))]
    return float(np.degrees(np.arctan2(major[1], major[0])))


def test_rotation_head_size_and_deformation_are_applied(still: Acquisition) -> None:
    ref, sp = _intracranial(still)
    turned, _ = _intracranial(dataclasses.replace(still, yaw=12.0))
    turn = (_axis_angle_deg(turned) - _axis_angle_deg(ref) + 90) % 180 - 90
    assert 8.0 <= abs(turn) <= 16.0

    small, sp_s = _intracranial(dataclasses.replace(still, head_scale=0.9))
    large, sp_l = _intracranial(dataclasses.replace(still, head_scale=1.1))
    ratio = (large.sum() * np.prod(sp_l)) / (small.sum() * np.prod(sp_s))
    assert ratio == pytest.approx((1.1 / 0.9) ** 3, rel=0.1)

    warped, _ = _intracranial(dataclasses.replace(still, warp_mm=4.0))
    changed = (warped ^ ref).sum() / ref.sum()
    assert 0.01 <= changed <= 0.5 and warped.sum() == pytest.approx(ref.sum(), rel=0.15)


def test_noise_level_follows_the_drawn_noise(still: Acquisition) -> None:
    flat = np.full((4, 64, 64), 30.0, np.float32)
    for noise in (2.0, 7.0):
        out = acquire(flat, dataclasses.replace(still, noise_hu=noise), np.random.default_rng(1))
        assert out.dtype == np.int16 and float(out.std()) == pytest.approx(noise, rel=0.1)
