"""A coarse brain-region atlas in MNI152 space and its affine registration to a patient volume.

No atlas with the regions a stroke report names (lobes, insula, basal ganglia, thalamus, ...) ships offline with
nilearn, so this module builds one from MNI coordinates and nilearn's bundled MNI152 brain / grey / white matter maps.
The boundaries are hand-set planes, ellipsoids and tissue rules (see ``_region_rules``); they approximate the anatomy to
within a few millimetres in the deep structures and about a centimetre at lobar boundaries (central sulcus, sylvian
fissure, parieto-occipital sulcus). That is enough to name the region that holds most of an infarct; it is not a
neuroanatomical parcellation.

Registration maps the MNI brain (grey + white matter probability) onto the patient's parenchyma found by
thresholding the input (DWI b=1000: parenchyma bright, CSF dark): a 12-parameter affine fitted by least squares on
smoothed masks (coarse to fine), started from the patient geometry (both spaces are patient-aligned) and the masks'
centroids and extents.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from triage_node.preprocess.volume import Volume


class Region(enum.IntEnum):
    """The fixed list of regions an infarct location is reported in (label values of the atlas)."""

    FRONTAL = 1
    PARIETAL = 2
    TEMPORAL = 3
    OCCIPITAL = 4
    INSULA = 5
    BASAL_GANGLIA = 6
    THALAMUS = 7
    CORPUS_CALLOSUM = 8
    CENTRUM_SEMIOVALE = 9
    BRAINSTEM = 10
    CEREBELLUM = 11

    @property
    def phrase(self) -> str:
        return REGION_NAMES[self]

    @classmethod
    def from_name(cls, name: str) -> Region:
        for r, n in REGION_NAMES.items():
            if name in (n, r.name.lower()):
                return r
        raise ValueError(f"Unknown region {name!r}: expected one of {sorted(REGION_NAMES.values())}")


REGION_NAMES: dict[Region, str] = {
    Region.FRONTAL: "frontal lobe",
    Region.PARIETAL: "parietal lobe",
    Region.TEMPORAL: "temporal lobe",
    Region.OCCIPITAL: "occipital lobe",
    Region.INSULA: "insula",
    Region.BASAL_GANGLIA: "basal ganglia / internal capsule",
    Region.THALAMUS: "thalamus",
    Region.CORPUS_CALLOSUM: "corpus callosum",
    Region.CENTRUM_SEMIOVALE: "centrum semiovale",
    Region.BRAINSTEM: "brainstem",
    Region.CEREBELLUM: "cerebellum",
}


@dataclass(frozen=True)
class MniAtlas:
    """Region labels and tissue maps on the 1 mm MNI152 grid.

    ``labels``: uint8 (i, j, k) with values of ``Region`` (0 outside the brain). ``gm``, ``wm``, ``brain``: float32
    probabilities on the same grid. ``affine``: voxel index (i, j, k) -> MNI mm (x right, y anterior, z superior).
    Hemisphere is not in the labels: it is the sign of MNI x (x > 0 is the right hemisphere).
    """

    labels: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    affine: np.ndarray

    @property
    def csf(self) -> np.ndarray:
        return np.asarray(np.clip(self.brain - self.gm - self.wm, 0.0, 1.0))

    def mm_grid(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """MNI coordinates (x, y, z) of every voxel as three broadcastable float32 arrays."""
        shape = self.labels.shape
        ax = [
            (np.arange(n, dtype=np.float32) * float(self.affine[d, d]) + float(self.affine[d, 3]))
            for d, n in enumerate(shape)
        ]
        return ax[0][:, None, None], ax[1][None, :, None], ax[2][None, None, :]

    def lookup(self, mni_xyz: np.ndarray) -> np.ndarray:
        """Region label at MNI points (N, 3) (nearest voxel; 0 outside)."""
        idx = np.rint(_apply(np.linalg.inv(self.affine), mni_xyz)).astype(int)
        ok = np.all((idx >= 0) & (idx < np.asarray(self.labels.shape)), axis=1)
        out = np.zeros(len(idx), dtype=np.uint8)
        out[ok] = self.labels[idx[ok, 0], idx[ok, 1], idx[ok, 2]]
        return out


def _ellipsoid(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, c: tuple[float, float, float], r: tuple[float, ...]
) -> np.ndarray:
    ax = np.abs(x)  # both hemispheres: centres are given for the right one
    return np.asarray(((ax - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2 <= 1.0)


def _region_rules(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, gm: np.ndarray, wm: np.ndarray, brain: np.ndarray
) -> np.ndarray:
    """Assign regions by priority: brainstem, cerebellum, thalamus, basal ganglia, insula, corpus callosum,
    centrum semiovale, then lobes by planes. Coordinates in MNI mm; boundaries from standard MNI landmarks."""
    shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
    labels = np.zeros(shape, dtype=np.uint8)
    inside = brain > 0.5
    parenchyma = inside & ((gm + wm) > 0.35)
    free = inside.copy()

    def put(region: Region, sel: np.ndarray) -> None:
        s = sel & free
        labels[s] = region
        free[s] = False

    ax = np.abs(x)
    # Brainstem: midbrain, pons and medulla as an elliptic cylinder in front of the fourth ventricle.
    put(Region.BRAINSTEM, parenchyma & (((x / 12.0) ** 2 + ((y + 26.0) / 14.0) ** 2) <= 1.0) & (z < -6) & (z > -65))
    # Cerebellum: below the tentorium, which slopes down from z=-8 at y=-40 to about z=-26 at y=-95.
    tentorium = -12.0 - 0.3 * np.clip(-42.0 - y, 0.0, None)
    put(Region.CEREBELLUM, inside & (y < -42) & (z < tentorium))
    put(Region.THALAMUS, parenchyma & _ellipsoid(x, y, z, (11.0, -18.0, 7.0), (7.0, 12.0, 8.0)))
    # Caudate, putamen, pallidum and the internal capsule between them as one ellipsoid (plus the caudate head).
    bg = _ellipsoid(x, y, z, (19.0, 2.0, 3.0), (12.0, 17.0, 10.0)) | _ellipsoid(
        x, y, z, (13.0, 12.0, 10.0), (5.0, 9.0, 8.0)
    )
    put(Region.BASAL_GANGLIA, parenchyma & bg)
    put(Region.INSULA, parenchyma & _ellipsoid(x, y, z, (38.0, 2.0, 3.0), (6.0, 18.0, 13.0)))
    # Corpus callosum: white matter near the midline along an arch from genu (y=+34) to splenium (y=-40).
    arch = 24.0 - 16.0 * ((y + 3.0) / 37.0) ** 2
    put(Region.CORPUS_CALLOSUM, (wm > 0.4) & (ax < 15) & (y > -42) & (y < 36) & (np.abs(z - arch) < 6.5))
    # Centrum semiovale: deep white matter (>= 3 mm from non-white tissue) above the lateral ventricles.
    deep_wm = ndimage.binary_erosion(wm > 0.5, iterations=3)
    put(Region.CENTRUM_SEMIOVALE, deep_wm & (z > 22) & (z < 58))
    # Lobes for everything else inside the brain.
    temporal_top = -2.0 - 0.35 * y
    put(Region.OCCIPITAL, inside & (y < -70))
    put(Region.TEMPORAL, inside & (z < temporal_top) & (y < 30) & ((ax > 20) | (z < -12)))
    central_sulcus = -12.0 - 0.35 * (z - 20.0)
    put(Region.FRONTAL, inside & (y >= central_sulcus))
    put(Region.PARIETAL, inside)
    return labels


@functools.lru_cache(maxsize=1)
def load_mni_atlas() -> MniAtlas:
    """Build the region atlas from nilearn's bundled MNI152 maps (1 mm; cached per process, arrays read-only)."""
    from nilearn import datasets

    brain_img = datasets.load_mni152_brain_mask(resolution=1)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).get_fdata(), dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).get_fdata(), dtype=np.float32)
    brain = np.asarray(brain_img.get_fdata(), dtype=np.float32)
    affine = np.asarray(brain_img.affine, dtype=np.float64)
    tmp = MniAtlas(labels=np.zeros(brain.shape, np.uint8), gm=gm, wm=wm, brain=brain, affine=affine)
    x, y, z = tmp.mm_grid()
    labels = _region_rules(x, y, z, gm, wm, brain)
    for a in (labels, gm, wm, brain):
        a.setflags(write=False)
    return MniAtlas(labels=labels, gm=gm, wm=wm, brain=brain, affine=affine)


