"""Domain-randomised synthetic head CT (the training generator since ich 2.0).

In the spirit of SynthSeg (Billot et al., 2023): instead of rendering one way, every appearance and acquisition
parameter is drawn at random per case over wide ranges, so that a model cannot learn the generator and has to learn
the lesion. The order follows a real scan:

1. the head in its source space (the invesalius CT or the MNI pseudo-CT): atrophy (CSF spaces widened), tissue
   densities jittered, mimics painted (:mod:`triage_lab.synth.mimics`), lesions drawn and painted with a drawn age
   (density), edge and texture;
2. geometry: pose and gantry tilt, head size, a strong smooth deformation, field of view; each output slice integrates
   its slab (thickness 0.6-5 mm, sub-sampled) so blood, bone and brain mix by partial volume as on a scanner;
3. the scanner: reconstruction kernel (edge response, noise level and texture), HU calibration offset, cupping, a
   beam-hardening band between the petrous bones, streaks, motion; integer storage of a drawn kind.

Lesion masks go through the same geometry and slab as the pixels; a voxel is lesion when at least half its slab is.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from triage_lab.synth.acquisition import Acquisition, _rotation, draw_randomised
from triage_lab.synth.anatomy import HeadModel, head_model
from triage_lab.synth.hemorrhage import Canvas, _smooth_noise, draw_lesion
from triage_lab.synth.mimics import add_mimics
from triage_lab.synth.tissue import Tissue

SUB_SLICE_MM = 1.2  # slab sub-sampling step (the source heads are 1-1.5 mm through-plane)
MAX_SUB = 5


@functools.lru_cache(maxsize=2)
def source_canvas(source: str) -> Canvas:
    head = head_model(source)
    return Canvas.from_labels(head.labels, head.spacing)


def vary_anatomy(head: HeadModel, canvas: Canvas, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """The head's HU with atrophy (sulci and ventricles widened into the brain) and jittered tissue densities."""
    hu = head.hu.astype(np.float32, copy=True)
    labels = head.labels
    if acq.atrophy_mm > 0:
        dist = _csf_distance(head.name)
        widen = (labels == Tissue.BRAIN) & (dist <= acq.atrophy_mm)
        hu[widen] = rng.uniform(2.0, 10.0) + rng.normal(0, 2.0, int(widen.sum()))
    d_brain, d_csf, d_soft = acq.tissue_jitter
    grey_white = rng.uniform(-3.0, 3.0)  # grey-white contrast varies with kernel and age
    brain = labels == Tissue.BRAIN
    hu[brain] += d_brain + grey_white * np.clip((hu[brain] - 30.0) / 8.0, -1.0, 1.0)
    hu[np.isin(labels, [Tissue.CSF, Tissue.VENTRICLE])] += d_csf
    hu[labels == Tissue.SOFT] += d_soft
    return hu


