"""Synthetic acute intracranial hemorrhage of the five RSNA subtypes, drawn on a labelled head.

Each generator is pure: it takes the tissue labels, the distance to the inner table, the spacing and a random generator,
and returns a bool mask (z, y, x). :func:`paint_blood` then writes clotted-blood HU (55-85) into the volume.

- epidural: a lens against the inner table (an ellipsoid centred on the table, so its skull side follows the bone and
  its brain side bulges), 5-18 mm thick.
- subdural: a crescent along the inner table over a wide arc, thickest at its centre, concave towards the brain.
- intraparenchymal: a lobulated blob deep in the brain with a thin low-density oedema rim.
- intraventricular: blood layering in the dependent (posterior) part of a ventricle.
- subarachnoid: serpiginous sulcal lines near the convexity, or blood filling the basal cisterns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from triage_lab.synth.tissue import Tissue

SUBTYPES: tuple[str, ...] = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")


@dataclass(frozen=True)
class Canvas:
    """What the generators need: ``labels`` uint8 (z, y, x), ``table_mm`` float32 distance to the inner table (0 outside
    the intracranial space), ``spacing`` (z, y, x) mm."""

    labels: np.ndarray
    table_mm: np.ndarray
    spacing: tuple[float, float, float]

    @classmethod
    def from_labels(cls, labels: np.ndarray, spacing: tuple[float, float, float]) -> Canvas:
        ic = np.isin(labels, [Tissue.BRAIN, Tissue.CSF, Tissue.VENTRICLE])
        table = ndimage.distance_transform_edt(ic, sampling=spacing).astype(np.float32)
        return cls(labels, table, spacing)

    @property
    def intracranial(self) -> np.ndarray:
        return self.table_mm > 0

    def mm_grid(self) -> np.ndarray:
        """Voxel centres in mm, (3, z, y, x)."""
        return np.stack(
            np.meshgrid(
                *[np.arange(n) * s for n, s in zip(self.labels.shape, self.spacing, strict=True)], indexing="ij"
            ),
            axis=0,
        ).astype(np.float32)


def _smooth_noise(shape: tuple[int, ...], rng: np.random.Generator, sigma_vox: tuple[float, ...]) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=sigma_vox)
    return n / (n.std() + 1e-6)


def _supratentorial_z(canvas: Canvas, rng: np.random.Generator, lo: float = 0.35, hi: float = 0.85) -> int:
    """A slice index in the upper part of the intracranial extent, where the convexity is."""
    zs = np.flatnonzero(canvas.intracranial.any(axis=(1, 2)))
    a, b = zs.min(), zs.max()
    return int(round(a + (b - a) * rng.uniform(lo, hi)))


def _pick(cands: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if len(cands) == 0:
        raise LesionFailed("no candidate voxel for the lesion centre")
    return cands[rng.integers(len(cands))]


class LesionFailed(RuntimeError):
    """The drawn lesion did not fit this head (too small or no place); the caller redraws."""


def _table_point(canvas: Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A point on the inner table of the convexity (mm) and the inward unit normal (towards the head centre)."""
    z = _supratentorial_z(canvas, rng)
    ys, xs = np.nonzero((canvas.table_mm[z] > 0) & (canvas.table_mm[z] < 1.6))
    if len(ys) == 0:
        raise LesionFailed("no inner table on the chosen slice")
    i = rng.integers(len(ys))
    sp = np.asarray(canvas.spacing)
    p = np.array([z, ys[i], xs[i]]) * sp
    centre = np.argwhere(canvas.intracranial[z]).mean(axis=0)
    inward = np.array([0.0, *(centre - np.array([ys[i], xs[i]])) * sp[1:]])
    inward[0] = rng.uniform(-0.3, 0.3) * np.linalg.norm(inward)
    return p, inward / np.linalg.norm(inward)


