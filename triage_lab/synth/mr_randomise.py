"""Domain-randomised synthetic DWI (the infarct model's training generator since infarct 2.0).

The legacy generator rendered skull-stripped MNI brains with one contrast, and trained on 240 infarcts against 8
normal heads: the model had hardly seen a normal DWI. Here every appearance parameter is drawn per case:

- head: the MNI152 maps or the real head CT's (axial) tissue maps, half each, with a scalp; pose +-15/20 deg, size
  0.86-1.14, deformation up to 6 mm; voxels 1-2 mm in-plane, slices 2.5-5.5 mm integrated over the slab;
- contrast: S0 and ADC per tissue over wide ranges, b 800-1200, grey matter up to 35% brighter (the normal bright
  cortex at b=1000), scalp fat partly suppressed;
- infarct: in a random atlas region and side; since infarct 3.0, 40% of them small (2.5 mm radius up to the region's
  smallest: lacunes and small embolic cortical infarcts);
- mimics: susceptibility pile-up and drop-out next to the skull base, sinuses and mastoids (round or band-shaped along
  the bone); T2 shine-through (bright
  at b=1000 with a raised ADC, not an infarct); CSF flow;
- scanner: bias field, Rician or multi-coil (non-central chi) noise, Gibbs ringing, a background stored as zero
  (masked) in 40% of cases, an arbitrary gain.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage

from triage_lab.synth.mr import (
    _RADIUS,
    DwiCase,
    HeadSource,
    SwiCase,
    _bias_field,
    _ct_to_mni_index,
    _grid,
    _lesion_in_mni,
    _sample,
    _sample_points,
    ct_source,
    mni_source,
    place_bleeds,
)
from triage_node.inference.atlas import Region


@functools.lru_cache(maxsize=1)
def mni_scalp() -> tuple[np.ndarray, np.ndarray]:
    """(scalp, bone) fractions around the MNI brain: bone 2.5-8 mm outside it, scalp 8-13 mm."""
    src = mni_source()
    brain = (src.gm + src.wm + src.csf) > 0.5
    d = ndimage.distance_transform_edt(~brain)
    bone = ((d > 2.5) & (d <= 8.0)).astype(np.float32)
    scalp = ((d > 8.0) & (d <= 13.0)).astype(np.float32)
    return scalp, bone


def scalp_and_bone(src: HeadSource, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scalp and bone fractions at the sample points: the CT head's own, or a shell around the MNI brain."""
    if src.name == "ct":
        return _sample(src.scalp, pts), _sample(src.bone, pts)
    sc, bo = mni_scalp()
    return _sample(sc, pts), _sample(bo, pts)


def _noise(rng: np.random.Generator, img: np.ndarray, sigma: float) -> np.ndarray:
    """Magnitude of a sum-of-squares combination over 1, 2 or 4 coils (Rician for one coil)."""
    coils = int(rng.choice([1, 1, 2, 4]))
    acc = np.zeros(img.shape, np.float32)
    for _ in range(coils):
        re = img / np.sqrt(coils) + rng.normal(0.0, sigma, img.shape).astype(np.float32)
        im = rng.normal(0.0, sigma, img.shape).astype(np.float32)
        acc += re**2 + im**2
    return np.sqrt(acc)


def _gibbs(img: np.ndarray, keep: float) -> np.ndarray:
    """k-space truncation in-plane: keep the central ``keep`` fraction of each axis (ringing at sharp edges)."""
    k = np.fft.fftshift(np.fft.fft2(img, axes=(1, 2)), axes=(1, 2))
    _, h, w = img.shape
    yy = np.abs(np.arange(h) - h / 2) <= keep * h / 2
    xx = np.abs(np.arange(w) - w / 2) <= keep * w / 2
    k *= (yy[:, None] & xx[None, :])[None]
    return np.abs(np.fft.ifft2(np.fft.ifftshift(k, axes=(1, 2)), axes=(1, 2))).astype(np.float32)