# --------------------------------------------------------------------------------------------------------------------
# Registration


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    pts = np.atleast_2d(np.asarray(pts, dtype=np.float64))
    return np.asarray(pts @ m[:3, :3].T + m[:3, 3])


LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def volume_index_to_ras(volume: Volume) -> np.ndarray:
    """4x4 affine from voxel index (z, y, x) to patient RAS mm (the DICOM LPS geometry with x and y negated)."""
    r = np.asarray(volume.row_direction, dtype=np.float64)
    c = np.asarray(volume.col_direction, dtype=np.float64)
    n = volume.normal
    dz, dy, dx = volume.spacing
    m = np.eye(4)
    m[:3, 0] = n * dz
    m[:3, 1] = c * dy
    m[:3, 2] = r * dx
    m[:3, 3] = np.asarray(volume.origin, dtype=np.float64)
    return LPS_TO_RAS @ m


@dataclass(frozen=True)
class Registration:
    """``patient_to_mni``: 4x4 affine, patient RAS mm -> MNI mm. ``residual``: final mean squared mask difference."""

    patient_to_mni: np.ndarray
    residual: float

    def voxels_to_mni(self, volume: Volume, zyx: np.ndarray) -> np.ndarray:
        """Voxel indices (N, 3) as (z, y, x) of ``volume`` -> MNI mm (N, 3)."""
        return _apply(self.patient_to_mni @ volume_index_to_ras(volume), zyx)