def _local_box(canvas: Canvas, p_mm: np.ndarray, radius_mm: float) -> tuple[slice, ...]:
    sp = np.asarray(canvas.spacing)
    lo = np.maximum(((p_mm - radius_mm) / sp).astype(int), 0)
    hi = np.minimum(((p_mm + radius_mm) / sp).astype(int) + 2, canvas.labels.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _box_grid(canvas: Canvas, box: tuple[slice, ...]) -> np.ndarray:
    sp = canvas.spacing
    axes = [np.arange(s.start, s.stop) * d for s, d in zip(box, sp, strict=True)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=0).astype(np.float32)


def epidural(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    p, n = _table_point(canvas, rng)
    radius = rng.uniform(14, 32)
    thick = rng.uniform(5, 18)
    box = _local_box(canvas, p, radius + 2)
    g = _box_grid(canvas, box) - p[:, None, None, None]
    along = np.tensordot(n, g, axes=1)
    tang2 = (g**2).sum(axis=0) - along**2
    r = tang2 / radius**2 + along**2 / thick**2
    r = r + 0.08 * _smooth_noise(r.shape, rng, (1.0, 3.0, 3.0))
    mask = np.zeros(canvas.labels.shape, bool)
    mask[box] = (r <= 1.0) & canvas.intracranial[box]
    return mask


def subdural(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    p, _ = _table_point(canvas, rng)
    extent = rng.uniform(35, 75)
    tmax = rng.uniform(3.5, 13)
    box = _local_box(canvas, p, extent)
    g = _box_grid(canvas, box) - p[:, None, None, None]
    d = np.sqrt((g**2).sum(axis=0)) / extent
    d = d + 0.06 * _smooth_noise(d.shape, rng, (1.0, 4.0, 4.0))
    thickness = tmax * np.clip(1.0 - d**2, 0.0, None)
    table = canvas.table_mm[box]
    mask = np.zeros(canvas.labels.shape, bool)
    mask[box] = (table > 0) & (table <= thickness)
    return mask


def intraparenchymal(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    deep = (canvas.labels == Tissue.BRAIN) & (canvas.table_mm > 14)
    z = _supratentorial_z(canvas, rng, 0.2, 0.8)
    cands = np.argwhere(deep[max(z - 2, 0) : z + 3])
    c = _pick(cands, rng)
    c[0] += max(z - 2, 0)
    sp = np.asarray(canvas.spacing)
    p = c * sp
    radii = rng.uniform(4, 20) * rng.uniform(0.6, 1.0, size=3)
    box = _local_box(canvas, p, float(radii.max()) * 1.4 + 2)
    g = _box_grid(canvas, box) - p[:, None, None, None]
    rot = np.linalg.qr(rng.normal(size=(3, 3)))[0]
    g = np.tensordot(rot, g, axes=1)
    r = np.sqrt(((g / radii[:, None, None, None]) ** 2).sum(axis=0))
    r = r + 0.18 * _smooth_noise(r.shape, rng, (1.0, 2.0, 2.0))
    mask = np.zeros(canvas.labels.shape, bool)
    mask[box] = (r <= 1.0) & canvas.intracranial[box]
    return mask


def intraventricular(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    vent = canvas.labels == Tissue.VENTRICLE
    zs = np.flatnonzero(vent.sum(axis=(1, 2)) > 30)
    if len(zs) == 0:
        raise LesionFailed("no ventricles")
    z0 = int(rng.choice(zs))
    half = max(1, int(round(rng.uniform(6, 20) / canvas.spacing[0])))
    sel = np.zeros_like(vent)
    sel[max(z0 - half, 0) : z0 + half + 1] = True
    sel &= vent
    if rng.random() < 0.5:  # one side only
        cx = np.argwhere(sel)[:, 2].mean()
        xs = np.arange(vent.shape[2])
        side = xs < cx if rng.random() < 0.5 else xs >= cx
        sel &= side[None, None, :]
    idx = np.argwhere(sel)
    if len(idx) == 0:
        raise LesionFailed("empty ventricle selection")
    # Blood settles posteriorly (higher row index) in a supine patient: keep the dependent fraction, or a cast.
    frac = 1.0 if rng.random() < 0.2 else rng.uniform(0.25, 0.6)
    level = np.quantile(idx[:, 1], 1.0 - frac)
    rows = np.arange(vent.shape[1])
    return sel & (rows >= level)[None, :, None]


def subarachnoid(canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    sp = np.asarray(canvas.spacing)
    mask = np.zeros(canvas.labels.shape, bool)
    if rng.random() < 0.35:
        # Basal cisterns: CSF around the midbrain in the lower part of the supratentorial space.
        z = _supratentorial_z(canvas, rng, 0.15, 0.35)
        ic = np.argwhere(canvas.intracranial[z])
        centre = np.array([z, *ic.mean(axis=0)]) * sp
        radius = rng.uniform(18, 32)
        box = _local_box(canvas, centre, radius)
        g = _box_grid(canvas, box) - centre[:, None, None, None]
        near = (g**2).sum(axis=0) <= radius**2
        csf = canvas.labels[box] == Tissue.CSF
        lines = _ridges(near.shape, rng, sp, width=0.06)
        mask[box] = near & (csf | (lines & (canvas.table_mm[box] > 12)))
    else:
        p, _ = _table_point(canvas, rng)
        radius = rng.uniform(18, 40)
        box = _local_box(canvas, p, radius)
        g = _box_grid(canvas, box) - p[:, None, None, None]
        near = ((g**2).sum(axis=0) <= radius**2) & (canvas.table_mm[box] > 0) & (canvas.table_mm[box] < 14)
        lines = _ridges(near.shape, rng, sp, width=0.08)
        csf = canvas.labels[box] == Tissue.CSF
        mask[box] = near & (lines | csf)
    return mask


def _ridges(shape: tuple[int, ...], rng: np.random.Generator, sp: np.ndarray, width: float) -> np.ndarray:
    """Serpiginous thin lines (sulcus-like): a level set of a smooth random field."""
    field = _smooth_noise(shape, rng, tuple(float(v) for v in 3.0 / sp))
    return np.abs(field) < width * 3.0


GENERATORS: dict[str, Callable[[Canvas, np.random.Generator], np.ndarray]] = {
    "epidural": epidural,
    "intraparenchymal": intraparenchymal,
    "intraventricular": intraventricular,
    "subarachnoid": subarachnoid,
    "subdural": subdural,
}

MIN_LESION_ML = {
    "epidural": 1.0,
    "intraparenchymal": 0.5,
    "intraventricular": 0.3,
    "subarachnoid": 0.3,
    "subdural": 1.0,
}


def draw_lesion(subtype: str, canvas: Canvas, rng: np.random.Generator, attempts: int = 12) -> np.ndarray:
    """A bool mask (z, y, x) of one lesion of ``subtype``, redrawn until it reaches the subtype's minimum volume."""
    if subtype not in GENERATORS:
        raise ValueError(f"subtype must be one of {SUBTYPES}, got {subtype!r}")
    voxel_ml = float(np.prod(canvas.spacing)) / 1000.0
    for _ in range(attempts):
        try:
            mask = GENERATORS[subtype](canvas, rng)
        except LesionFailed:
            continue
        if mask.sum() * voxel_ml >= MIN_LESION_ML[subtype]:
            return mask
    raise LesionFailed(f"could not place a {subtype} lesion in {attempts} attempts")


def paint_blood(hu: np.ndarray, mask: np.ndarray, rng: np.random.Generator, subtype: str) -> np.ndarray:
    """Write acute blood into ``hu`` (float32 (z, y, x)) where ``mask``: 55-85 HU with texture and soft edges.

    Thin subarachnoid blood mixes with CSF (partial volume), so it is painted a little fainter. Returns a new array.
    """
    out = hu.copy()
    if not mask.any():
        return out
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(axis=0) - 3, 0)
    hi = np.minimum(idx.max(axis=0) + 4, mask.shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    m = mask[box]
    base = rng.uniform(58, 85) if subtype != "subarachnoid" else rng.uniform(55, 75)
    blood = base + 3.0 * _smooth_noise(m.shape, rng, (0.5, 1.0, 1.0))
    alpha = ndimage.gaussian_filter(m.astype(np.float32), sigma=(0.0, 0.6, 0.6))
    alpha = np.where(m, np.maximum(alpha, 0.75), alpha * 0.5)
    sub = out[box]
    if subtype == "intraparenchymal":
        rim = ndimage.binary_dilation(m, iterations=2) & ~m
        sub[rim] -= rng.uniform(3, 9)
    touched = alpha > 0.01
    a = alpha[touched]
    sub[touched] = sub[touched] * (1 - a) + blood[touched] * a
    return out
