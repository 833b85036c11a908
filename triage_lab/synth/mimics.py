"""The classic CT mimics of acute blood, painted into a head in its source space.

A triage model that has only seen clean normal heads calls every bright spot a bleed. These are the normal findings a
neuroradiologist learns to ignore, drawn at random in both normal and hemorrhage cases (so their presence tells the
model nothing about the label):

- physiological calcification: pineal gland, choroid plexus in the ventricular atria, falx, basal ganglia;
- dense dural venous sinuses (superior sagittal and transverse sinuses, 55-75 HU, like a thin subdural);
- a dense tentorial edge.

Partial volume of the skull base and vertex, beam-hardening bands and streaks come from the acquisition
(:mod:`triage_lab.synth.randomise`), not from here.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from triage_lab.synth.hemorrhage import Canvas
from triage_lab.synth.tissue import Tissue

MIMICS: tuple[str, ...] = (
    "pineal_calcification",
    "choroid_calcification",
    "falx_calcification",
    "basal_ganglia_calcification",
    "dense_sinus",
    "dense_tentorium",
)


class Landmarks:
    """Midline, ventricle centre and intracranial extent of a labelled head (voxel units, (z, y, x))."""

    def __init__(self, canvas: Canvas) -> None:
        ic = np.argwhere(canvas.intracranial)
        vent = np.argwhere(canvas.labels == Tissue.VENTRICLE)
        self.ic_lo, self.ic_hi = ic.min(axis=0), ic.max(axis=0)
        self.vent = vent if len(vent) else ic
        self.vent_c = self.vent.mean(axis=0)
        self.mid_x = float(self.vent_c[2])


def _blob(
    shape: tuple[int, ...], centre_vox: np.ndarray, radius_mm: float, sp: np.ndarray
) -> tuple[tuple[slice, ...], np.ndarray]:
    """A soft ball: the box around it and an alpha in [0, 1] over that box."""
    r_vox = radius_mm / sp + 2
    lo = np.maximum(np.floor(centre_vox - r_vox).astype(int), 0)
    hi = np.minimum(np.ceil(centre_vox + r_vox).astype(int) + 1, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    g = np.meshgrid(*[(np.arange(s.start, s.stop) - c) * d for s, c, d in zip(box, centre_vox, sp, strict=True)],
                    indexing="ij")
    d = np.sqrt(sum(x**2 for x in g))
    alpha = np.clip((radius_mm + 0.5 - d) / 1.0, 0.0, 1.0)
    return box, alpha.astype(np.float32)


def _paint(hu: np.ndarray, box: tuple[slice, ...], alpha: np.ndarray, value: float, within: np.ndarray | None) -> None:
    if within is not None:
        alpha = alpha * within[box]
    sub = hu[box]
    hu[box] = sub * (1 - alpha) + np.maximum(sub, value) * alpha


def add_mimics(
    hu: np.ndarray, canvas: Canvas, rng: np.random.Generator, p: float = 0.45
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Paint each mimic with probability ``p`` into a copy of ``hu`` (float32 (z, y, x) HU in the canvas's space).

    Returns the new volume and the names of the mimics drawn.
    """
    out = hu.astype(np.float32, copy=True)
    sp = np.asarray(canvas.spacing, dtype=np.float64)
    lm = Landmarks(canvas)
    ic = canvas.intracranial
    drawn: list[str] = []
    if rng.random() < p:  # pineal: midline, behind the third ventricle, at the ventricles' lower level
        c = lm.vent_c + np.array([-rng.uniform(0, 8), rng.uniform(8, 18), rng.normal(0, 1)]) / sp
        box, a = _blob(out.shape, c, rng.uniform(1.5, 4.0), sp)
        _paint(out, box, a, rng.uniform(120, 600), ic)
        drawn.append("pineal_calcification")
    if rng.random() < p:  # choroid plexus in the atria: the most posterior ventricle voxels of each side
        for side in (-1, 1):
            if drawn and side == 1 and rng.random() < 0.15:
                continue  # sometimes one side only
            v = lm.vent[(lm.vent[:, 2] - lm.mid_x) * side > 4]
            if len(v) < 20:
                continue
            back = v[v[:, 1] >= np.quantile(v[:, 1], 0.85)]
            c = back.mean(axis=0) + rng.normal(0, 1.0, 3) / sp
            box, a = _blob(out.shape, c, rng.uniform(2.0, 4.5), sp)
            _paint(out, box, a, rng.uniform(80, 350), ic)
        drawn.append("choroid_calcification")
    if rng.random() < p * 0.8:  # falx: a thin midline plate in the upper half
        z0 = int(lm.ic_lo[0] + (lm.ic_hi[0] - lm.ic_lo[0]) * rng.uniform(0.5, 0.85))
        zh = max(1, int(round(rng.uniform(3, 12) / sp[0])))
        y0 = rng.uniform(lm.ic_lo[1], lm.ic_hi[1])
        yl = rng.uniform(10, 40) / sp[1]
        x = int(round(lm.mid_x))
        w = max(1, int(round(rng.uniform(1.0, 2.0) / sp[2])))
        box = (slice(max(z0 - zh, 0), z0 + zh + 1), slice(int(max(y0 - yl / 2, 0)), int(y0 + yl / 2) + 1),
               slice(max(x - w // 2, 0), x + w // 2 + 1))
        a = np.ones(out[box].shape, np.float32)
        _paint(out, box, a, rng.uniform(100, 500), ic)
        drawn.append("falx_calcification")
    if rng.random() < p * 0.6:  # basal ganglia: bilateral, symmetric, faint
        for side in (-1, 1):
            c = lm.vent_c + np.array([-rng.uniform(0, 8), -rng.uniform(0, 10), side * rng.uniform(18, 26)]) / sp
            box, a = _blob(out.shape, c, rng.uniform(2.0, 5.0), sp)
            a = ndimage.gaussian_filter(a, 0.8)
            _paint(out, box, a, rng.uniform(60, 160), ic)
        drawn.append("basal_ganglia_calcification")
    table = canvas.table_mm
    zz = np.arange(out.shape[0])[:, None, None]
    yy = np.arange(out.shape[1])[None, :, None]
    xx = np.arange(out.shape[2])[None, None, :]
    if rng.random() < p:  # dense superior sagittal (and sometimes transverse) sinus
        zmid = lm.ic_lo[0] + (lm.ic_hi[0] - lm.ic_lo[0]) * rng.uniform(0.35, 0.55)
        ymid = (lm.ic_lo[1] + lm.ic_hi[1]) / 2
        sss = (table > 0) & (table < rng.uniform(3.0, 6.0)) & (np.abs(xx - lm.mid_x) * sp[2] < rng.uniform(3.0, 5.5))
        sss &= (zz > zmid) & (yy > ymid - rng.uniform(0, 0.3) * (lm.ic_hi[1] - lm.ic_lo[1]))
        value = rng.uniform(55, 75)
        if rng.random() < 0.5:
            zlow = lm.ic_lo[0] + (lm.ic_hi[0] - lm.ic_lo[0]) * rng.uniform(0.12, 0.3)
            trans = (table > 0) & (table < rng.uniform(3.0, 5.0)) & (np.abs(zz - zlow) * sp[0] < 4)
            trans &= yy > lm.ic_hi[1] - 0.2 * (lm.ic_hi[1] - lm.ic_lo[1])
            sss |= trans
        a = ndimage.gaussian_filter(sss.astype(np.float32), (0.0, 0.7, 0.7))
        out = out * (1 - a) + np.maximum(out, value) * a
        drawn.append("dense_sinus")
    if rng.random() < p * 0.5:  # a dense tentorial edge: a thin oblique band in the posterior fossa roof
        zt = lm.ic_lo[0] + (lm.ic_hi[0] - lm.ic_lo[0]) * rng.uniform(0.22, 0.35)
        band = ic & (np.abs(zz - zt - (yy - lm.vent_c[1]) * rng.uniform(0.1, 0.3)) * sp[0] < 1.2)
        band &= (yy > lm.vent_c[1] + 10 / sp[1]) & (canvas.labels == Tissue.BRAIN)
        band &= np.abs(np.abs(xx - lm.mid_x) - rng.uniform(10, 30) / sp[2]) * sp[2] < rng.uniform(8, 20)
        a = ndimage.gaussian_filter(band.astype(np.float32), (0.0, 0.7, 0.7))
        out = out * (1 - a) + np.maximum(out, rng.uniform(50, 65)) * a
        drawn.append("dense_tentorium")
    return out, tuple(drawn)