def parenchyma_mask(image: np.ndarray) -> np.ndarray:
    """Bright-tissue mask of a DWI-like image: above a fraction of the robust maximum, largest component, holes filled.

    ``image``: float (z, y, x). Returns bool (z, y, x).
    """
    img = np.asarray(image, dtype=np.float32)
    pos = img[img > 0]
    if pos.size == 0:
        return np.zeros(img.shape, dtype=bool)
    hi = float(np.percentile(pos, 99.0))
    fg = img > 0.3 * hi
    lab, n = ndimage.label(fg)
    if n > 1:
        sizes = ndimage.sum(fg, lab, index=np.arange(1, n + 1))
        fg = lab == (1 + int(np.argmax(sizes)))
    return fg


def _resample_mask(mask: np.ndarray, src_index_to_mm: np.ndarray, grid_mm: tuple[np.ndarray, ...]) -> np.ndarray:
    """Sample a float map on an axis-aligned mm grid (three 1-D coordinate arrays) given the map's index->mm affine."""
    xs, ys, zs = np.meshgrid(*grid_mm, indexing="ij")
    pts = np.stack([xs.ravel(), ys.ravel(), zs.ravel()], axis=1)
    idx = _apply(np.linalg.inv(src_index_to_mm), pts).T
    sampled = ndimage.map_coordinates(mask.astype(np.float32), idx, order=1, mode="constant", cval=0.0)
    return np.asarray(sampled).reshape(xs.shape)


@functools.lru_cache(maxsize=4)
def _target_grid(step_mm: float) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    atlas = load_mni_atlas()
    lo = np.array([-92.0, -128.0, -74.0])
    hi = np.array([92.0, 92.0, 110.0])
    grid = tuple(np.arange(lo[d], hi[d] + 1e-3, step_mm) for d in range(3))
    return grid, _resample_mask(atlas.gm + atlas.wm, atlas.affine, grid)


