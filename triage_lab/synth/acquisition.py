"""Random geometry and acquisition for synthetic heads, so that models do not learn one head or one scanner.

Two profiles. ``randomised`` (the training default since ich 2.0) follows SynthSeg's domain randomisation: every
appearance and acquisition parameter is drawn per case over wide ranges - head pose and gantry tilt, head size and
strong elastic deformation, atrophy, tissue densities, slice thickness 0.6-5 mm integrated over the slab (partial
volume), field of view and matrix, reconstruction kernel (noise level and texture, sharpness), an HU calibration
offset, beam hardening (cupping and posterior-fossa bands), streaks and motion. ``legacy`` is the narrower rendering
the 1.x models were trained on; ``shifted`` draws outside the legacy ranges.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from triage_lab.synth.anatomy import HeadModel


@dataclass(frozen=True)
class Acquisition:
    """Drawn parameters of one synthetic acquisition (angles in degrees, lengths in mm)."""

    yaw: float
    pitch: float
    roll: float
    head_scale: float
    pixel_mm: float
    slice_mm: float
    shift_mm: tuple[float, float, float]
    warp_mm: float
    noise_hu: float
    blur_px: float
    matrix: int = 256
    # randomised profile only (the defaults reproduce the legacy rendering)
    thickness_mm: float = 0.0  # slab integrated per slice; 0: point sampling at the slice centre
    hu_offset: float = 0.0  # scanner calibration offset, HU
    kernel: str = "smooth"  # smooth | standard | sharp: noise texture and edge response
    noise_corr_px: float = 0.0  # noise correlation length of the kernel, pixels
    cupping_hu: float = 0.0  # beam-hardening cupping: the centre darker by this much
    fossa_band_hu: float = 0.0  # beam-hardening dark band between the petrous bones (posterior fossa)
    streaks: int = 0  # number of streak lines
    motion_px: float = 0.0  # ghost displacement of a motion blend
    atrophy_mm: float = 0.0  # CSF spaces widened by this much
    tissue_jitter: tuple[float, float, float] = (0.0, 0.0, 0.0)  # HU added to brain, CSF, soft tissue


def draw_randomised(rng: np.random.Generator, matrix: int | None = None) -> Acquisition:
    """One domain-randomised acquisition: wide, independent draws of every parameter (see the module docstring)."""
    if matrix is None:
        matrix = 512 if rng.random() < 0.3 else 256
    fov = float(rng.uniform(190.0, 260.0))
    thickness = float(np.exp(rng.uniform(np.log(0.6), np.log(5.0))))
    # Slice interval: never far below the thickness (overlap at most 20%), at least 2.5 mm so a case stays at <= ~70
    # slices (thin reconstructions are thin slabs sampled sparsely here; the model sees one slice and its neighbours).
    interval = float(rng.uniform(max(2.5, thickness * 0.8), 5.0))
    kernel = str(rng.choice(["smooth", "standard", "sharp"], p=[0.35, 0.45, 0.2]))
    noise = {"smooth": (2.0, 7.0), "standard": (3.0, 10.0), "sharp": (8.0, 22.0)}[kernel]
    return Acquisition(
        yaw=float(rng.uniform(-20, 20)),
        pitch=float(rng.uniform(-25, 20)),  # head flexion plus gantry tilt
        roll=float(rng.uniform(-10, 10)),
        head_scale=float(rng.uniform(0.86, 1.14)),
        pixel_mm=fov / matrix,
        slice_mm=interval,
        shift_mm=(float(rng.uniform(-5, 5)), float(rng.uniform(-15, 15)), float(rng.uniform(-15, 15))),
        warp_mm=float(rng.uniform(0.0, 5.0)),
        noise_hu=float(rng.uniform(*noise)),
        blur_px=float(rng.uniform(0.0, 1.0)) if kernel != "sharp" else 0.0,
        matrix=matrix,
        thickness_mm=thickness,
        hu_offset=float(rng.uniform(-10.0, 10.0)),
        kernel=kernel,
        noise_corr_px=float(rng.uniform(0.6, 1.6)) if kernel == "smooth" else float(rng.uniform(0.0, 0.8)),
        cupping_hu=float(rng.uniform(-3.0, 10.0)),
        fossa_band_hu=float(rng.uniform(5.0, 35.0)) if rng.random() < 0.5 else 0.0,
        streaks=int(rng.choice([0, 0, 0, 1, 2, 4])),
        motion_px=float(rng.uniform(1.0, 4.0)) if rng.random() < 0.12 else 0.0,
        atrophy_mm=float(rng.uniform(0.5, 3.0)) if rng.random() < 0.35 else 0.0,
        tissue_jitter=(float(rng.uniform(-4, 4)), float(rng.uniform(-3, 8)), float(rng.uniform(-15, 15))),
    )


def draw_acquisition(rng: np.random.Generator, matrix: int = 256, shifted: bool = False) -> Acquisition:
    """Training draws (``shifted=False``) or draws outside every training range (``shifted=True``): the shifted
    held-out split measures a model on acquisitions it never saw (larger tilt, smaller and larger heads, thinner and
    thicker slices, coarser pixels, stronger warp, noise and blur)."""
    if shifted:
        def outside(lo: float, hi: float, width: float) -> float:
            """Uniform in [lo - width, lo) or (hi, hi + width]."""
            v = float(rng.uniform(0.0, width))
            return lo - v if rng.random() < 0.5 else hi + v

        return Acquisition(
            yaw=outside(-15, 15, 7),
            pitch=outside(-8, 8, 4),
            roll=outside(-6, 6, 3),
            head_scale=outside(0.88, 1.12, 0.05),
            pixel_mm=float(rng.uniform(1.1, 1.25)),
            slice_mm=float(rng.choice([1.25, 6.0, 6.0, 7.0])),
            shift_mm=(float(rng.uniform(-4, 4)), float(rng.uniform(-12, 12)), float(rng.uniform(-12, 12))),
            warp_mm=float(rng.uniform(4.0, 6.0)),
            noise_hu=float(rng.uniform(7.0, 10.0)),
            blur_px=float(rng.uniform(0.7, 1.0)),
            matrix=matrix,
        )
    return Acquisition(
        yaw=float(rng.uniform(-15, 15)),
        pitch=float(rng.uniform(-8, 8)),
        roll=float(rng.uniform(-6, 6)),
        head_scale=float(rng.uniform(0.88, 1.12)),
        pixel_mm=float(rng.uniform(0.85, 1.1)),
        slice_mm=float(rng.choice([2.5, 3.0, 4.0, 5.0])) if rng.random() < 0.7 else float(rng.uniform(1.5, 5.0)),
        shift_mm=(float(rng.uniform(-4, 4)), float(rng.uniform(-12, 12)), float(rng.uniform(-12, 12))),
        warp_mm=float(rng.uniform(0.0, 4.0)),
        noise_hu=float(rng.uniform(2.0, 7.0)),
        blur_px=float(rng.uniform(0.0, 0.7)),
        matrix=matrix,
    )


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Rotation matrix acting on (z, y, x) vectors: yaw about z, pitch about x, roll about y."""
    a, b, c = np.deg2rad([yaw, pitch, roll])
    rz = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    rx = np.array([[np.cos(b), -np.sin(b), 0], [np.sin(b), np.cos(b), 0], [0, 0, 1]])
    ry = np.array([[np.cos(c), 0, -np.sin(c)], [0, 1, 0], [np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


def resample_head(
    head: HeadModel, acq: Acquisition, rng: np.random.Generator, n_slices: int | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Resample ``head`` onto a new axial grid with the drawn geometry.

    Returns ``hu`` float32 (z, matrix, matrix), ``labels`` uint8 of the same shape and spacing (z, y, x) in mm. The grid
    covers the intracranial extent plus a margin; ``n_slices`` fixes the slice count (the slice spacing then follows).
    """
    sp = np.asarray(head.spacing)
    ic = np.argwhere(head.intracranial())
    zlo, zhi = ic[:, 0].min() * sp[0], ic[:, 0].max() * sp[0]
    extent = (zhi - zlo) * acq.head_scale + 12.0
    if n_slices is None:
        nz = max(4, int(round(extent / acq.slice_mm)))
        dz = acq.slice_mm
    else:
        nz = n_slices
        dz = extent / n_slices
    m = acq.matrix
    spacing = (float(dz), acq.pixel_mm, acq.pixel_mm)

    centre_src = head.centre_mm()
    centre_src[0] = (zlo + zhi) / 2.0
    zz, yy, xx = np.meshgrid(
        (np.arange(nz) - (nz - 1) / 2.0) * dz,
        (np.arange(m) - (m - 1) / 2.0) * acq.pixel_mm,
        (np.arange(m) - (m - 1) / 2.0) * acq.pixel_mm,
        indexing="ij",
    )
    q = np.stack([zz, yy, xx], axis=0).reshape(3, -1)
    if acq.warp_mm > 0:
        # A smooth deformation as a sum of a few random long-wavelength sinusoids.
        for _ in range(3):
            k = rng.normal(size=3)
            k = k / np.linalg.norm(k) * (2 * np.pi / rng.uniform(60, 140))
            amp = rng.normal(size=3) * acq.warp_mm / np.sqrt(3)
            phase = np.sin(k @ q + rng.uniform(0, 2 * np.pi))
            q = q + amp[:, None] * phase[None, :]
    rot = _rotation(acq.yaw, acq.pitch, acq.roll)
    src_mm = rot.T @ (q / acq.head_scale) + (centre_src + np.asarray(acq.shift_mm))[:, None]
    coords = src_mm / sp[:, None]
    hu = ndimage.map_coordinates(head.hu, coords, order=1, cval=-1024.0, prefilter=False)
    labels = ndimage.map_coordinates(head.labels, coords, order=0, cval=0, prefilter=False)
    return (
        hu.reshape(nz, m, m).astype(np.float32),
        labels.reshape(nz, m, m).astype(np.uint8),
        spacing,
    )


def acquire(hu: np.ndarray, acq: Acquisition, rng: np.random.Generator) -> np.ndarray:
    """Scanner blur, noise and integer storage: float HU (z, y, x) -> int16 HU (z, y, x) clipped to [-1024, 3071]."""
    out = hu
    if acq.blur_px > 0.05:
        out = ndimage.gaussian_filter(out, sigma=(0.0, acq.blur_px, acq.blur_px))
    out = out + rng.normal(0.0, acq.noise_hu, size=out.shape).astype(np.float32)
    return np.clip(np.rint(out), -1024, 3071).astype(np.int16)
