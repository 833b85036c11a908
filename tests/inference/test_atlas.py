"""The hand-built MNI region atlas and its affine registration to a patient volume."""

from __future__ import annotations

import numpy as np
import pytest

from triage_node.inference.atlas import (
    REGION_NAMES,
    Region,
    Registration,
    load_mni_atlas,
    register_to_mni,
    volume_index_to_ras,
)
from triage_node.inference.infarct import locate
from triage_node.preprocess.volume import Volume


def test_every_region_is_present_in_both_hemispheres() -> None:
    atlas = load_mni_atlas()
    x, _, _ = atlas.mm_grid()
    for region in Region:
        sel = atlas.labels == region
        assert (sel & (x > 0)).sum() > 500, region
        assert (sel & (x < 0)).sum() > 500, region
    assert set(REGION_NAMES) == set(Region)


@pytest.mark.parametrize(
    ("xyz", "region"),
    [
        ((12, -18, 7), Region.THALAMUS),
        ((-12, -18, 7), Region.THALAMUS),
        ((0, -27, -30), Region.BRAINSTEM),
        ((20, -70, -35), Region.CEREBELLUM),
        ((40, 30, 30), Region.FRONTAL),
        ((-50, -20, -15), Region.TEMPORAL),
        ((20, -90, 10), Region.OCCIPITAL),
        ((-40, -40, 45), Region.PARIETAL),
        ((0, -5, 24), Region.CORPUS_CALLOSUM),
        ((25, 2, 0), Region.BASAL_GANGLIA),
        ((-38, 2, 3), Region.INSULA),
        ((25, -20, 35), Region.CENTRUM_SEMIOVALE),
    ],
)
def test_landmarks_fall_in_their_region(xyz: tuple[int, int, int], region: Region) -> None:
    assert load_mni_atlas().lookup(np.array([xyz], float))[0] == region


def test_region_names_round_trip() -> None:
    assert Region.from_name("thalamus") is Region.THALAMUS
    assert Region.from_name("basal ganglia / internal capsule") is Region.BASAL_GANGLIA
    with pytest.raises(ValueError, match="Unknown region 'hippocampus'"):
        Region.from_name("hippocampus")


def _mni_volume(step: float = 2.0) -> Volume:
    """The MNI grey+white matter map resampled to an axial LPS volume whose patient space *is* MNI space."""
    from scipy import ndimage

    atlas = load_mni_atlas()
    tissue = (atlas.gm + atlas.wm).astype(np.float32)
    # LPS origin so that patient RAS == MNI: x index -> patient left (RAS -x), y index -> posterior (RAS -y).
    nz, ny, nx = int(180 / step), int(216 / step), int(180 / step)
    origin = (-90.0, -90.0, -72.0)  # LPS of voxel 0 = RAS (90, 90, -72): patient right, anterior, inferior
    z, y, x = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    ras = np.stack([-(origin[0] + x * step), -(origin[1] + y * step), origin[2] + z * step])
    idx = ras - atlas.affine[:3, 3, None, None, None]
    pixels = ndimage.map_coordinates(tissue, idx.reshape(3, -1), order=1).reshape(nz, ny, nx)
    return Volume(pixels * 1000, (step, step, step), origin, (1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
                  tuple(str(i) for i in range(nz)), "MR")


def test_volume_geometry_maps_to_ras() -> None:
    v = _mni_volume(4.0)
    m = volume_index_to_ras(v)
    np.testing.assert_allclose(m @ [0, 0, 0, 1], [90.0, 90.0, -72.0, 1.0])
    np.testing.assert_allclose(m @ [0, 0, 1, 1], [86.0, 90.0, -72.0, 1.0])  # +x index -> patient left -> RAS -x
    np.testing.assert_allclose(m @ [1, 0, 0, 1], [90.0, 90.0, -68.0, 1.0])


def test_registration_of_mni_itself_is_near_identity_and_locates_the_thalamus() -> None:
    v = _mni_volume(2.0)
    reg = register_to_mni(v)
    probe = np.array([[12.0, -18.0, 7.0], [-40.0, 20.0, 40.0], [0.0, -60.0, -30.0]])
    mapped = (reg.patient_to_mni[:3, :3] @ probe.T).T + reg.patient_to_mni[:3, 3]
    assert np.abs(mapped - probe).max() < 4.0
    # A small blob at right thalamus in voxel space reads as "right thalamus".
    ras = np.array([12.0, -18.0, 7.0])
    vox = np.linalg.solve(volume_index_to_ras(v)[:3, :3], ras - volume_index_to_ras(v)[:3, 3])
    mask = np.zeros(v.pixels.shape, bool)
    c = np.round(vox).astype(int)
    mask[c[0] - 1 : c[0] + 2, c[1] - 1 : c[1] + 2, c[2] - 1 : c[2] + 2] = True
    loc = locate(v, mask, reg)
    assert loc.phrase == "right thalamus"
    flipped = locate(v, mask[:, :, ::-1].copy(), Registration(np.eye(4), 0.0))
    assert flipped.side == "left"  # mirrored across the midline -> the other side, never a flipped label
