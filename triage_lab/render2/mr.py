"""Brain MR cases (DWI b=1000 + b=0 + ADC, and SWI magnitude) with their own signal and noise model.

Anatomy: the MNI152 tissue maps (grey, white, CSF) with the region atlas, plus scalp and skull from the MNI pseudo-CT
and hand-placed air spaces (frontal and sphenoid sinuses, mastoids) for susceptibility effects. Everything else is
this module's own:

* DWI signal from a kurtosis model, ``S = S0 exp(-bD + (bD)^2 K / 6)``, per tissue (S0, D, K drawn per case);
* EPI distortion along the phase-encoding (AP) axis from a field made of the air spaces, with pile-up and drop-out;
* acquisition in k-space: 8-24 receive coils with smooth complex sensitivities, complex Gaussian noise per coil,
  k-space truncation (Gibbs ringing) and partial Fourier with zero filling, root-sum-of-squares (non-central chi);
* infarcts as a chain of 2-5 overlapping ellipsoids inside one atlas region and hemisphere (lacunes in deep regions);
* SWI microbleeds as a void with a dipole-shaped blooming halo (dark lobes along B0 = z, none at the magic angle);
  veins as dark tubes, many running through the slice (dots in cross-section); calcified pineal and choroid plexus;
  signal loss at the air-bone interfaces.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage

from triage_lab.render2.geometry import HeadFrame, Planes, Pose, axial_planes, draw_pose, plane_grid, sample_grid
from triage_node.inference.atlas import REGION_NAMES, Region

STREAM_DWI = 7_201
STREAM_SWI = 7_202
CHANNELS = ("gm", "wm", "csf", "scalp", "bone", "air", "deep", "lesion")


@dataclass(frozen=True)
class MrAnatomy:
    """MNI-grid arrays, axes (i, j, k) = (x right, y anterior, z superior); ``maps`` (C, i, j, k) float32 in CHANNELS
    order (``lesion`` zero), ``labels`` atlas regions, ``frame`` head mm (LPS-like, brain-centred) -> index."""

    maps: np.ndarray
    labels: np.ndarray
    affine: np.ndarray
    frame: HeadFrame
    brain_mm: np.ndarray  # (N, 3) head mm of a subsample of brain voxels


def _ellipsoids(
    affine: np.ndarray, shape: tuple[int, ...], items: list[tuple[tuple[float, ...], tuple[float, ...]]]
) -> np.ndarray:
    ii, jj, kk = (np.arange(n, dtype=np.float32) for n in shape)
    x = (ii * affine[0, 0] + affine[0, 3])[:, None, None]
    y = (jj * affine[1, 1] + affine[1, 3])[None, :, None]
    z = (kk * affine[2, 2] + affine[2, 3])[None, None, :]
    out = np.zeros(shape, np.float32)
    for c, r in items:
        d = ((x - c[0]) / r[0]) ** 2 + ((y - c[1]) / r[1]) ** 2 + ((z - c[2]) / r[2]) ** 2
        out = np.maximum(out, np.clip((1.0 - d) * 4.0, 0.0, 1.0)).astype(np.float32)
    return out


@functools.lru_cache(maxsize=1)
def mr_anatomy() -> MrAnatomy:
    from triage_lab.synth.anatomy import head_model
    from triage_lab.synth.mr import mni_source
    from triage_lab.synth.tissue import Tissue

    src = mni_source()
    assert src.labels is not None
    pseudo = head_model("mni").labels  # (z, y anterior first, x) -> MNI (i, j, k)
    lab = np.ascontiguousarray(pseudo[:, ::-1, :].transpose(2, 1, 0))
    if lab.shape != src.gm.shape:
        raise ValueError(f"pseudo-CT grid {lab.shape} differs from the MNI maps {src.gm.shape}")
    aff = src.index_to_ras
    air = _ellipsoids(
        aff,
        lab.shape,
        [
            ((0.0, 64.0, 6.0), (13.0, 7.0, 11.0)),  # frontal sinus
            ((0.0, 14.0, -24.0), (11.0, 11.0, 9.0)),  # sphenoid sinus
            ((44.0, -30.0, -34.0), (9.0, 11.0, 9.0)),  # mastoid air cells
            ((-44.0, -30.0, -34.0), (9.0, 11.0, 9.0)),
        ],
    )
    deep = np.isin(src.labels, (Region.BASAL_GANGLIA, Region.THALAMUS)).astype(np.float32)
    scalp = (lab == Tissue.SOFT).astype(np.float32) * (1.0 - air)
    bone = (lab == Tissue.BONE).astype(np.float32) * (1.0 - air)
    zeros = np.zeros(lab.shape, np.float32)
    maps = np.stack([src.gm, src.wm, src.csf, scalp, bone, air, deep, zeros]).astype(np.float32)
    brain = np.argwhere((src.gm + src.wm) > 0.5)
    ras = brain @ aff[:3, :3].T + aff[:3, 3]
    centre_lps = (ras * np.array([-1.0, -1.0, 1.0])).mean(axis=0)
    flip = np.diag([-1.0, -1.0, 1.0])
    ainv = np.linalg.inv(aff)
    matrix = ainv[:3, :3] @ flip
    offset = matrix @ centre_lps + ainv[:3, 3]
    frame = HeadFrame(matrix, offset, lab.shape)
    rng = np.random.default_rng(0)
    sub = brain[rng.choice(len(brain), 20_000, replace=False)]
    return MrAnatomy(maps, src.labels, aff, frame, frame.to_head(sub))


# ---------------------------------------------------------------------------------------------------------------------
# Shared acquisition


@dataclass(frozen=True)
class MrAcquisition:
    matrix: int
    acquired: int
    partial_fourier: float
    coils: int
    noise: float
    fov_mm: float
    thickness: float
    gap: float
    sub: int


def _plan(rng: np.random.Generator, pose: Pose, acq: MrAcquisition) -> Planes:
    a = mr_anatomy()
    pts = pose.head_to_patient(a.brain_mm)
    z0, z1 = float(pts[:, 2].min()) - 6.0, float(pts[:, 2].max()) + 4.0
    centre = pts[:, :2].mean(axis=0) + rng.uniform(-5.0, 5.0, 2)
    z = np.arange(z0, z1, acq.thickness + acq.gap)
    return axial_planes(z, acq.matrix, acq.fov_mm, acq.thickness, acq.sub, 0.0, (float(centre[0]), float(centre[1])))


def _sample(maps: np.ndarray, pose: Pose, planes: Planes) -> np.ndarray:
    """Slab-averaged channels (C, slices, rows, cols) float32."""
    a = mr_anatomy()
    vol = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    out = np.empty((maps.shape[0], planes.n_slices, planes.rows, planes.cols), np.float32)
    for k in range(planes.n_slices):
        pts = planes.points(k)
        grid = plane_grid(a.frame, pose, pts)
        out[:, k] = sample_grid(vol, grid, pts.shape[:-1]).mean(dim=1).numpy()
    return out


def _coil_maps(rng: np.random.Generator, n: int, coils: int) -> torch.Tensor:
    """Smooth complex sensitivities (coils, n, n): Gaussian lobes centred around the head, with a slow phase."""
    c = (np.arange(n) - (n - 1) / 2.0) / (n / 2.0)
    yy, xx = np.meshgrid(c, c, indexing="ij")
    maps = []
    for i in range(coils):
        ang = 2 * np.pi * i / coils + rng.uniform(-0.2, 0.2)
        cy, cx = 0.95 * np.sin(ang), 0.95 * np.cos(ang)
        w = rng.uniform(0.5, 0.9)
        mag = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * w * w))
        phase = rng.uniform(-np.pi, np.pi) + rng.uniform(-1.0, 1.0) * (xx * rng.normal() + yy * rng.normal())
        maps.append(mag * np.exp(1j * phase))
    m = np.stack(maps)
    m /= np.sqrt((np.abs(m) ** 2).sum(axis=0)).max()
    return torch.from_numpy(m.astype(np.complex64))


def acquire(rng: np.random.Generator, images: np.ndarray, acq: MrAcquisition, coils: torch.Tensor) -> np.ndarray:
    """Images (slices, n, n) -> magnitude after coil encoding, k-space truncation to ``acq.acquired`` lines, partial
    Fourier along the phase-encoding (row) axis, complex noise and root-sum-of-squares; (slices, n, n) float32."""
    n, m = acq.matrix, acq.acquired
    lo = (n - m) // 2
    pf_rows = int(round(m * (1.0 - acq.partial_fourier)))
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    centred = torch.zeros(n, n)
    centred[lo + pf_rows : lo + m, lo : lo + m] = 1.0  # acquired lines (the first ones skipped: partial Fourier)
    mask = torch.fft.ifftshift(centred).to(torch.complex64)  # in FFT order, so k-space is never shifted
    sigma = acq.noise / np.sqrt(2.0)
    out = np.empty(images.shape, np.float32)
    for k in range(images.shape[0]):
        x = torch.from_numpy(images[k]).to(torch.complex64)[None] * coils  # (coils, n, n)
        noise = torch.complex(torch.randn(x.shape, generator=gen), torch.randn(x.shape, generator=gen)) * sigma
        kspace = (torch.fft.fft2(x, norm="ortho") + noise) * mask
        img = torch.fft.ifft2(kspace, norm="ortho")
        out[k] = torch.sqrt((img.real**2 + img.imag**2).sum(dim=0)).numpy()
    return out


def draw_mr_acquisition(
    rng: np.random.Generator,
    matrices: tuple[int, ...],
    fov: tuple[float, float],
    thick: tuple[float, float],
    gap: float,
) -> MrAcquisition:
    n = int(rng.choice(matrices))
    return MrAcquisition(
        matrix=n,
        acquired=int(2 * round(n * rng.uniform(0.62, 1.0) / 2)),
        partial_fourier=float(rng.choice([0.625, 0.75, 0.875, 1.0])),
        coils=int(rng.integers(8, 25)),
        noise=float(rng.uniform(0.012, 0.035)),
        fov_mm=float(rng.uniform(*fov)),
        thickness=float(round(rng.uniform(*thick), 1)),
        gap=float(round(rng.uniform(0.0, gap), 1)),
        sub=3,
    )


def _susceptibility(rng: np.random.Generator, air: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """A field offset map (slices, rows, cols), unit-free in about [-1, 1]: the z-derivative of the smoothed air
    spaces (a dipole-like pattern above and below each)."""
    sigma = [rng.uniform(5.0, 9.0) / s for s in spacing]
    sm = ndimage.gaussian_filter(air, sigma)
    f = np.gradient(sm, axis=0) / spacing[0] * 20.0 + 0.4 * sm
    return np.clip(f, -1.5, 1.5).astype(np.float32)


# ---------------------------------------------------------------------------------------------------------------------
# DWI


WEIGHTS = {
    Region.FRONTAL: 3.0,
    Region.PARIETAL: 3.0,
    Region.TEMPORAL: 3.0,
    Region.OCCIPITAL: 2.0,
    Region.CEREBELLUM: 1.5,
    Region.BASAL_GANGLIA: 1.0,
    Region.THALAMUS: 1.0,
    Region.INSULA: 0.7,
}
DEEP = (Region.BASAL_GANGLIA, Region.THALAMUS, Region.INSULA, Region.BRAINSTEM, Region.CORPUS_CALLOSUM)


@dataclass(frozen=True)
class DwiCase:
    """``b1000``, ``b0`` magnitudes and ``adc`` (1e-6 mm^2/s), float32 (slices, rows, cols); ``mask`` infarct truth;
    ``region`` / ``side`` where it was put (None for a normal); ``mimics`` what normal-variant signal was added."""

    seed: int
    b1000: np.ndarray
    b0: np.ndarray
    adc: np.ndarray
    planes: Planes
    mask: np.ndarray
    region: Region | None
    side: str | None
    volume_ml: float
    mimics: tuple[str, ...]
    acquisition: MrAcquisition
    info: dict[str, object] = field(default_factory=dict)

    @property
    def location(self) -> str | None:
        return f"{self.side} {REGION_NAMES[self.region]}" if self.region is not None else None


def _infarct(rng: np.random.Generator, region: Region, side: str) -> np.ndarray:
    """A lesion fraction map on the MNI grid: 2-5 ellipsoids along a wandering path, inside region and hemisphere."""
    a = mr_anatomy()
    x_mm = np.arange(a.labels.shape[0]) * a.affine[0, 0] + a.affine[0, 3]
    hemi = (x_mm > 0) if side == "right" else (x_mm < 0)
    tissue = (a.maps[0] + a.maps[1]) > 0.5
    reg = (a.labels == region) & hemi[:, None, None] & tissue
    pool = np.argwhere(ndimage.binary_erosion(reg, iterations=2))
    if len(pool) < 20:
        pool = np.argwhere(reg)
    p = pool[int(rng.integers(len(pool)))].astype(np.float64)
    deep = region in DEEP
    n_blobs = int(rng.integers(1, 3)) if deep else int(rng.integers(2, 6))
    size = rng.uniform(3.0, 6.5) if deep else rng.uniform(5.0, 12.0)
    step = rng.normal(size=3)
    centres, radii = [], []
    for _ in range(n_blobs):
        centres.append(p.copy())
        radii.append(size * rng.uniform(0.6, 1.3, 3))
        step = 0.6 * step + rng.normal(size=3)
        p = p + step / max(float(np.linalg.norm(step)), 1e-6) * size * rng.uniform(0.7, 1.2)
    c_arr = np.asarray(centres)
    lo = np.maximum(np.floor(c_arr.min(axis=0) - 2 * size - 2).astype(int), 0)
    hi = np.minimum(np.ceil(c_arr.max(axis=0) + 2 * size + 3).astype(int), np.asarray(a.labels.shape))
    sl = tuple(slice(int(x), int(y)) for x, y in zip(lo, hi, strict=True))
    ii, jj, kk = np.ogrid[sl[0], sl[1], sl[2]]
    blob = np.zeros(tuple(int(y - x) for x, y in zip(lo, hi, strict=True)), np.float32)
    for c, r in zip(centres, radii, strict=True):
        d = ((ii - c[0]) / r[0]) ** 2 + ((jj - c[1]) / r[1]) ** 2 + ((kk - c[2]) / r[2]) ** 2
        blob = np.maximum(blob, np.clip((1.0 - d) * 3.0, 0.0, 1.0))
    allowed = ndimage.binary_dilation(reg[sl], iterations=2) & hemi[sl[0], None, None] & tissue[sl]
    out = np.zeros(a.labels.shape, np.float32)
    out[sl] = blob * allowed
    return out


def _dominant_region(lesion: np.ndarray) -> Region | None:
    labels = mr_anatomy().labels[lesion > 0.5]
    counts = np.bincount(labels, minlength=len(Region) + 1)[1:]
    return Region(int(np.argmax(counts)) + 1) if counts.sum() else None


def _signal(s0: float, d: float, k: float, b: float) -> float:
    bd = b * d * 1e-3
    return float(s0 * np.exp(-bd + bd * bd * k / 6.0))


def make_dwi_case(seed: int, infarct: bool = True, region: Region | None = None, side: str | None = None) -> DwiCase:
    rng = np.random.default_rng([seed, STREAM_DWI])
    a = mr_anatomy()
    maps = a.maps.copy()
    reg: Region | None = None
    if infarct:
        regions = list(WEIGHTS)
        w = np.array([WEIGHTS[r] for r in regions])
        reg = region or regions[int(rng.choice(len(regions), p=w / w.sum()))]
        side = side or ("left" if rng.random() < 0.5 else "right")
        maps[CHANNELS.index("lesion")] = _infarct(rng, reg, side)
        reg = _dominant_region(maps[CHANNELS.index("lesion")]) or reg
    else:
        side = None
    mimics: list[str] = []
    shine = rng.random() < (0.45 if not infarct else 0.2)
    if shine:  # T2 shine-through: a periventricular white-matter patch, bright at b=0, facilitated diffusion
        sh_side = 1.0 if rng.random() < 0.5 else -1.0
        c = (sh_side * rng.uniform(18.0, 28.0), rng.uniform(-30.0, 15.0), rng.uniform(12.0, 28.0))
        r = tuple(float(v) for v in rng.uniform(5.0, 11.0, 3))
        patch = _ellipsoids(a.affine, a.labels.shape, [(c, r)]) * a.maps[1]
        mimics.append("t2_shine_through")
    pose = draw_pose(rng, yaw_deg=8.0, pitch_deg=10.0, roll_deg=5.0, scale=(0.9, 1.1), warp_mm=(0.5, 2.5))
    acq = draw_mr_acquisition(rng, (128, 160, 192, 256), (220.0, 245.0), (3.0, 5.0), 1.0)
    planes = _plan(rng, pose, acq)
    ch = _sample(maps, pose, planes)
    sh = _sample(patch[None], pose, planes)[0] if shine else np.zeros(ch.shape[1:], np.float32)
    gm, wm, csf, scalp, _, air, _, les = ch
    bright_cortex = rng.random() < (0.4 if not infarct else 0.2)
    if bright_cortex:
        mimics.append("bright_cortex")
    p = {
        "gm": (rng.uniform(0.95, 1.15) * (rng.uniform(1.15, 1.35) if bright_cortex else 1.0), rng.uniform(0.74, 0.92),
               rng.uniform(0.65, 0.95)),
        "wm": (rng.uniform(0.72, 0.9), rng.uniform(0.62, 0.8), rng.uniform(0.85, 1.2)),
        "csf": (rng.uniform(1.7, 2.5), rng.uniform(2.7, 3.1), 0.0),
        "scalp": (rng.uniform(0.05, 0.2), rng.uniform(0.3, 0.6), 0.5),
        "lesion": (rng.uniform(1.05, 1.4), rng.uniform(0.28, 0.52), rng.uniform(1.0, 1.5)),
        "shine": (rng.uniform(1.7, 2.4), rng.uniform(1.1, 1.6), rng.uniform(0.3, 0.7)),
    }
    tissue = gm + wm
    les = np.clip(les, 0.0, 1.0) * np.minimum(tissue, 1.0)
    sh = np.clip(sh, 0.0, 1.0) * (1.0 - les)
    keep = 1.0 - les - sh
    parts = {"gm": gm * keep, "wm": wm * keep, "csf": csf, "scalp": scalp, "lesion": les, "shine": sh}
    b0 = sum(frac * p[name][0] for name, frac in parts.items())
    b1000 = sum(frac * _signal(*p[name], b=1000.0) for name, frac in parts.items())
    spacing = (acq.thickness + acq.gap, planes.pixel[0], planes.pixel[1])
    field_map = _susceptibility(rng, air, spacing)
    strength = rng.uniform(2.0, 9.0) if rng.random() < (0.6 if not infarct else 0.35) else rng.uniform(0.5, 2.0)
    if strength > 2.0:
        mimics.append("susceptibility")
    b0, b1000 = (_distort(np.asarray(img, np.float32), field_map, strength / planes.pixel[0]) for img in (b0, b1000))
    coils = _coil_maps(rng, acq.matrix, acq.coils)
    b1000_m = acquire(rng, b1000, acq, coils)
    b0_m = acquire(rng, b0, acq, coils)
    with np.errstate(divide="ignore", invalid="ignore"):
        adc = np.log(np.clip(b0_m, 1e-4, None) / np.clip(b1000_m, 1e-4, None)) / 1000.0 * 1e6
    adc = np.where(b0_m > 0.15 * np.percentile(b0_m, 99), np.clip(adc, 0.0, 4000.0), 0.0).astype(np.float32)
    gain = rng.uniform(500.0, 2500.0)
    mask = les >= 0.5
    vox_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0
    volume = float(les.sum() * vox_ml)
    if infarct and not mask.any():
        mask = les >= max(0.7 * float(les.max()), 1e-3)
    return DwiCase(
        seed, (b1000_m * gain).astype(np.float32), (b0_m * gain).astype(np.float32), adc, planes, mask, reg,
        side, volume, tuple(mimics), acq,
    )


def _distort(img: np.ndarray, field_map: np.ndarray, shift_px: float) -> np.ndarray:
    """EPI distortion along rows (phase encoding, AP): displacement ``shift_px * field``, intensity times the local
    Jacobian (pile-up where compressed, stretching where expanded) and drop-out where the field varies across a
    voxel."""
    if shift_px <= 0:
        return img
    d = field_map * shift_px
    out = np.empty_like(img)
    rows, cols = img.shape[1:]
    rr, cc = np.meshgrid(np.arange(rows, dtype=np.float32), np.arange(cols, dtype=np.float32), indexing="ij")
    for k in range(img.shape[0]):
        src = rr - d[k]
        jac = np.clip(1.0 - np.gradient(d[k], axis=0), 0.0, 3.0)
        warped = ndimage.map_coordinates(img[k], [src, cc], order=1, mode="constant")
        dz = np.abs(np.gradient(d, axis=0)[k]) if img.shape[0] > 1 else 0.0
        out[k] = warped * jac * np.exp(-((0.6 * dz) ** 2))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# SWI


@dataclass(frozen=True)
class SwiCase:
    """``magnitude`` float32 (slices, rows, cols); ``centres`` (N, 3) patient LPS mm and ``radii`` (N,) mm of the
    microbleeds; ``mimics``: veins, calcifications, air-bone signal loss."""

    seed: int
    magnitude: np.ndarray
    planes: Planes
    centres: np.ndarray
    radii: np.ndarray
    mimics: tuple[str, ...]
    acquisition: MrAcquisition
    info: dict[str, object] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(len(self.centres))


def _voxel_centres(planes: Planes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient coordinates of every output voxel as three (slices, rows, cols) arrays (axial, untilted)."""
    z = planes.origins[:, 2][:, None, None]
    y = planes.origins[0, 1] + np.arange(planes.rows)[None, :, None] * planes.pixel[0]
    x = planes.origins[0, 0] + np.arange(planes.cols)[None, None, :] * planes.pixel[1]
    return np.broadcast_to(x, (planes.n_slices, planes.rows, planes.cols)), np.broadcast_to(
        y, (planes.n_slices, planes.rows, planes.cols)
    ), np.broadcast_to(z, (planes.n_slices, planes.rows, planes.cols))