def paint_lesion(hu: np.ndarray, mask: np.ndarray, rng: np.random.Generator, subtype: str) -> np.ndarray:
    """Acute blood of a drawn age: density 45-92 HU (hyperacute blood is less dense), a drawn edge width and texture,
    sometimes a swirl (unclotted pockets) and, for intraparenchymal blood, an oedema rim."""
    if not mask.any():
        return hu
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - 4, 0)
    hi = np.minimum(idx.max(axis=0) + 5, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    m = mask[box]
    if rng.random() < 0.15:
        base = rng.uniform(46, 56)  # hyperacute
    else:
        base = rng.uniform(55, 92) if subtype != "subarachnoid" else rng.uniform(50, 78)
    blood = base + rng.uniform(1.5, 7.0) * _smooth_noise(m.shape, rng, (0.5, rng.uniform(0.7, 2.0), 1.2))
    if subtype in ("epidural", "subdural", "intraparenchymal") and rng.random() < 0.2:
        swirl = _smooth_noise(m.shape, rng, (0.7, 2.0, 2.0)) > 1.0
        blood = np.where(swirl, blood - rng.uniform(12, 25), blood)
    edge = rng.uniform(0.3, 1.4)
    alpha = ndimage.gaussian_filter(m.astype(np.float32), sigma=(0.0, edge, edge))
    alpha = np.where(m, np.maximum(alpha, 0.8), alpha * 0.6)
    out = hu.copy()
    sub = out[box]
    if subtype == "intraparenchymal" and rng.random() < 0.8:
        rim = ndimage.binary_dilation(m, iterations=int(rng.integers(1, 4))) & ~m
        sub[rim] -= rng.uniform(3, 12)
    touched = alpha > 0.01
    a = alpha[touched]
    sub[touched] = sub[touched] * (1 - a) + blood[touched] * a
    return out


def _warp(q: np.ndarray, rng: np.random.Generator, amplitude_mm: float) -> np.ndarray:
    """A smooth elastic deformation of grid points ``q`` (3, nz, m, m): a sum of random long-wavelength sinusoids
    (5-8 of them, 40-140 mm), evaluated on a grid 8x coarser in-plane and interpolated up (it is smooth anyway)."""
    import torch
    import torch.nn.functional as F

    coarse = q[:, :, ::8, ::8].reshape(3, -1).astype(np.float64)
    disp = np.zeros_like(coarse)
    for _ in range(int(rng.integers(5, 9))):
        k = rng.normal(size=3)
        k = k / np.linalg.norm(k) * (2 * np.pi / rng.uniform(40, 140))
        amp = rng.normal(size=3) * amplitude_mm / np.sqrt(3)
        disp += amp[:, None] * np.sin(k @ coarse + rng.uniform(0, 2 * np.pi))[None, :]
    shape = q.shape
    d = torch.from_numpy(disp.reshape(3, shape[1], *q[:, :, ::8, ::8].shape[2:]).astype(np.float32))
    d = F.interpolate(d, size=shape[2:], mode="bilinear", align_corners=False)
    return q + d.numpy()


@functools.lru_cache(maxsize=2)
def _csf_distance(source: str) -> np.ndarray:
    head = head_model(source)
    csf = np.isin(head.labels, [Tissue.CSF, Tissue.VENTRICLE])
    return ndimage.distance_transform_edt(~csf, sampling=head.spacing).astype(np.float32)


def _upsample(v: np.ndarray, factor: int, nearest: bool = False) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))[:, None]
    if nearest:
        out = F.interpolate(t, scale_factor=factor, mode="nearest")
    else:
        out = F.interpolate(t, scale_factor=factor, mode="bilinear", align_corners=False)
    return out[:, 0].numpy()


