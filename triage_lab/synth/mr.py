"""Synthetic MR series for the MR models: SWI with microbleeds and DWI (b=1000) + ADC with an acute infarct.

Two head sources, picked per case by the seed:

* ``mni``: nilearn's MNI152 grey/white-matter/brain maps (1 mm), which also carry the region atlas of
  ``triage_node.inference.atlas`` so an infarct can be put in a named region;
* ``ct``: tissue maps derived from the real head CT (Debian ``invesalius-examples``, GPL data read at run time, never
  stored): intracranial CSF / grey / white matter split by HU, plus scalp and dark bone for SWI. SWI draws it for ~30%
  of seeds; DWI uses it on request (``source="ct"`` or ``"seeded"``) and places infarcts with the MNI region atlas
  fitted to the CT brain by its centre and extent (:func:`ct_to_mni`), so their region labels are approximate there.

Each case draws a random head pose and size (rotation, anisotropic scale, shift), a smooth random deformation, slice
spacing and thickness (thick slices are averaged over sub-samples), tissue contrasts, bias field and Rician noise. All
randomness comes from ``numpy.random.default_rng(seed)``, so a case is a pure function of its seed and arguments.

Output arrays are (z, y, x) with axial geometry: x index -> patient left, y index -> posterior, z index -> superior
(DICOM LPS with identity directions), the same convention as ``Volume``.
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from triage_node.inference.atlas import Region, load_mni_atlas
from triage_node.preprocess.volume import Volume


@dataclass(frozen=True)
class HeadSource:
    """Tissue probabilities on a grid with ``index_to_ras`` (4x4, index -> head mm, RAS, origin near the brain centre).

    ``labels`` holds atlas regions where known (MNI source), else None. ``scalp`` and ``bone`` are extra-cranial
    tissue fractions (zero for the skull-stripped MNI maps).
    """

    name: str
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    scalp: np.ndarray
    bone: np.ndarray
    index_to_ras: np.ndarray
    labels: np.ndarray | None


@functools.lru_cache(maxsize=1)
def mni_source() -> HeadSource:
    a = load_mni_atlas()
    zeros = np.zeros(a.gm.shape, dtype=np.float32)
    return HeadSource("mni", a.gm, a.wm, a.csf.astype(np.float32), zeros, zeros, a.affine, a.labels)


@functools.lru_cache(maxsize=1)
def ct_source() -> HeadSource:
    """Tissue maps from the real head CT (raises ``HeadCTUnavailable`` when the package is missing)."""
    from triage_lab.synth.headct import axial_head_ct

    ct = axial_head_ct()
    hu = ndimage.gaussian_filter(ct.hu.astype(np.float32), 0.8)
    bone = hu > 250
    # Intracranial space: the largest soft-tissue component once thin bridges through skull gaps are eroded away.
    soft_wide = (hu > -10) & (hu < 75)
    core = ndimage.binary_erosion(soft_wide, iterations=3)
    lab, n = ndimage.label(core)
    sizes = ndimage.sum(core, lab, index=np.arange(1, n + 1))
    intracranial = lab == (1 + int(np.argmax(sizes)))
    intracranial = ndimage.binary_fill_holes(ndimage.binary_dilation(intracranial, iterations=3) & soft_wide)
    soft = (hu > -5) & (hu < 90)
    csf = np.clip((20.0 - hu) / 12.0, 0.0, 1.0) * (intracranial & soft)
    tissue = (1.0 - csf) * (intracranial & soft)
    g = np.clip((hu - 27.0) / 8.0, 0.0, 1.0)
    gm = tissue * g
    wm = tissue * (1.0 - g)
    scalp = ((hu > -200) & (hu < 200) & ~intracranial & ~bone).astype(np.float32)
    dz, dy, dx = ct.spacing
    # Array axes (z, y, x): z towards the vertex, y towards the occiput (anterior at row 0), x taken as patient left.
    m = np.eye(4)
    m[:3, :3] = np.array([[0.0, 0.0, -dx], [0.0, -dy, 0.0], [dz, 0.0, 0.0]])
    centre = np.argwhere(intracranial).mean(axis=0)
    m[:3, 3] = -m[:3, :3] @ centre
    f32 = np.float32
    return HeadSource("ct", gm.astype(f32), wm.astype(f32), csf.astype(f32), scalp, bone.astype(f32), m, None)


@functools.lru_cache(maxsize=1)
def ct_to_mni() -> np.ndarray:
    """4x4 affine from the CT source's head space to the MNI source's (RAS mm): per-axis scale and shift that match
    the robust centre and extent (2nd-98th percentile) of the two brains (grey + white matter > 0.5)."""

    def centre_extent(src: HeadSource) -> tuple[np.ndarray, np.ndarray]:
        idx = np.argwhere((src.gm + src.wm) > 0.5).astype(np.float64)
        ras = idx @ src.index_to_ras[:3, :3].T + src.index_to_ras[:3, 3]
        lo, hi = np.percentile(ras, [2.0, 98.0], axis=0)
        return (lo + hi) / 2.0, hi - lo

    c_ct, e_ct = centre_extent(ct_source())
    c_mni, e_mni = centre_extent(mni_source())
    scale = e_mni / e_ct
    out = np.eye(4)
    out[:3, :3] = np.diag(scale)
    out[:3, 3] = c_mni - scale * c_ct
    return out


def _ct_to_mni_index(pts: np.ndarray) -> np.ndarray:
    """CT-source index coordinates (3, ...) -> MNI-source index coordinates (3, ...) float32."""
    m = np.linalg.inv(mni_source().index_to_ras) @ ct_to_mni() @ ct_source().index_to_ras
    flat = pts.reshape(3, -1).astype(np.float64)
    return (m[:3, :3] @ flat + m[:3, 3:]).reshape(pts.shape).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# Geometry: a random pose / size / deformation that maps output voxels into head-source indices


@dataclass(frozen=True)
class Grid:
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin_lps: tuple[float, float, float]


def _rotation(rx: float, ry: float, rz: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(rx), np.sin(rx), np.cos(ry), np.sin(ry), np.cos(rz), np.sin(rz)
    return (
        np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
        @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        @ np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    )


def _sample_points(
    rng: np.random.Generator, grid: Grid, src: HeadSource, sub: int, deform_mm: float, wide: bool = False
) -> np.ndarray:
    """Source index coordinates (3, sub, z, y, x) for every output voxel and slice sub-sample. ``wide``: the
    domain-randomised pose and size ranges (pitch/roll +-15 deg, yaw +-20, size 0.86-1.14, shape +-8%)."""
    lim, yaw, size, aniso = (15, 20, (0.86, 1.14), 0.08) if wide else (8, 12, (0.9, 1.1), 0.04)
    pitch, roll = (float(a) for a in np.deg2rad(rng.uniform(-lim, lim, 2)))
    rot = _rotation(pitch, roll, float(np.deg2rad(rng.uniform(-yaw, yaw))))
    scale = rng.uniform(*size) * rng.uniform(1 - aniso, 1 + aniso, 3)  # head size and shape
    shift = rng.uniform(-8, 8, 3)
    head_to_patient = rot @ np.diag(scale)
    inv = np.linalg.inv(head_to_patient)
    nz, ny, nx = grid.shape
    dz, dy, dx = grid.spacing
    offs = (np.arange(sub) - (sub - 1) / 2.0) / sub
    z = (np.arange(nz)[None, :] + offs[:, None]) * dz + grid.origin_lps[2]  # (sub, nz)
    y = np.arange(ny) * dy + grid.origin_lps[1]
    x = np.arange(nx) * dx + grid.origin_lps[0]
    # patient RAS = (-L, -P, S)
    ras = [
        -x[None, None, None, :] - shift[0],
        -y[None, None, :, None] - shift[1],
        z[:, :, None, None] - shift[2],
    ]
    head = [sum(inv[i, j] * ras[j] for j in range(3)) for i in range(3)]
    if deform_mm > 0:
        coarse = rng.normal(0.0, deform_mm, (3, 4, 5, 5)).astype(np.float32)
        for i in range(3):
            d = _smooth_upsample(coarse[i], (nz, ny, nx))
            head[i] = head[i] + d[None]
    ras2idx = np.linalg.inv(src.index_to_ras)
    shape = (sub, nz, ny, nx)
    head = [np.broadcast_to(h, shape) for h in head]
    return np.stack([sum(ras2idx[i, j] * head[j] for j in range(3)) + ras2idx[i, 3] for i in range(3)]).astype(
        np.float32
    )


def _sample(vol: np.ndarray, pts: np.ndarray, order: int = 1) -> np.ndarray:
    """Sample ``vol`` at ``pts`` (3, sub, z, y, x) and average over the slice sub-samples -> (z, y, x) float32."""
    s = ndimage.map_coordinates(vol, pts.reshape(3, -1), order=order, mode="constant", cval=0.0)
    return s.reshape(pts.shape[1:]).mean(axis=0).astype(np.float32)


def _grid(
    rng: np.random.Generator, fov_xy: float, fov_z: float, dxy: tuple[float, float], dz: tuple[float, float]
) -> Grid:
    sxy = float(rng.uniform(*dxy))
    sz = float(rng.uniform(*dz))
    nxy = int(round(fov_xy / sxy / 2)) * 2
    nz = int(round(fov_z / sz))
    # Centre the field of view on the head centre (patient LPS origin), with a small random offset.
    off = rng.uniform(-6, 6, 3)
    # The brain's centre sits ~15 mm behind and ~10 mm above the head-space origin (MNI: the anterior commissure).
    origin = (-nxy * sxy / 2 + off[0], -nxy * sxy / 2 + off[1] + 15.0, -0.47 * nz * sz + off[2])
    return Grid((nz, nxy, nxy), (sz, sxy, sxy), origin)


def _smooth_upsample(coarse: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Cubic upsampling of a few control points to an intermediate grid, then linear to ``shape`` (fast, smooth)."""
    mid = tuple(max(4, s // 8) for s in shape)
    m = ndimage.zoom(coarse, [a / b for a, b in zip(mid, coarse.shape, strict=True)], order=3, mode="nearest")
    out = ndimage.zoom(m, [a / b for a, b in zip(shape, m.shape, strict=True)], order=1, mode="nearest")
    return out[: shape[0], : shape[1], : shape[2]]


def _bias_field(rng: np.random.Generator, shape: tuple[int, int, int], strength: float) -> np.ndarray:
    coarse = rng.normal(0.0, strength, (3, 3, 3)).astype(np.float32)
    f = _smooth_upsample(coarse, shape)
    return np.exp(f).astype(np.float32)


def _rician(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    n1 = rng.normal(0.0, sigma, img.shape).astype(np.float32)
    n2 = rng.normal(0.0, sigma, img.shape).astype(np.float32)
    return np.sqrt((img + n1) ** 2 + n2**2).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# SWI with microbleeds


@dataclass(frozen=True)
class SwiCase:
    """A synthetic SWI magnitude volume.

    ``volume``: float32 (z, y, x), arbitrary MR units. ``spacing``: (z, y, x) mm. ``centres``: (N, 3) float voxel
    coordinates (z, y, x) of the microbleeds. ``radii``: (N,) true radius in mm (the dark spot blooms beyond it).
    ``brain``: bool (z, y, x) parenchyma mask used to place bleeds. ``source``: ``mni`` | ``ct``.
    """

    volume: np.ndarray
    spacing: tuple[float, float, float]
    centres: np.ndarray
    radii: np.ndarray
    brain: np.ndarray
    source: str
    seed: int


def _render_spheres(
    shape: tuple[int, ...], spacing: tuple[float, ...], centres: np.ndarray, radii: np.ndarray
) -> np.ndarray:
    """Soft-edged sphere occupancy in [0, 1] (float32 (z, y, x)); centres in voxels, radii in mm."""
    out = np.zeros(shape, dtype=np.float32)
    sp = np.asarray(spacing)
    for c, r in zip(centres, radii, strict=True):
        ext = np.ceil((r + 2.0) / sp).astype(int)
        lo = np.maximum(np.floor(c).astype(int) - ext, 0)
        hi = np.minimum(np.floor(c).astype(int) + ext + 2, np.asarray(shape))
        if np.any(hi <= lo):
            continue
        zz, yy, xx = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        d = np.sqrt(((zz - c[0]) * sp[0]) ** 2 + ((yy - c[1]) * sp[1]) ** 2 + ((xx - c[2]) * sp[2]) ** 2)
        # Partial volume across the thick slice direction: soften by half the slice thickness.
        occ = np.clip((r - d) / max(0.5, 0.5 * sp[0]) + 0.5, 0.0, 1.0)
        sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        out[sl] = np.maximum(out[sl], occ)
    return out


def _render_veins(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...], allowed: np.ndarray, n: int
) -> np.ndarray:
    """Dark tubular distractors (medullary and cortical veins) as smooth random curves; returns darkening in [0, 1]."""
    acc = np.zeros(shape, dtype=np.float32)
    cand = np.argwhere(allowed)
    if len(cand) == 0 or n == 0:
        return acc
    sp = np.asarray(spacing)
    for _ in range(n):
        p = cand[rng.integers(len(cand))].astype(np.float64)
        direction = rng.normal(size=3)
        direction[0] *= 0.5
        direction /= np.linalg.norm(direction)
        length = rng.uniform(15, 45)  # mm
        step = 0.3 * float(sp.min())
        for _s in range(int(length / step)):
            direction += rng.normal(0, 0.08, 3)
            direction /= np.linalg.norm(direction)
            p = p + direction * step / sp
            i = np.round(p).astype(int)
            if np.any(i < 0) or np.any(i >= np.asarray(shape)):
                break
            acc[tuple(i)] += 1.0
    sig = [max(0.45 / s * rng.uniform(0.8, 1.4), 0.35) for s in sp]
    v = ndimage.gaussian_filter(acc, sig)
    peak = float(np.percentile(v[acc > 0], 50)) if np.any(acc > 0) else 1.0
    return np.clip(v / max(peak, 1e-6), 0.0, 1.0)


def place_bleeds(
    rng: np.random.Generator, brain: np.ndarray, spacing: tuple[float, float, float], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` microbleed centres (voxels, (N, 3)) in ``brain``, at least 8 mm apart so a count is well defined,
    and their true radii (1-5 mm, (N,))."""
    cand = np.argwhere(brain)
    centres: list[np.ndarray] = []
    radii: list[float] = []
    sp = np.asarray(spacing)
    tries = 0
    while len(centres) < n and tries < 500 and len(cand):
        tries += 1
        c = cand[rng.integers(len(cand))] + rng.uniform(-0.5, 0.5, 3)
        if any(np.linalg.norm((c - o) * sp) < 8.0 for o in centres):
            continue
        centres.append(c)
        radii.append(float(rng.uniform(1.0, 5.0)))
    return np.asarray(centres, dtype=np.float64).reshape(-1, 3), np.asarray(radii, dtype=np.float64)


def make_swi_case(seed: int, n_bleeds: int | None = None, source: str | None = None) -> SwiCase:
    """A synthetic SWI series with ``n_bleeds`` microbleeds (random 0-8 when None), deterministic per seed.

    Bleeds are 2-10 mm diameter dark spheres in the parenchyma (lobar, deep and infratentorial), blooming 1.1-1.6x
    beyond their true radius; veins (dark tubes) and iron-dark deep grey matter are the distractors. ``source`` forces
    ``mni`` or ``ct``; by default ~70% of seeds use the MNI maps and the rest the real head CT when it is installed.
    """
    rng = np.random.default_rng([seed, 4_000])
    if source is None:
        source = "mni" if rng.random() < 0.7 else "ct"
    if source == "ct":
        from triage_lab.synth.headct import HeadCTUnavailable

        try:
            src = ct_source()
        except HeadCTUnavailable:
            src = mni_source()
    else:
        src = mni_source()
    if n_bleeds is None:
        n_bleeds = int(rng.choice(9, p=[0.16, 0.16, 0.14, 0.12, 0.1, 0.1, 0.08, 0.07, 0.07]))
    grid = _grid(rng, fov_xy=rng.uniform(200, 225), fov_z=rng.uniform(150, 165), dxy=(0.85, 1.1), dz=(1.4, 2.2))
    pts = _sample_points(rng, grid, src, sub=1, deform_mm=rng.uniform(0.0, 3.0))
    gm, wm, csf = (_sample(m, pts) for m in (src.gm, src.wm, src.csf))
    scalp, bone = (_sample(m, pts) for m in (src.scalp, src.bone)) if src.name == "ct" else (None, None)
    c_gm, c_wm, c_csf = rng.uniform(0.55, 0.68), rng.uniform(0.45, 0.55), rng.uniform(0.8, 1.0)
    img = gm * c_gm + wm * c_wm + csf * c_csf
    if src.labels is not None:
        deep = np.isin(src.labels, (Region.BASAL_GANGLIA, Region.THALAMUS)).astype(np.float32)
        iron = _sample(deep, pts) * rng.uniform(0.05, 0.2)
        img = img * (1.0 - iron * (gm + 0.5 * wm))
    if scalp is not None and bone is not None:
        img = img + scalp * rng.uniform(0.4, 0.7) * (1.0 - bone)
    parenchyma = (gm + wm) > 0.8
    brain = ndimage.binary_erosion(parenchyma, iterations=1)
    # Veins: mostly near the surface of the brain and radially through white matter.
    veins = _render_veins(rng, grid.shape, grid.spacing, (gm + wm + csf) > 0.5, int(rng.integers(6, 22)))
    img = img * (1.0 - rng.uniform(0.5, 0.8) * veins)
    centres_a, radii_a = place_bleeds(rng, brain, grid.spacing, n_bleeds)
    if len(centres_a):
        bloom = radii_a * rng.uniform(1.1, 1.6, len(radii_a))
        occ = _render_spheres(grid.shape, grid.spacing, centres_a, bloom)
        img = img * (1.0 - occ * rng.uniform(0.65, 0.95))
    img = img * _bias_field(rng, grid.shape, 0.12)
    img = _rician(rng, img, rng.uniform(0.015, 0.045))
    img = img * rng.uniform(300.0, 1500.0)
    return SwiCase(img.astype(np.float32), grid.spacing, centres_a, radii_a, brain, src.name, seed)


# --------------------------------------------------------------------------------------------------------------------
# DWI + ADC with an acute infarct


@dataclass(frozen=True)
class DwiCase:
    """A synthetic diffusion series.

    ``dwi``: float32 (z, y, x) b=1000 trace image; ``adc``: float32 (z, y, x) in 1e-6 mm^2/s (as stored in DICOM ADC
    maps); ``spacing`` (z, y, x) mm; ``mask``: bool (z, y, x) infarct (empty when ``infarct`` is False);
    ``region`` / ``side`` (``left`` | ``right``): where the infarct was put (None without one).
    """

    dwi: np.ndarray
    adc: np.ndarray
    spacing: tuple[float, float, float]
    mask: np.ndarray
    region: Region | None
    side: str | None
    seed: int
    source: str = "mni"


DWI_SOURCES = ("mni", "ct", "seeded")


# Radius ranges (mm) of the lesion seed ellipsoid per region: lacunes in the deep structures, larger cortical infarcts.
_RADIUS = {
    Region.FRONTAL: (7.0, 20.0),
    Region.PARIETAL: (7.0, 20.0),
    Region.TEMPORAL: (7.0, 18.0),
    Region.OCCIPITAL: (7.0, 18.0),
    Region.INSULA: (5.0, 10.0),
    Region.BASAL_GANGLIA: (4.5, 10.0),
    Region.THALAMUS: (4.0, 7.5),
    Region.CORPUS_CALLOSUM: (4.5, 9.0),
    Region.CENTRUM_SEMIOVALE: (5.0, 12.0),
    Region.BRAINSTEM: (4.0, 8.0),
    Region.CEREBELLUM: (6.0, 16.0),
}


@functools.lru_cache(maxsize=32)
def _region_pool(region: Region, side: str) -> tuple[np.ndarray, np.ndarray]:
    """(hemisphere mask, candidate lesion centres) for one region and side, on the MNI grid."""
    atlas = load_mni_atlas()
    x, _, _ = atlas.mm_grid()
    hemi = np.broadcast_to((x > 0) if side == "right" else (x < 0), atlas.labels.shape)
    region_mask = (atlas.labels == region) & hemi & ((atlas.gm + atlas.wm) > 0.5)
    idx = np.argwhere(region_mask)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    inner = ndimage.binary_erosion(region_mask[sl], iterations=2)
    pool = np.argwhere(inner) + lo if inner.sum() > 50 else idx
    return hemi, pool


def _lesion_in_mni(
    rng: np.random.Generator, region: Region, side: str, radius_mm: tuple[float, float] | None = None
) -> np.ndarray:
    """A blob-shaped lesion fraction map on the MNI grid, kept inside the (slightly dilated) region and hemisphere.

    ``radius_mm``: the range the mean radius is drawn from (default: the region's, ``_RADIUS``)."""
    atlas = load_mni_atlas()
    hemi, pool = _region_pool(region, side)
    c = pool[rng.integers(len(pool))]
    r = rng.uniform(*(radius_mm or _RADIUS[region])) * rng.uniform(0.7, 1.3, 3)
    ext = int(np.ceil(r.max() * 1.6)) + 3
    lo = np.maximum(c - ext, 0)
    hi = np.minimum(c + ext + 1, np.asarray(atlas.labels.shape))
    zz, yy, xx = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    rot = _rotation(*rng.uniform(-np.pi, np.pi, 3))
    d = [zz - c[0], yy - c[1], xx - c[2]]
    q = [sum(rot[i, j] * d[j] for j in range(3)) / r[i] for i in range(3)]
    rho = np.sqrt(q[0] ** 2 + q[1] ** 2 + q[2] ** 2)
    noise = ndimage.gaussian_filter(rng.normal(0, 1, rho.shape).astype(np.float32), 3.0)
    noise /= max(float(noise.std()), 1e-6)
    blob = (rho + 0.18 * noise) < 1.0
    sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    tissue = (atlas.gm[sl] + atlas.wm[sl]) > 0.4
    keep = ndimage.binary_dilation((atlas.labels[sl] == region) & tissue, iterations=1) & hemi[sl] & tissue
    blob &= keep
    lab, n = ndimage.label(blob)
    if n > 1:
        sizes = ndimage.sum(blob, lab, index=np.arange(1, n + 1))
        blob = lab == (1 + int(np.argmax(sizes)))
    out = np.zeros(atlas.labels.shape, dtype=np.float32)
    out[sl] = ndimage.gaussian_filter(blob.astype(np.float32), 0.6)
    return out


def make_dwi_case(
    seed: int,
    region: Region | str | None = None,
    side: str | None = None,
    infarct: bool = True,
    source: str = "mni",
    profile: str = "legacy",
) -> DwiCase:
    """A synthetic DWI b=1000 + ADC series with an optional acute infarct, deterministic per seed.

    The infarct has restricted diffusion (ADC 350-550e-6 mm^2/s against ~750-850 in tissue) and T2 shine-through, so
    it is bright on b=1000 and dark on ADC. ``region`` (a ``Region`` or its name) and ``side`` are random when None.
    ``source``: ``mni`` (the MNI152 maps; the default, and what the shipped infarct model's training and held-out
    seeds were made with), ``ct`` (the real head CT's tissue maps; raises ``HeadCTUnavailable`` without it) or
    ``seeded`` (~30% of seeds ``ct`` when it is installed, drawn from a separate stream so that the other seeds give
    exactly their ``mni`` case).
    """
    if source not in DWI_SOURCES:
        raise ValueError(f"source must be one of {DWI_SOURCES}, got {source!r}")
    if profile == "randomised":
        from triage_lab.synth.mr_randomise import randomised_dwi_case

        return randomised_dwi_case(seed, region, side, infarct)
    rng = np.random.default_rng([seed, 4_001])
    if source == "seeded":
        from triage_lab.synth.headct import HeadCTUnavailable

        source = "ct" if np.random.default_rng([seed, 4_002]).random() < 0.3 else "mni"
        if source == "ct":
            try:
                ct_source()
            except HeadCTUnavailable:
                source = "mni"
    src = ct_source() if source == "ct" else mni_source()
    reg: Region | None = None
    if infarct:
        reg = Region.from_name(region) if isinstance(region, str) else (region or Region(int(rng.integers(1, 12))))
        side = side or ("right" if rng.random() < 0.5 else "left")
    else:
        side = None
    grid = _grid(rng, fov_xy=rng.uniform(210, 240), fov_z=rng.uniform(150, 165), dxy=(1.2, 1.8), dz=(3.0, 5.0))
    sub = 2
    pts = _sample_points(rng, grid, src, sub=sub, deform_mm=rng.uniform(0.0, 3.0))
    gm, wm, csf = (_sample(m, pts) for m in (src.gm, src.wm, src.csf))
    lesion = np.zeros(grid.shape, dtype=np.float32)
    if reg is not None and side is not None:
        lesion = _sample(_lesion_in_mni(rng, reg, side), pts if src.name == "mni" else _ct_to_mni_index(pts))
    # Tissue S0 (T2-weighted b=0) and ADC (1e-3 mm^2/s); the lesion replaces the tissue values it covers.
    s0_gm, s0_wm, s0_csf = rng.uniform(0.95, 1.1), rng.uniform(0.8, 0.9), rng.uniform(1.6, 2.0)
    adc_gm, adc_wm, adc_csf = rng.uniform(0.78, 0.9), rng.uniform(0.68, 0.78), rng.uniform(2.8, 3.2)
    s0_les, adc_les = rng.uniform(1.05, 1.35), rng.uniform(0.35, 0.55)
    tissue = gm + wm + csf
    frac_gm, frac_wm, frac_csf = gm * (1 - lesion), wm * (1 - lesion), csf * (1 - lesion)
    les = lesion * np.minimum(gm + wm, 1.0)
    b = 1.0
    dwi = (
        frac_gm * s0_gm * np.exp(-b * adc_gm)
        + frac_wm * s0_wm * np.exp(-b * adc_wm)
        + frac_csf * s0_csf * np.exp(-b * adc_csf)
        + les * s0_les * np.exp(-b * adc_les)
    )
    b0 = frac_gm * s0_gm + frac_wm * s0_wm + frac_csf * s0_csf + les * s0_les
    bias = _bias_field(rng, grid.shape, 0.1)
    sigma = rng.uniform(0.012, 0.03)
    dwi_n = _rician(rng, dwi * bias, sigma)
    b0_n = _rician(rng, b0 * bias, sigma * 0.7)
    with np.errstate(divide="ignore", invalid="ignore"):
        adc = -np.log(np.clip(dwi_n, 1e-4, None) / np.clip(b0_n, 1e-4, None)) * 1000.0
    adc = np.where(tissue > 0.3, np.clip(adc, 0.0, 4000.0), 0.0).astype(np.float32)
    gain = rng.uniform(400.0, 1600.0)
    # On the CT head the fitted atlas can put part of the lesion over CSF, where it changes nothing: label only where
    # it meets tissue. (The MNI maps and the atlas share one grid; their masks stay as the shipped model saw them.)
    mask = (les if src.name == "ct" else lesion) > 0.5
    if reg is not None and mask.sum() == 0:
        # A lesion thinner than the slices: mark its strongest voxels so the label is never silently empty.
        mask = lesion >= max(float(lesion.max()) * 0.7, 1e-3)
    return DwiCase((dwi_n * gain).astype(np.float32), adc, grid.spacing, mask, reg, side, seed, src.name)


def dwi_volume(case: DwiCase) -> Volume:
    """Wrap a DwiCase's b=1000 image as a ``Volume`` with axial LPS geometry (origin at voxel 0)."""
    return _volume(case.dwi, case.spacing, f"dwi{case.seed}")


def swi_volume(case: SwiCase) -> Volume:
    """Wrap a SwiCase as a ``Volume`` with axial LPS geometry."""
    return _volume(case.volume, case.spacing, f"swi{case.seed}")


def _volume(pixels: np.ndarray, spacing: tuple[float, float, float], tag: str) -> Volume:
    uids = tuple(f"2.25.{zlib.crc32(tag.encode())}.{i}" for i in range(pixels.shape[0]))
    return Volume(
        pixels=pixels,
        spacing=spacing,
        origin=(0.0, 0.0, 0.0),
        row_direction=(1.0, 0.0, 0.0),
        col_direction=(0.0, 1.0, 0.0),
        sop_instance_uids=uids,
        modality="MR",
    )