def _local(planes: Planes, centre: np.ndarray, half: float) -> tuple[tuple[slice, ...], tuple[np.ndarray, ...]]:
    """Output-voxel box around a patient point and the voxels' offsets (dx, dy, dz) from it, sub-sampled across the
    slice thickness: arrays (sub, z, y, x)."""
    dz = planes.origins[1, 2] - planes.origins[0, 2] if planes.n_slices > 1 else planes.thickness
    k0 = (centre[2] - planes.origins[0, 2]) / dz
    r0 = (centre[1] - planes.origins[0, 1]) / planes.pixel[0]
    c0 = (centre[0] - planes.origins[0, 0]) / planes.pixel[1]
    hk, hr = int(np.ceil(half / dz)) + 1, int(np.ceil(half / planes.pixel[0])) + 1
    sl = (
        slice(max(int(k0) - hk, 0), min(int(k0) + hk + 2, planes.n_slices)),
        slice(max(int(r0) - hr, 0), min(int(r0) + hr + 2, planes.rows)),
        slice(max(int(c0) - hr, 0), min(int(c0) + hr + 2, planes.cols)),
    )
    offs = ((np.arange(planes.sub) + 0.5) / planes.sub - 0.5) * planes.thickness
    kk = np.arange(sl[0].start, sl[0].stop)[None, :, None, None] * dz + offs[:, None, None, None] + planes.origins[0, 2]
    rr = np.arange(sl[1].start, sl[1].stop)[None, None, :, None] * planes.pixel[0] + planes.origins[0, 1]
    cc = np.arange(sl[2].start, sl[2].stop)[None, None, None, :] * planes.pixel[1] + planes.origins[0, 0]
    return sl, (cc - centre[0], rr - centre[1], kk - centre[2])


