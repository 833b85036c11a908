"""Hemorrhage shapes and normal-head mimics painted into a canonical head CT (array space of a HeadModel).

Each shape is built in a bounding box around its site from the head's own geometry: the distance of every
intracranial voxel to the inner table (``depth``), the tissue labels and the midline. Shapes (independent of
:mod:`triage_lab.synth.hemorrhage`):

* epidural: a biconvex lens whose thickness falls off quadratically from its centre, against the inner table;
* subdural: a crescent following the table over a wide area, thickness modulated by smooth noise, confined to one side
  of the midline, sometimes running along the falx;
* intraparenchymal: a metaball union (2-4 balls) with a hypodense oedema halo;
* intraventricular: the dependent (posterior, supine patient) part of one or both lateral ventricles below a level;
* subarachnoid: blood mixed into the CSF of a cistern, a sylvian fissure or convexity sulci, at partial density.

Mimics: calcification of the pineal gland, choroid plexus, falx and basal ganglia (100-500 HU foci), dense dural
sinuses (55-70 HU).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from triage_lab.synth.anatomy import head_model
from triage_lab.synth.tissue import Tissue

SUBTYPES = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
BIT = {name: 1 << i for i, name in enumerate(SUBTYPES)}
MIMICS = ("pineal", "choroid_plexus", "falx", "basal_ganglia", "dense_sinus")
Coords = tuple[np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class CtAnatomy:
    """A canonical head with the maps lesion shapes need. Arrays are (z, y, x); ``spacing`` (z, y, x) mm;
    ``centre`` the intracranial centroid in array mm; ``mid_x`` the midline's x in mm; ``depth`` mm to the inner table
    (0 outside the intracranial space); ``flip_x`` whether array x runs to the patient's right."""

    name: str
    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    centre: np.ndarray
    mid_x: float
    depth: np.ndarray
    flip_x: bool
    shell: np.ndarray  # (N, 3) int indices of intracranial voxels touching the table, above the skull base
    deep: np.ndarray  # (N, 3) int indices of brain voxels >= 12 mm from the table
    outline: np.ndarray  # (N, 3) float array mm of a subsample of the skull and its contents
    inside: np.ndarray  # (N, 3) float array mm of a subsample of the intracranial space

    @property
    def intracranial(self) -> np.ndarray:
        return np.isin(self.labels, (Tissue.BRAIN, Tissue.CSF, Tissue.VENTRICLE))


@functools.lru_cache(maxsize=2)
def ct_anatomy(name: str) -> CtAnatomy:
    """The anatomy ``invesalius`` or ``mni`` with its derived maps (cached; raises HeadCTUnavailable)."""
    head = head_model(name)
    sp = tuple(float(s) for s in head.spacing)
    spacing = (sp[0], sp[1], sp[2])
    inside = head.intracranial()
    depth = ndimage.distance_transform_edt(inside, sampling=spacing).astype(np.float32)
    idx = np.argwhere(inside)
    centre = idx.mean(axis=0) * np.asarray(spacing)
    z_mm = np.arange(head.hu.shape[0]) * spacing[0]
    above_base = (z_mm > centre[0] - 15.0)[:, None, None]
    shell = np.argwhere(inside & (depth <= 1.6 * max(spacing)) & above_base)
    deep = np.argwhere((head.labels == Tissue.BRAIN) & (depth >= 12.0))
    rng = np.random.default_rng(0)
    body = np.argwhere(np.isin(head.labels, (Tissue.BONE, Tissue.BRAIN, Tissue.CSF, Tissue.VENTRICLE)))
    outline = body[rng.choice(len(body), size=min(len(body), 40_000), replace=False)] * np.asarray(spacing)
    inner = idx[rng.choice(len(idx), size=min(len(idx), 20_000), replace=False)] * np.asarray(spacing)
    depth.setflags(write=False)
    return CtAnatomy(
        name, head.hu, head.labels, spacing, centre, float(centre[2]), depth, name == "mni", shell, deep, outline, inner
    )