def register_to_mni(
    volume: Volume,
    image: np.ndarray | None = None,
    schedule: tuple[tuple[float, float, int], ...] = ((8.0, 6.0, 40), (4.0, 6.0, 40), (2.0, 4.0, 30)),
) -> Registration:
    """Fit an affine from the patient to MNI space by matching the patient's parenchyma mask with the MNI brain.

    ``image`` defaults to ``volume.pixels`` (a DWI b=1000 volume: parenchyma bright, CSF dark). The MNI target is the
    grey + white matter probability, so ventricles and sulci help to place the deep structures. The initial affine
    matches centroids and extents along the patient axes; Adam then minimises the mean squared difference of the
    smoothed masks, coarse to fine: ``schedule`` is (smoothing sigma mm, MNI grid step mm, iterations) per level.
    """
    import torch
    import torch.nn.functional as F

    img = volume.pixels if image is None else image
    pmask = parenchyma_mask(img)
    if pmask.sum() < 100:
        raise ValueError(f"register_to_mni: only {int(pmask.sum())} parenchyma voxels found; is this a brain DWI?")
    vox2ras = volume_index_to_ras(volume)
    r2v = torch.from_numpy(np.linalg.inv(vox2ras))
    p_ras = _apply(vox2ras, np.argwhere(pmask))
    grid0, target0 = _target_grid(4.0)
    t_idx = np.argwhere(target0 > 0.5)
    t_mm = np.stack([grid0[d][t_idx[:, d]] for d in range(3)], axis=1)
    c_p, c_t = p_ras.mean(axis=0), t_mm.mean(axis=0)
    scale0 = np.clip(p_ras.std(axis=0) / np.maximum(t_mm.std(axis=0), 1e-3), 0.7, 1.4)
    # The MNI -> patient map: patient = c_p + (diag(scale0) + D)(mni - c_t) + 10 t.
    norm_scale = torch.tensor([2.0 / max(n - 1, 1) for n in pmask.shape[::-1]], dtype=torch.float64)
    d_param = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    t_param = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    a0 = torch.from_numpy(np.diag(scale0))
    cp = torch.from_numpy(c_p)
    opt = torch.optim.Adam([d_param, t_param], lr=0.01)
    loss_val = float("nan")
    for sigma_mm, step_mm, iters in schedule:
        grid, target = _target_grid(step_mm)
        xs, ys, zs = np.meshgrid(*grid, indexing="ij")
        q = torch.from_numpy(np.stack([xs.ravel(), ys.ravel(), zs.ravel()], axis=1) - c_t)
        sig = [sigma_mm / s for s in volume.spacing]
        moving = torch.from_numpy(ndimage.gaussian_filter(pmask.astype(np.float32), sig))[None, None]
        tgt = torch.from_numpy(ndimage.gaussian_filter(target, sigma_mm / step_mm).astype(np.float32))
        for _ in range(iters):
            opt.zero_grad()
            ras = cp + q @ (a0 + d_param).T + 10.0 * t_param
            vox = ras @ r2v[:3, :3].T + r2v[:3, 3]  # (N, 3) as (z, y, x)
            g = (vox.flip(1) * norm_scale - 1.0).float().reshape(1, 1, 1, -1, 3)
            moved = F.grid_sample(moving, g, mode="bilinear", padding_mode="zeros", align_corners=True)
            loss = torch.mean((moved.reshape(tgt.shape) - tgt) ** 2)
            loss.backward()
            opt.step()
            loss_val = float(loss.detach())
    with torch.no_grad():
        a = (a0 + d_param).numpy()
        t = 10.0 * t_param.numpy()
    mni_to_patient = np.eye(4)
    mni_to_patient[:3, :3] = a
    mni_to_patient[:3, 3] = c_p + t - a @ c_t
    return Registration(patient_to_mni=np.linalg.inv(mni_to_patient), residual=loss_val)