def _bleed(planes: Planes, img: np.ndarray, centre: np.ndarray, radius: float, bloom: float, depth: float) -> None:
    """A microbleed: a void of ``radius`` and a dipole halo, ``|d| = (R/r)^3 |3 cos^2 - 1|``, attenuating the
    magnitude by ``exp(-(1.2 d)^2)`` with R = bloom * radius; averaged across the slice thickness."""
    big = radius * bloom
    sl, (dx, dy, dz) = _local(planes, centre, 3.2 * big)
    r = np.sqrt(dx * dx + dy * dy + dz * dz) + 1e-3
    cos2 = (dz / r) ** 2
    dip = (big / np.maximum(r, big * 0.9)) ** 3 * np.abs(3.0 * cos2 - 1.0)
    core = np.clip((radius - r) / 0.5 + 0.5, 0.0, 1.0)
    factor = np.exp(-((1.2 * dip) ** 2)) * (1.0 - depth * core)
    factor = np.minimum(factor, 1.0 - depth * np.clip((big - r) / 0.7 + 0.5, 0.0, 1.0) * 0.8)
    img[sl] *= factor.mean(axis=0)


def _tube(planes: Planes, img: np.ndarray, pts: np.ndarray, radius: float, darkness: float) -> None:
    """A vein along the polyline ``pts`` (M, 3) patient mm: multiply by (1 - darkness) inside, soft edge."""
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    centre, half = (lo + hi) / 2.0, float((hi - lo).max()) / 2.0 + radius + 2.0
    sl, (dx, dy, dz) = _local(planes, centre, half)
    q = np.stack(np.broadcast_arrays(dx + centre[0], dy + centre[1], dz + centre[2]), axis=-1)
    dist = np.full(q.shape[:-1], np.inf, np.float32)
    for a, b in zip(pts[:-1], pts[1:], strict=True):
        ab = b - a
        t = np.clip(((q - a) @ ab) / max(float(ab @ ab), 1e-6), 0.0, 1.0)
        dist = np.minimum(dist, np.linalg.norm(q - (a + t[..., None] * ab), axis=-1))
    occ = np.clip((radius - dist) / 0.5 + 0.5, 0.0, 1.0)
    img[sl] *= (1.0 - darkness * occ).mean(axis=0)