@dataclass
class Canvas:
    """The head being painted: ``hu`` float32 and ``bits`` uint8 (one bit per subtype) on the anatomy's grid."""

    anatomy: CtAnatomy
    hu: np.ndarray
    bits: np.ndarray
    volumes_ml: dict[str, float]
    mimics: list[str]

    @classmethod
    def of(cls, anatomy: CtAnatomy) -> Canvas:
        return cls(anatomy, anatomy.hu.astype(np.float32, copy=True), np.zeros(anatomy.hu.shape, np.uint8), {}, [])

    def box(self, centre_mm: np.ndarray, half_mm: float | np.ndarray) -> tuple[tuple[slice, ...], Coords]:
        """Index slices of a box around ``centre_mm`` and the mm coordinates (3 broadcastable arrays) inside it."""
        sp = np.asarray(self.anatomy.spacing)
        lo = np.maximum(np.floor((centre_mm - half_mm) / sp).astype(int), 0)
        hi = np.minimum(np.ceil((centre_mm + half_mm) / sp).astype(int) + 1, np.asarray(self.hu.shape))
        hi = np.maximum(hi, lo + 1)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
        grids = np.ogrid[sl[0], sl[1], sl[2]]
        z, y, x = (g.astype(np.float32) * np.float32(sp[d]) for d, g in enumerate(grids))
        return sl, (z, y, x)

    def blood(self, subtype: str, sl: tuple[slice, ...], weight: np.ndarray, density: np.ndarray | float) -> None:
        """Mix blood of ``density`` HU into the box by ``weight`` (0..1, intracranial only) and mark it."""
        inside = self.anatomy.intracranial[sl]
        w = np.clip(weight, 0.0, 1.0) * inside
        region = self.hu[sl]
        region[...] = region * (1.0 - w) + np.clip(density, 45.0, 90.0) * w
        marked = w >= 0.5
        self.bits[sl][marked] |= BIT[subtype]
        ml = float(marked.sum()) * float(np.prod(self.anatomy.spacing)) / 1000.0
        self.volumes_ml[subtype] = self.volumes_ml.get(subtype, 0.0) + ml

    def set_hu(self, sl: tuple[slice, ...], weight: np.ndarray, value: np.ndarray | float, name: str) -> None:
        w = np.clip(weight, 0.0, 1.0)
        region = self.hu[sl]
        region[...] = region * (1.0 - w) + value * w
        self.mimics.append(name)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Smooth noise in [0, 1] on ``shape``."""
    n = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma_vox)
    n -= n.min()
    return n / max(float(n.max()), 1e-6)


def _pick(rng: np.random.Generator, pts: np.ndarray) -> np.ndarray:
    return pts[int(rng.integers(len(pts)))]


def _tangent_dist(coords: Coords, p: np.ndarray, n: np.ndarray) -> np.ndarray:
    d = [coords[i] - p[i] for i in range(3)]
    along = d[0] * n[0] + d[1] * n[1] + d[2] * n[2]
    sq = d[0] ** 2 + d[1] ** 2 + d[2] ** 2 - along**2
    return np.sqrt(np.maximum(sq, 0.0))


def _shell_site(rng: np.random.Generator, a: CtAnatomy, min_up_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """A point on the inner table (mm) at least ``min_up_mm`` above the centre, and the inward unit normal."""
    sp = np.asarray(a.spacing)
    pts = a.shell[(a.shell[:, 0] * sp[0]) > a.centre[0] + min_up_mm]
    p = _pick(rng, pts if len(pts) else a.shell) * sp
    n = a.centre + np.array([15.0, 0.0, 0.0]) - p
    return p, n / max(float(np.linalg.norm(n)), 1e-6)


def epidural(rng: np.random.Generator, c: Canvas) -> None:
    a = c.anatomy
    p, n = _shell_site(rng, a, -5.0)
    radius, thick = rng.uniform(14.0, 32.0), rng.uniform(6.0, 17.0)
    sl, xyz = c.box(p, radius + thick + 3.0)
    r = _tangent_dist(xyz, p, n) / radius
    profile = thick * np.clip(1.0 - r**2, 0.0, None)
    w = np.clip((profile - a.depth[sl]) / 1.2 + 0.5, 0.0, 1.0) * (profile > 0.5)
    texture = rng.uniform(58.0, 80.0) + rng.uniform(-10.0, 6.0) * _smooth_noise(rng, w.shape, 2.0)
    c.blood("epidural", sl, w, texture)


def subdural(rng: np.random.Generator, c: Canvas) -> None:
    a = c.anatomy
    p, n = _shell_site(rng, a, 0.0)
    radius, thick = rng.uniform(38.0, 78.0), rng.uniform(3.5, 13.0)
    sl, xyz = c.box(p, radius + thick + 3.0)
    r = _tangent_dist(xyz, p, n) / radius
    mod = 0.55 + 0.45 * _smooth_noise(rng, r.shape, 6.0)
    profile = thick * np.sqrt(np.clip(1.0 - r**2, 0.0, None)) * mod
    side = np.sign(p[2] - a.mid_x) or 1.0
    same_side = (np.sign(xyz[2] - a.mid_x) == side) | (np.abs(xyz[2] - a.mid_x) < 1.0)
    w = np.clip((profile - a.depth[sl]) / 1.0 + 0.5, 0.0, 1.0) * (profile > 0.4) * same_side
    c.blood("subdural", sl, w, rng.uniform(52.0, 82.0))
    if rng.random() < 0.3:  # along the falx: a thin sheet in the interhemispheric fissure
        fc = np.array([a.centre[0] + rng.uniform(15.0, 35.0), a.centre[1] + rng.uniform(-25.0, 25.0), a.mid_x])
        half = np.array([rng.uniform(12.0, 22.0), rng.uniform(20.0, 35.0), 6.0])
        fsl, fxyz = c.box(fc, half)
        width = rng.uniform(1.2, 2.8)
        ell = ((fxyz[0] - fc[0]) / half[0]) ** 2 + ((fxyz[1] - fc[1]) / half[1]) ** 2
        fw = np.clip((width - np.abs(fxyz[2] - a.mid_x)) / 0.8 + 0.5, 0.0, 1.0) * (ell < 1.0)
        c.blood("subdural", fsl, fw, rng.uniform(55.0, 80.0))


def intraparenchymal(rng: np.random.Generator, c: Canvas) -> None:
    a = c.anatomy
    sp = np.asarray(a.spacing)
    centre = _pick(rng, a.deep) * sp
    r0 = rng.uniform(6.0, 16.0)
    balls = [(centre, r0)]
    for _ in range(int(rng.integers(1, 4))):
        balls.append((centre + rng.normal(0.0, 0.55 * r0, 3), r0 * rng.uniform(0.35, 0.8)))
    sl, xyz = c.box(centre, 2.6 * r0)
    field = np.zeros(a.depth[sl].shape, np.float32)
    for bc, br in balls:
        d2 = (xyz[0] - bc[0]) ** 2 + (xyz[1] - bc[1]) ** 2 + (xyz[2] - bc[2]) ** 2
        field += (br * br / np.maximum(d2, 0.25)).astype(np.float32)
    oedema = np.clip((field - rng.uniform(0.3, 0.5)) * 4.0, 0.0, 1.0) * (field < 1.0)
    region = c.hu[sl]
    region -= rng.uniform(4.0, 10.0) * oedema * (a.labels[sl] == Tissue.BRAIN)
    w = np.clip((field - 1.0) * 4.0 + 0.5, 0.0, 1.0)
    c.blood("intraparenchymal", sl, w, rng.uniform(60.0, 88.0) - 6.0 * _smooth_noise(rng, w.shape, 2.5))


def intraventricular(rng: np.random.Generator, c: Canvas) -> None:
    a = c.anatomy
    vent = a.labels == Tissue.VENTRICLE
    zz, yy, xx = np.nonzero(vent)
    sp = np.asarray(a.spacing)
    x_mm = xx * sp[2]
    sides = [s for s in (-1.0, 1.0) if (np.sign(x_mm - a.mid_x) == s).sum() > 50]
    chosen = sides if rng.random() < 0.5 else [sides[int(rng.integers(len(sides)))]]
    keep = np.isin(np.sign(x_mm - a.mid_x), chosen)
    y_mm = yy[keep] * sp[1]
    level = float(np.quantile(y_mm, rng.uniform(0.45, 0.8)))
    lo = np.array([zz[keep].min(), yy[keep].min(), xx[keep].min()])
    hi = np.array([zz[keep].max(), yy[keep].max(), xx[keep].max()]) + 1
    sl = tuple(slice(int(a0), int(b0)) for a0, b0 in zip(lo, hi, strict=True))
    yb = (np.arange(lo[1], hi[1]) * sp[1])[None, :, None]
    xb = (np.arange(lo[2], hi[2]) * sp[2])[None, None, :]
    side_ok = np.isin(np.sign(xb - a.mid_x), chosen)
    w = vent[sl] * side_ok * np.clip((yb - level) / 1.5 + 0.5, 0.0, 1.0)
    c.blood("intraventricular", sl, w * rng.uniform(0.75, 1.0), rng.uniform(55.0, 80.0))


def subarachnoid(rng: np.random.Generator, c: Canvas) -> None:
    a = c.anatomy
    kind = rng.choice(["cisterns", "sylvian", "convexity"], p=[0.4, 0.35, 0.25])
    if kind == "cisterns":
        centre = a.centre + np.array([rng.uniform(-24.0, -12.0), rng.uniform(-8.0, 6.0), 0.0])
        radius = rng.uniform(24.0, 34.0)
    elif kind == "sylvian":
        side = 1.0 if rng.random() < 0.5 else -1.0
        centre = a.centre + np.array([rng.uniform(-8.0, 6.0), rng.uniform(-14.0, 4.0), side * rng.uniform(35.0, 48.0)])
        radius = rng.uniform(20.0, 30.0)
    else:
        p, n = _shell_site(rng, a, 15.0)
        centre, radius = p + 8.0 * n, rng.uniform(18.0, 30.0)
    sl, xyz = c.box(centre, radius + 4.0)
    d = np.sqrt((xyz[0] - centre[0]) ** 2 + (xyz[1] - centre[1]) ** 2 + (xyz[2] - centre[2]) ** 2)
    falloff = np.clip((radius - d) / 5.0, 0.0, 1.0)
    csf = (a.labels[sl] == Tissue.CSF).astype(np.float32)
    # Blood in CSF spaces, and a little into the brain surface next to them (sulcal partial volume).
    near = ndimage.binary_dilation(csf > 0, iterations=1) & (a.labels[sl] == Tissue.BRAIN)
    frac = rng.uniform(0.65, 1.0)
    w = (csf + 0.5 * near) * falloff * frac
    c.blood("subarachnoid", sl, w, rng.uniform(62.0, 85.0))


PAINTERS: dict[str, Callable[[np.random.Generator, Canvas], None]] = {
    "epidural": epidural,
    "intraparenchymal": intraparenchymal,
    "intraventricular": intraventricular,
    "subarachnoid": subarachnoid,
    "subdural": subdural,
}


# ---------------------------------------------------------------------------------------------------------------------
# Mimics


def _focus(rng: np.random.Generator, c: Canvas, centre: np.ndarray, radius: np.ndarray, hu: float, name: str) -> None:
    sl, xyz = c.box(centre, radius + 2.0)
    d = np.sqrt(sum(((xyz[i] - centre[i]) / radius[i]) ** 2 for i in range(3)))
    w = np.clip((1.0 - d) * 3.0, 0.0, 1.0) * c.anatomy.intracranial[sl]
    if w.sum() > 0:
        c.set_hu(sl, w, hu, name)


def pineal(rng: np.random.Generator, c: Canvas) -> None:
    a = c.anatomy
    centre = a.centre + np.array([rng.uniform(-6.0, 4.0), rng.uniform(8.0, 16.0), 0.0])
    centre[2] = a.mid_x + rng.uniform(-1.0, 1.0)
    _focus(rng, c, centre, np.full(3, rng.uniform(1.5, 4.0)), rng.uniform(120.0, 500.0), "pineal")


def choroid_plexus(rng: np.random.Generator, c: Canvas) -> None:
    a = c.anatomy
    vent = np.argwhere(a.labels == Tissue.VENTRICLE) * np.asarray(a.spacing)
    if len(vent) < 50:
        return
    hu = rng.uniform(90.0, 320.0)
    for side in (-1.0, 1.0):
        pts = vent[np.sign(vent[:, 2] - a.mid_x) == side]
        if len(pts) < 20:
            continue
        back = pts[pts[:, 1] >= np.quantile(pts[:, 1], 0.75)]
        _focus(rng, c, back.mean(axis=0), np.full(3, rng.uniform(2.0, 4.0)), hu * rng.uniform(0.8, 1.2), "choroid")


def falx(rng: np.random.Generator, c: Canvas) -> None:
    a = c.anatomy
    centre = a.centre + np.array([rng.uniform(22.0, 42.0), rng.uniform(-30.0, 10.0), 0.0])
    centre[2] = a.mid_x
    radius = np.array([rng.uniform(3.0, 8.0), rng.uniform(6.0, 16.0), rng.uniform(0.8, 1.5)])
    _focus(rng, c, centre, radius, rng.uniform(120.0, 420.0), "falx")


def basal_ganglia(rng: np.random.Generator, c: Canvas) -> None:
    a = c.anatomy
    off = np.array([rng.uniform(-2.0, 8.0), rng.uniform(-14.0, 0.0), rng.uniform(17.0, 26.0)])
    hu = rng.uniform(90.0, 260.0)
    for side in (-1.0, 1.0):
        for _ in range(int(rng.integers(1, 4))):
            centre = a.centre + off * np.array([1.0, 1.0, side]) + rng.normal(0.0, 2.5, 3)
            centre[2] = a.mid_x + side * off[2] + rng.normal(0.0, 2.0)
            _focus(rng, c, centre, np.full(3, rng.uniform(1.2, 3.2)), hu, "basal_ganglia")


def dense_sinus(rng: np.random.Generator, c: Canvas) -> None:
    """Superior sagittal and transverse sinuses at 55-70 HU: blood-dense, next to the table, not a bleed."""
    a = c.anatomy
    sp = np.asarray(a.spacing)
    hu = rng.uniform(55.0, 70.0)
    z = (np.arange(a.hu.shape[0]) * sp[0])[:, None, None]
    y = (np.arange(a.hu.shape[1]) * sp[1])[None, :, None]
    x = (np.arange(a.hu.shape[2]) * sp[2])[None, None, :]
    ymax = float(a.shell[:, 1].max() * sp[1])
    sss = (a.depth > 0) & (a.depth < rng.uniform(2.5, 4.0)) & (np.abs(x - a.mid_x) < rng.uniform(3.0, 6.0))
    sss &= (z > a.centre[0]) & (y > a.centre[1] - 40.0)
    trans = (a.depth > 0) & (a.depth < 3.5) & (y > ymax - 28.0) & (np.abs(z - a.centre[0] + 28.0) < 12.0)
    trans &= np.abs(x - a.mid_x) > 8.0
    m = (sss | trans) & np.isin(a.labels, (Tissue.CSF, Tissue.BRAIN))
    if m.any():
        c.hu[m] = c.hu[m] * 0.2 + hu * 0.8
        c.mimics.append("dense_sinus")


MIMIC_PAINTERS: dict[str, Callable[[np.random.Generator, Canvas], None]] = {
    "pineal": pineal,
    "choroid_plexus": choroid_plexus,
    "falx": falx,
    "basal_ganglia": basal_ganglia,
    "dense_sinus": dense_sinus,
}