def _susceptibility(rng: np.random.Generator, tissue: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """A multiplicative field: pile-up (bright) and drop-out (dark) blobs at the brain's inferior frontal, temporal
    and posterior-fossa border, where air and bone meet."""
    field = np.ones(tissue.shape, np.float32)
    zs = np.flatnonzero((tissue > 0.5).any(axis=(1, 2)))
    if len(zs) < 4:
        return field
    low = zs[: max(2, int(len(zs) * rng.uniform(0.25, 0.45)))]
    edge = (tissue > 0.5) & ~ndimage.binary_erosion(tissue > 0.5, iterations=2)
    cand = np.argwhere(edge[low[0] : low[-1] + 1])
    if len(cand) == 0:
        return field
    cand[:, 0] += low[0]
    sp = np.asarray(spacing)
    for _ in range(int(rng.integers(1, 7))):
        c = cand[rng.integers(len(cand))]
        # anisotropic: round pile-ups and bands drawn along the bone (each axis 3-20 mm)
        r = rng.uniform(4.0, 14.0) * np.exp(rng.uniform(-0.3, 0.35, 3)) / sp
        lo = np.maximum((c - 2 * r).astype(int), 0)
        hi = np.minimum((c + 2 * r).astype(int) + 1, tissue.shape)
        zz, yy, xx = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        d2 = ((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2
        amp = rng.uniform(0.5, 2.5) if rng.random() < 0.6 else -rng.uniform(0.3, 0.8)
        field[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] *= (1.0 + amp * np.exp(-d2)).astype(np.float32)
    return np.clip(field, 0.05, None)


def infarct_radius(rng: np.random.Generator, region: Region) -> tuple[float, float]:
    """The range of an infarct's mean radius: the region's own range, or in 40% of cases a small infarct (a lacune or
    a small embolic cortical infarct, 2.5 mm up to the region's smallest; 0.07-1.5 mL), which a triage model must not
    miss and which a slab of 5 mm all but averages away."""
    lo, hi = _RADIUS[region]
    return (2.5, lo) if rng.random() < 0.4 else (lo, hi)


def randomised_dwi_case(
    seed: int, region: Region | str | None = None, side: str | None = None, infarct: bool = True
) -> DwiCase:
    """One domain-randomised DWI b=1000 (+ ADC) case; an infarct in ``region``/``side`` (random when None)."""
    rng = np.random.default_rng([seed, 4_101])
    use_ct = rng.random() < 0.5
    src: HeadSource = mni_source()
    if use_ct:
        from triage_lab.synth.headct import HeadCTUnavailable

        try:
            src = ct_source()
        except HeadCTUnavailable:
            src = mni_source()
    reg: Region | None = None
    if infarct:
        reg = Region.from_name(region) if isinstance(region, str) else (region or Region(int(rng.integers(1, 12))))
        side = side or ("right" if rng.random() < 0.5 else "left")
    else:
        side = None
    grid = _grid(rng, fov_xy=rng.uniform(200, 250), fov_z=rng.uniform(140, 170), dxy=(1.0, 2.0), dz=(2.5, 5.5))
    pts = _sample_points(rng, grid, src, sub=2, deform_mm=rng.uniform(0.0, 6.0), wide=True)
    gm, wm, csf = (_sample(m, pts) for m in (src.gm, src.wm, src.csf))
    scalp, bone = scalp_and_bone(src, pts)
    lesion = np.zeros(grid.shape, dtype=np.float32)
    if reg is not None and side is not None:
        at = pts if src.name == "mni" else _ct_to_mni_index(pts)
        lesion = _sample(_lesion_in_mni(rng, reg, side, infarct_radius(rng, reg)), at)
    b = rng.uniform(0.8, 1.2)
    s0 = {"gm": rng.uniform(0.85, 1.25), "wm": rng.uniform(0.7, 0.95), "csf": rng.uniform(1.2, 2.2)}
    adc = {"gm": rng.uniform(0.72, 0.95), "wm": rng.uniform(0.62, 0.85), "csf": rng.uniform(2.5, 3.3)}
    cortex_boost = rng.uniform(1.0, 1.35)
    s0_les, adc_les = rng.uniform(1.0, 1.4), rng.uniform(0.3, 0.58)
    keep = 1.0 - lesion
    tissue = gm + wm
    les = lesion * np.minimum(tissue, 1.0)
    dwi = (
        gm * keep * s0["gm"] * np.exp(-b * adc["gm"]) * cortex_boost
        + wm * keep * s0["wm"] * np.exp(-b * adc["wm"])
        + csf * keep * s0["csf"] * np.exp(-b * adc["csf"])
        + les * s0_les * np.exp(-b * adc_les)
    )
    b0 = gm * keep * s0["gm"] + wm * keep * s0["wm"] + csf * keep * s0["csf"] + les * s0_les
    if rng.random() < 0.3:  # T2 shine-through: bright on b=1000 with a raised ADC (gliosis, old lesion): not acute
        r2 = Region(int(rng.integers(1, 12)))
        old = _sample(_lesion_in_mni(rng, r2, str(rng.choice(["left", "right"]))),
                      pts if src.name == "mni" else _ct_to_mni_index(pts)) * (1.0 - lesion) * np.minimum(tissue, 1.0)
        s0_old, adc_old = rng.uniform(1.3, 1.9), rng.uniform(0.95, 1.35)
        base = s0["wm"] * np.exp(-b * adc["wm"])
        dwi = dwi * (1 - old) + old * s0_old * np.exp(-b * adc_old) / max(base, 1e-3) * base
        b0 = b0 * (1 - old) + old * s0_old
    fat = rng.uniform(0.0, 0.6) * float(np.exp(-b * adc["wm"]))
    dwi = dwi + scalp * fat * (1.0 - bone)
    b0 = b0 + scalp * rng.uniform(0.2, 1.0) * (1.0 - bone)
    head_tissue = np.clip(tissue + csf, 0, 1)
    if rng.random() < 0.75:
        field = _susceptibility(rng, head_tissue, grid.spacing)
        dwi, b0 = dwi * field, b0 * np.sqrt(field)
    bias = _bias_field(rng, grid.shape, rng.uniform(0.05, 0.3))
    sigma = rng.uniform(0.008, 0.05)
    dwi_n = _noise(rng, dwi * bias, sigma)
    b0_n = _noise(rng, b0 * bias, sigma * 0.7)
    if rng.random() < 0.3:
        keep_k = rng.uniform(0.6, 0.85)
        dwi_n, b0_n = _gibbs(dwi_n, keep_k), _gibbs(b0_n, keep_k)
    with np.errstate(divide="ignore", invalid="ignore"):
        adc_map = -np.log(np.clip(dwi_n, 1e-4, None) / np.clip(b0_n, 1e-4, None)) / b * 1000.0
    adc_map = np.where(head_tissue > 0.3, np.clip(adc_map, 0.0, 4000.0), 0.0).astype(np.float32)
    if rng.random() < 0.4:  # stored with the background masked to zero, as some scanners and PACS do
        head = ndimage.binary_dilation((head_tissue + scalp) > 0.3, iterations=2)
        dwi_n = np.where(head, dwi_n, 0.0)
    gain = float(np.exp(rng.uniform(np.log(50.0), np.log(5000.0))))
    mask = (les if src.name == "ct" else lesion) > 0.5
    if reg is not None and mask.sum() == 0:
        mask = lesion >= max(float(lesion.max()) * 0.7, 1e-3)
    return DwiCase((dwi_n * gain).astype(np.float32), adc_map, grid.spacing, mask, reg, side, seed, src.name)


# --------------------------------------------------------------------------------------------------------------------
# SWI

# Where calcifications sit, in MNI mm (RAS): pineal gland, choroid plexus in the atria, globus pallidus.
_CALCIFICATION_MNI = {
    "pineal": [(0.0, -30.0, 2.0)],
    "choroid": [(-28.0, -40.0, 14.0), (28.0, -40.0, 14.0)],
    "pallidum": [(-19.0, -3.0, -1.0), (19.0, -3.0, -1.0)],
}


def _source_balls(src: HeadSource, centres_mni: list[tuple[float, float, float]], radius_mm: float) -> np.ndarray:
    """Balls at MNI positions painted on the source grid (float32 occupancy)."""
    from triage_lab.synth.mr import ct_to_mni

    out = np.zeros(src.gm.shape, np.float32)
    to_head = np.eye(4) if src.name == "mni" else np.linalg.inv(ct_to_mni())
    ras_to_idx = np.linalg.inv(src.index_to_ras)
    sp = np.abs(np.diag(src.index_to_ras[:3, :3])) if src.name == "mni" else np.linalg.norm(src.index_to_ras[:3, :3],
                                                                                              axis=0)
    for c in centres_mni:
        head = to_head @ np.array([*c, 1.0])
        idx = (ras_to_idx @ head)[:3]
        r = radius_mm / np.maximum(sp, 1e-3)
        lo = np.maximum(np.floor(idx - r - 1).astype(int), 0)
        hi = np.minimum(np.ceil(idx + r + 2).astype(int), out.shape)
        if np.any(hi <= lo):
            continue
        zz, yy, xx = np.ogrid[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        d = np.sqrt(((zz - idx[0]) / r[0]) ** 2 + ((yy - idx[1]) / r[1]) ** 2 + ((xx - idx[2]) / r[2]) ** 2)
        out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = np.maximum(
            out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], np.clip((1.0 - d) * 3.0, 0.0, 1.0)
        )
    return out


def _through_plane_veins(
    rng: np.random.Generator, shape: tuple[int, ...], spacing: tuple[float, ...], allowed: np.ndarray, n: int
) -> np.ndarray:
    """Medullary veins running mostly through the slice: dark dots on an axial SWI, the classic microbleed mimic."""
    acc = np.zeros(shape, np.float32)
    cand = np.argwhere(allowed)
    if len(cand) == 0:
        return acc
    sp = np.asarray(spacing)
    for _ in range(n):
        p = cand[rng.integers(len(cand))].astype(np.float64)
        d = np.array([1.0, rng.normal(0, 0.35), rng.normal(0, 0.35)])
        d /= np.linalg.norm(d)
        length = rng.uniform(6, 22)
        step = 0.3 * float(sp.min())
        for _s in range(int(length / step)):
            p = p + d * step / sp
            i = np.round(p).astype(int)
            if np.any(i < 0) or np.any(i >= np.asarray(shape)):
                break
            acc[tuple(i)] += 1.0
    width = rng.uniform(0.4, 0.9)
    v = ndimage.gaussian_filter(acc, [max(width / s, 0.35) for s in sp])
    peak = float(np.percentile(v[acc > 0], 50)) if np.any(acc > 0) else 1.0
    return np.clip(v / max(peak, 1e-6), 0.0, 1.0)


def randomised_swi_case(seed: int, n_bleeds: int | None = None) -> SwiCase:
    """One domain-randomised SWI magnitude case with ``n_bleeds`` microbleeds (45% none when None)."""
    from triage_lab.synth.mr import _render_spheres, _render_veins

    rng = np.random.default_rng([seed, 4_200])
    src: HeadSource = mni_source()
    if rng.random() < 0.5:
        from triage_lab.synth.headct import HeadCTUnavailable

        try:
            src = ct_source()
        except HeadCTUnavailable:
            src = mni_source()
    if n_bleeds is None:
        n_bleeds = 0 if rng.random() < 0.45 else int(rng.integers(1, 11))
    grid = _grid(rng, fov_xy=rng.uniform(190, 240), fov_z=rng.uniform(140, 165), dxy=(0.7, 1.2), dz=(1.2, 4.0))
    sub = 2 if grid.spacing[0] > 2.0 else 1
    pts = _sample_points(rng, grid, src, sub=sub, deform_mm=rng.uniform(0.0, 5.0), wide=True)
    gm, wm, csf = (_sample(m, pts) for m in (src.gm, src.wm, src.csf))
    scalp, bone = scalp_and_bone(src, pts)
    c_gm, c_wm, c_csf = rng.uniform(0.45, 0.75), rng.uniform(0.35, 0.6), rng.uniform(0.7, 1.1)
    img = gm * c_gm + wm * c_wm + csf * c_csf + scalp * rng.uniform(0.3, 0.8) * (1.0 - bone)
    if src.labels is not None:
        from triage_node.inference.atlas import Region

        deep = np.isin(src.labels, (Region.BASAL_GANGLIA, Region.THALAMUS)).astype(np.float32)
        iron = _sample(deep, pts) * rng.uniform(0.05, 0.35)
        img = img * (1.0 - iron * (gm + 0.5 * wm))
    tissue = gm + wm + csf
    # Mimics: calcification (dark on magnitude) where it is physiological, veins along and through the slice, and
    # signal loss at air-bone interfaces of the skull base.
    picks = [c for name, cs in _CALCIFICATION_MNI.items() if rng.random() < 0.4 for c in cs]
    if picks:
        calc = _sample(_source_balls(src, picks, rng.uniform(1.5, 4.0)), pts)
        img = img * (1.0 - np.clip(calc, 0, 1) * rng.uniform(0.5, 0.9))
    veins = _render_veins(rng, grid.shape, grid.spacing, tissue > 0.5, int(rng.integers(6, 26)))
    img = img * (1.0 - rng.uniform(0.4, 0.85) * veins)
    dots = _through_plane_veins(rng, grid.shape, grid.spacing, (gm + wm) > 0.7, int(rng.integers(0, 25)))
    img = img * (1.0 - rng.uniform(0.4, 0.85) * dots)
    if rng.random() < 0.7:
        field = _susceptibility(rng, np.clip(tissue, 0, 1), grid.spacing)
        img = img * np.minimum(field, 1.0) ** rng.uniform(1.0, 3.0)  # SWI shows drop-out, not pile-up
    parenchyma = (gm + wm) > 0.8
    brain = ndimage.binary_erosion(parenchyma, iterations=1)
    centres_a, radii_a = place_bleeds(rng, brain, grid.spacing, n_bleeds)
    if len(centres_a):
        occ = _render_spheres(grid.shape, grid.spacing, centres_a, radii_a * rng.uniform(1.0, 1.8, len(radii_a)))
        img = img * (1.0 - occ * rng.uniform(0.5, 0.95))
    img = img * _bias_field(rng, grid.shape, rng.uniform(0.05, 0.3))
    img = _noise(rng, img, rng.uniform(0.01, 0.05))
    if rng.random() < 0.25:
        img = _gibbs(img, rng.uniform(0.65, 0.9))
    if rng.random() < 0.4:
        head = ndimage.binary_dilation((tissue + scalp) > 0.3, iterations=2)
        img = np.where(head, img, 0.0)
    img = img * float(np.exp(rng.uniform(np.log(100.0), np.log(4000.0))))
    return SwiCase(img.astype(np.float32), grid.spacing, centres_a, radii_a, brain, src.name, seed)