def slab_sample(
    head: HeadModel,
    volumes: dict[str, np.ndarray],
    acq: Acquisition,
    rng: np.random.Generator,
    n_slices: int | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray, tuple[float, float, float]]:
    """Resample source-space float ``volumes`` onto the drawn axial grid, each slice the mean over its slab.

    Returns the slab means (nz, m, m) per key, the tissue labels at the slab centres (uint8) and the spacing. The grid
    is rendered at 256 x 256 at most; a 512 matrix is interpolated up (the source heads hold no finer detail) and gets
    its noise at 512.
    """
    sp = np.asarray(head.spacing)
    ic = np.argwhere(head.intracranial())
    zlo, zhi = ic[:, 0].min() * sp[0], ic[:, 0].max() * sp[0]
    extent = (zhi - zlo) * acq.head_scale + 14.0
    if n_slices is None:
        nz = max(4, int(round(extent / acq.slice_mm)))
        dz = acq.slice_mm
    else:
        nz, dz = n_slices, extent / n_slices
    m_out = acq.matrix
    m = min(m_out, 256)
    px = acq.pixel_mm * m_out / m
    k = int(np.clip(np.ceil(acq.thickness_mm / SUB_SLICE_MM), 1, MAX_SUB))
    sub = ((np.arange(k) + 0.5) / k - 0.5) * acq.thickness_mm
    zc = (np.arange(nz) - (nz - 1) / 2.0) * dz
    zs = (zc[:, None] + sub[None, :]).ravel()
    zz, yy, xx = np.meshgrid(zs, (np.arange(m) - (m - 1) / 2.0) * px, (np.arange(m) - (m - 1) / 2.0) * px,
                             indexing="ij")
    q = np.stack([zz, yy, xx], axis=0).astype(np.float32)
    if acq.warp_mm > 0:
        q = _warp(q, rng, acq.warp_mm)
    q = q.reshape(3, -1)
    rot = _rotation(acq.yaw, acq.pitch, acq.roll).astype(np.float32)
    centre = head.centre_mm()
    centre[0] = (zlo + zhi) / 2.0
    src = rot.T @ (q / acq.head_scale) + (centre + np.asarray(acq.shift_mm)).astype(np.float32)[:, None]
    coords = src / sp.astype(np.float32)[:, None]
    out: dict[str, np.ndarray] = {}
    for key, vol in volumes.items():
        cval = -1024.0 if key == "hu" else 0.0
        if key != "hu":  # lesion fractions: sample only the points that fall near the lesion
            idx = np.argwhere(vol > 0)
            lo, hi = idx.min(axis=0) - 2, idx.max(axis=0) + 2
            near = np.all((coords >= lo[:, None]) & (coords <= hi[:, None]), axis=0)
            flat = np.zeros(coords.shape[1], np.float32)
            flat[near] = ndimage.map_coordinates(vol, coords[:, near], order=1, cval=cval, prefilter=False)
        else:
            flat = ndimage.map_coordinates(vol, coords, order=1, cval=cval, prefilter=False)
        out[key] = flat.reshape(nz, k, m, m).mean(axis=1)
    centre_idx = coords.reshape(3, nz, k, m, m)[:, :, k // 2]
    labels = ndimage.map_coordinates(head.labels, centre_idx.reshape(3, -1), order=0, cval=0, prefilter=False)
    labels = labels.reshape(nz, m, m).astype(np.uint8)
    if m_out != m:
        f = m_out // m
        out = {key: _upsample(v, f) for key, v in out.items()}
        labels = _upsample(labels, f, nearest=True).astype(np.uint8)
    return out, labels, (float(dz), float(acq.pixel_mm), float(acq.pixel_mm))


def _line(shape: tuple[int, int], rng: np.random.Generator, through: tuple[float, float] | None = None,
          towards: tuple[float, float] | None = None) -> np.ndarray:
    """Distance (pixels) of every pixel to a line through ``through`` (random when None) towards ``towards``."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float32)
    if through is None:
        through = (rng.uniform(0.3, 0.7) * shape[0], rng.uniform(0.3, 0.7) * shape[1])
    if towards is None:
        ang = rng.uniform(0, np.pi)
        d = np.array([np.sin(ang), np.cos(ang)])
    else:
        d = np.asarray(towards) - np.asarray(through)
        d = d / (np.linalg.norm(d) + 1e-6)
    return np.abs((yy - through[0]) * d[1] - (xx - through[1]) * d[0])


def scanner(hu: np.ndarray, labels: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """The drawn scanner applied to float HU (z, y, x): kernel, beam hardening, streaks, motion, noise, calibration."""
    out = hu.astype(np.float32, copy=True)
    scale = acq.matrix / 256.0  # effects are drawn in 256-grid pixels
    if acq.blur_px > 0.05:
        out = ndimage.gaussian_filter(out, sigma=(0.0, acq.blur_px * scale, acq.blur_px * scale))
    if acq.kernel == "sharp":  # edge-enhancing kernel: overshoot next to bone
        out = out + rng.uniform(0.3, 0.9) * (out - ndimage.gaussian_filter(out, sigma=(0.0, 1.2 * scale, 1.2 * scale)))
    head = out > -500
    nz, h, w = out.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    inside = np.isin(labels, [Tissue.BRAIN, Tissue.CSF, Tissue.VENTRICLE])
    for z in range(nz):
        if not head[z].any():
            continue
        cy, cx = np.argwhere(head[z]).mean(axis=0)
        r2 = ((yy - cy) ** 2 + (xx - cx) ** 2) / max(head[z].sum() / np.pi, 1.0)
        out[z] -= acq.cupping_hu * np.clip(1.0 - r2, 0.0, 1.0) * head[z]
    if acq.fossa_band_hu > 0:  # dark band between dense bone on both sides, low slices
        zs = np.flatnonzero(inside.any(axis=(1, 2)))
        if len(zs):
            low = zs[: max(1, int(len(zs) * rng.uniform(0.15, 0.35)))]
            for z in low:
                dense = np.argwhere(out[z] > 900)
                if len(dense) < 10:
                    continue
                cx = np.argwhere(inside[z]).mean(axis=0)[1] if inside[z].any() else w / 2
                left, right = dense[dense[:, 1] < cx], dense[dense[:, 1] >= cx]
                if len(left) == 0 or len(right) == 0:
                    continue
                a = left[rng.integers(len(left))].astype(float)
                b = right[rng.integers(len(right))].astype(float)
                d = _line((h, w), rng, (a[0], a[1]), (b[0], b[1]))
                width = rng.uniform(2.0, 6.0) * scale
                out[z] -= acq.fossa_band_hu * np.exp(-0.5 * (d / width) ** 2) * inside[z]
    if acq.streaks:
        for _ in range(acq.streaks):
            z = int(rng.integers(nz))
            for zz in range(z, min(nz, z + int(rng.integers(1, 4)))):
                d = _line((h, w), rng)
                amp = rng.choice([-1, 1]) * rng.uniform(10, 45)
                out[zz] += amp * np.exp(-0.5 * (d / (0.8 * scale)) ** 2) * head[zz]
    if acq.motion_px > 0:
        z0 = int(rng.integers(nz))
        z1 = min(nz, z0 + int(rng.integers(2, 8)))
        shift = (rng.normal(0, 1), rng.normal(0, 1))
        shift = tuple(float(v) * acq.motion_px * scale / np.hypot(*shift) for v in shift)
        for z in range(z0, z1):
            ghost = ndimage.shift(out[z], shift, order=1, cval=-1024.0)
            out[z] = out[z] * (1 - (al := rng.uniform(0.15, 0.4))) + ghost * al
    noise = rng.normal(size=out.shape).astype(np.float32)
    if acq.noise_corr_px > 0.05:
        noise = ndimage.gaussian_filter(noise, sigma=(0.0, acq.noise_corr_px * scale, acq.noise_corr_px * scale))
    if acq.kernel == "sharp":
        noise = noise - 0.6 * ndimage.gaussian_filter(noise, sigma=(0.0, 2.0 * scale, 2.0 * scale))
    noise /= noise.std() + 1e-6
    # Noise is highest at the centre of the head (fewest photons through the most tissue).
    out = out + acq.noise_hu * noise * np.where(head, 1.0, 0.4)
    out[out > -900] += acq.hu_offset
    return out


def render(
    seed: int, subtypes: tuple[str, ...], source: str, matrix: int | None = None, n_slices: int | None = None
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], tuple[float, float, float], Acquisition, tuple[str, ...]]:
    """One randomised head CT. Returns float HU (z, y, x) before storage, tissue labels, subtype masks, spacing, the
    acquisition and the mimics drawn."""
    rng = np.random.default_rng([seed, 0x2A11])
    head = head_model(source)
    canvas = source_canvas(source)
    acq = draw_randomised(rng, matrix)
    hu = vary_anatomy(head, canvas, acq, rng)
    hu, mimics = add_mimics(hu, canvas, rng)
    lesions: dict[str, np.ndarray] = {}
    for name in subtypes:
        m = draw_lesion(name, canvas, rng)
        hu = paint_lesion(hu, m, rng, name)
        lesions[name] = m.astype(np.float32)
    sampled, labels, spacing = slab_sample(head, {"hu": hu, **lesions}, acq, rng, n_slices)
    masks = {name: sampled[name] >= 0.5 for name in lesions}
    out = scanner(sampled["hu"], labels, acq, rng)
    return out, labels, masks, spacing, acq, mimics