def make_swi_case(seed: int, n_bleeds: int | None = None) -> SwiCase:
    rng = np.random.default_rng([seed, STREAM_SWI])
    if n_bleeds is None:
        n_bleeds = 0 if rng.random() < 0.4 else int(rng.integers(1, 9))
    a = mr_anatomy()
    pose = draw_pose(rng, yaw_deg=8.0, pitch_deg=10.0, roll_deg=5.0, scale=(0.9, 1.1), warp_mm=(0.5, 2.5))
    acq = draw_mr_acquisition(rng, (256,), (215.0, 240.0), (2.0, 3.0), 0.0)
    acq = MrAcquisition(**{**acq.__dict__, "sub": 2})
    planes = _plan(rng, pose, acq)
    gm, wm, csf, scalp, bone, air, deep = _sample(a.maps[:-1], pose, planes)
    img = (
        gm * rng.uniform(0.6, 0.78) + wm * rng.uniform(0.46, 0.6) + csf * rng.uniform(0.8, 1.0)
        + scalp * rng.uniform(0.55, 0.9) + bone * 0.03
    ) * (1.0 - deep * rng.uniform(0.12, 0.35))
    img = img.astype(np.float32)
    mimics: list[str] = []
    x, y, z = _voxel_centres(planes)
    parenchyma = ndimage.binary_erosion((gm + wm) > 0.85, iterations=1)
    spacing = (planes.origins[1, 2] - planes.origins[0, 2], planes.pixel[0], planes.pixel[1])
    # Air-bone interfaces: drop-out from the field gradient near the sinuses and mastoids.
    f = _susceptibility(rng, air, spacing)
    grad = np.sqrt(sum(g * g for g in np.gradient(f)))
    img *= np.exp(-((rng.uniform(3.0, 8.0) * grad) ** 2)).astype(np.float32)
    mimics.append("air_bone")
    # Veins: some running through the slices (dots in cross-section), some in plane.
    brainish = np.argwhere((gm + wm + csf) > 0.6)
    avoid: list[np.ndarray] = []
    for _ in range(int(rng.integers(10, 30))):
        v = brainish[int(rng.integers(len(brainish)))]
        p0 = np.array([x[tuple(v)], y[tuple(v)], z[tuple(v)]])
        through = rng.random() < 0.6
        d = np.array([rng.normal(0, 0.25), rng.normal(0, 0.25), 1.0])
        if not through:
            d = np.append(rng.normal(size=2), 0.2)
        d /= np.linalg.norm(d)
        length = rng.uniform(15.0, 40.0)
        pts = np.stack([p0 + d * t + rng.normal(0, 0.8, 3) * (t > 0) for t in np.linspace(0, length, 6)])
        _tube(planes, img, pts, rng.uniform(0.5, 1.1), rng.uniform(0.35, 0.75))
        avoid.extend(pts)
    mimics.append("veins")
    if rng.random() < 0.6:  # calcified pineal and choroid plexus: dark foci outside the parenchyma
        head_pts = np.array([[0.0, 12.0, 0.0], [-24.0, 24.0, 12.0], [24.0, 24.0, 12.0]])  # head LPS mm from centre
        for hp in head_pts:
            c = pose.head_to_patient(hp[None] + rng.normal(0, 1.5, 3))[0]
            _bleed(planes, img, c, rng.uniform(1.2, 2.5), 1.0, rng.uniform(0.4, 0.7))
            avoid.append(c)
        mimics.append("calcification")
    # Microbleeds: in parenchyma, >= 10 mm apart and >= 6 mm from veins and calcifications.
    cand = np.argwhere(parenchyma)
    centres: list[np.ndarray] = []
    radii: list[float] = []
    avoid_arr = np.asarray(avoid).reshape(-1, 3)
    tries = 0
    while len(centres) < n_bleeds and tries < 2000 and len(cand):
        tries += 1
        v = cand[int(rng.integers(len(cand)))]
        c = np.array([x[tuple(v)], y[tuple(v)], z[tuple(v)]]) + rng.uniform(-0.4, 0.4, 3)
        if any(np.linalg.norm(c - o) < 10.0 for o in centres):
            continue
        if len(avoid_arr) and np.min(np.linalg.norm(avoid_arr - c, axis=1)) < 6.0:
            continue
        r = float(rng.uniform(1.0, 5.0))
        _bleed(planes, img, c, r, rng.uniform(1.1, 1.6), rng.uniform(0.75, 0.95))
        centres.append(c)
        radii.append(r)
    coils = _coil_maps(rng, acq.matrix, acq.coils)
    mag = acquire(rng, img, acq, coils) * rng.uniform(600.0, 3000.0)
    return SwiCase(
        seed, mag.astype(np.float32), planes, np.asarray(centres).reshape(-1, 3), np.asarray(radii), tuple(mimics), acq
    )
