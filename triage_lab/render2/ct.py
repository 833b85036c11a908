"""Head CT cases simulated in the projection domain.

A case: paint lesions and mimics into a canonical head (:mod:`triage_lab.render2.ct_lesions`), place the head with a
random pose and warp (:mod:`triage_lab.render2.geometry`), sample each slab as thin sub-slices and average them
(partial volume across the slice thickness, tilted with the gantry when it is tilted), turn HU into attenuation,
forward-project, draw Poisson photon counts, and reconstruct by filtered back-projection with a drawn kernel
(:mod:`triage_lab.render2.projector`). The truth is kept at output resolution: a mask per subtype.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from triage_lab.render2 import projector
from triage_lab.render2.ct_lesions import BIT, MIMIC_PAINTERS, MIMICS, PAINTERS, SUBTYPES, Canvas, ct_anatomy
from triage_lab.render2.geometry import HeadFrame, Planes, Pose, axial_planes, draw_pose, plane_grid, sample_grid

MU_WATER = 0.0195  # 1/mm, water at a ~70 keV effective energy
MIN_ML = 0.3
HU_AIR = -1024.0
STREAM = 7_101  # this renderer's random stream tag for CT (the training generator never uses it)


@dataclass(frozen=True)
class CtAcquisition:
    """Everything drawn about the scan. ``photons``: incident photons per ray at this slice thickness."""

    matrix: int
    fov_mm: float
    thickness: float
    increment: float
    sub: int
    tilt_deg: float
    views: int
    photons: float
    kernel: str
    hu_offset: float
    storage: str


def draw_acquisition(
    rng: np.random.Generator, matrix: int | None = None, thickness: float | None = None
) -> CtAcquisition:
    n = matrix if matrix is not None else int(rng.choice([256, 512], p=[0.6, 0.4]))
    th = thickness if thickness is not None else float(rng.choice([2.5, 3.0, 4.0, 5.0], p=[0.2, 0.15, 0.2, 0.45]))
    increment = th if rng.random() < 0.8 else th * float(rng.choice([0.8, 0.9]))
    tilt = float(rng.uniform(8.0, 22.0)) if rng.random() < 0.3 else 0.0
    # Photons per ray for a 0.9 mm detector bin at 5 mm; fewer for thin slices and narrow bins (quantum noise).
    photons = float(np.exp(rng.uniform(np.log(6e5), np.log(4e6)))) * th / 5.0 * (256.0 / n)
    kernel = str(rng.choice(projector.FILTERS, p=[0.1, 0.3, 0.2, 0.25, 0.15]))
    storage = str(rng.choice(["signed", "signed1024", "unsigned1024", "unsigned12"]))
    return CtAcquisition(
        n,
        0.0,  # set from the head's size in render
        th,
        increment,
        int(rng.integers(3, 6)),
        tilt,
        180 if n == 256 else 270,
        photons,
        kernel,
        float(rng.uniform(-4.0, 4.0)),
        storage,
    )


@dataclass(frozen=True)
class CtCase:
    """A rendered CT series and its truth.

    ``hu``: float32 (slices, rows, cols), slice 0 most inferior. ``masks``: subtype -> bool (slices, rows, cols) for
    every subtype painted (also those too small to count). ``subtypes``: the subtypes that count (>= 0.3 mL and
    visible on at least one slice). ``volumes_ml``: painted volume per subtype in the patient's size.
    """

    seed: int
    head: str
    hu: np.ndarray
    planes: Planes
    masks: dict[str, np.ndarray]
    volumes_ml: dict[str, float]
    subtypes: tuple[str, ...]
    mimics: tuple[str, ...]
    acquisition: CtAcquisition
    info: dict[str, object] = field(default_factory=dict)

    @property
    def any_hemorrhage(self) -> bool:
        return bool(self.subtypes)

    @property
    def lesion_mask(self) -> np.ndarray:
        out = np.zeros(self.hu.shape, dtype=bool)
        for m in self.masks.values():
            out |= m
        return out

    def truth(self) -> dict[str, object]:
        return {
            "any_hemorrhage": self.any_hemorrhage,
            "subtypes": list(self.subtypes),
            "volumes_ml": {k: round(v, 2) for k, v in self.volumes_ml.items()},
            "mimics": list(self.mimics),
            "head": self.head,
            "acquisition": asdict(self.acquisition),
        }


def draw_subtypes(rng: np.random.Generator) -> tuple[str, ...]:
    if rng.random() < 0.4:
        return ()
    k = 1 if rng.random() < 0.7 else 2
    return tuple(str(s) for s in rng.choice(SUBTYPES, size=k, replace=False))


def _head_name(rng: np.random.Generator, head: str | None) -> str:
    if head is not None:
        return head
    from triage_lab.synth.headct import HeadCTUnavailable

    name = "invesalius" if rng.random() < 0.65 else "mni"
    if name == "invesalius":
        try:
            ct_anatomy(name)
        except HeadCTUnavailable:
            name = "mni"
    return name


def make_ct_case(
    seed: int,
    subtypes: tuple[str, ...] | None = None,
    mimics: bool | None = None,
    head: str | None = None,
    matrix: int | None = None,
    thickness: float | None = None,
) -> CtCase:
    """Render one CT case, deterministic per seed and arguments. ``subtypes`` () for a normal head, None to draw;
    ``mimics`` None: always in normals, in 40% of positives."""
    rng = np.random.default_rng([seed, STREAM])
    subtypes = draw_subtypes(rng) if subtypes is None else tuple(subtypes)
    unknown = set(subtypes) - set(SUBTYPES)
    if unknown:
        raise ValueError(f"unknown subtypes {sorted(unknown)}; expected some of {SUBTYPES}")
    name = _head_name(rng, head)
    anatomy = ct_anatomy(name)
    canvas = Canvas.of(anatomy)
    for s in subtypes:
        PAINTERS[s](rng, canvas)
    with_mimics = (not subtypes or rng.random() < 0.4) if mimics is None else mimics
    if with_mimics:
        k = int(rng.integers(2, 5)) if not subtypes else int(rng.integers(1, 3))
        for m in rng.choice(MIMICS, size=k, replace=False):
            MIMIC_PAINTERS[str(m)](rng, canvas)
    pose = draw_pose(rng)
    acq = draw_acquisition(rng, matrix, thickness)
    frame = HeadFrame.axial(anatomy.hu.shape, anatomy.spacing, anatomy.centre, anatomy.flip_x)
    planes, acq = _plan(rng, anatomy.inside, frame, pose, acq)
    hu, bits = _sample_slabs(canvas, frame, pose, planes)
    masks = {s: ((bits & BIT[s]) > 0) for s in SUBTYPES if canvas.volumes_ml.get(s, 0.0) > 0}
    volumes = {s: v * pose.volume_factor for s, v in canvas.volumes_ml.items()}
    counted = tuple(s for s in SUBTYPES if volumes.get(s, 0.0) >= MIN_ML and masks[s].any())
    recon = _acquire(rng, hu, acq, planes)
    return CtCase(seed, name, recon, planes, masks, volumes, counted, tuple(canvas.mimics), acq)


def _plan(
    rng: np.random.Generator,
    inside_mm: np.ndarray,
    frame: HeadFrame,
    pose: Pose,
    acq: CtAcquisition,
) -> tuple[Planes, CtAcquisition]:
    """Slices from just below the skull base to the vertex, a field of view that holds the head."""
    sp = 1.0 / np.abs(np.array([frame.matrix[0, 2], frame.matrix[1, 1], frame.matrix[2, 0]]))  # array spacing (z, y, x)
    inside = pose.head_to_patient(frame.to_head(inside_mm / sp))
    z0, z1 = float(inside[:, 2].min()) - 12.0, float(inside[:, 2].max()) + 4.0
    centre = inside[:, :2].mean(axis=0) + rng.uniform(-6.0, 6.0, 2)
    # The skull and scalp lie within ~20 mm of the intracranial space; the headrest and table do not count.
    radius = float(np.sqrt(((inside[:, :2] - centre) ** 2).sum(axis=1)).max())
    fov = float(np.clip(max(rng.uniform(200.0, 240.0), 2.0 * (radius + 20.0)), 180.0, 280.0))
    z = np.arange(z0, z1, acq.increment)
    xy = (float(centre[0]), float(centre[1]))
    planes = axial_planes(z, acq.matrix, fov, acq.thickness, acq.sub, acq.tilt_deg, xy)
    return planes, CtAcquisition(**{**asdict(acq), "fov_mm": round(fov, 2)})


def _sample_slabs(canvas: Canvas, frame: HeadFrame, pose: Pose, planes: Planes) -> tuple[np.ndarray, np.ndarray]:
    """Slab-averaged HU (slices, rows, cols) and the subtype bits (a bit is set where >= half the slab holds it)."""
    vol = torch.from_numpy(canvas.hu - HU_AIR)[None]  # zero is air
    bits = torch.from_numpy(canvas.bits.astype(np.float32))[None]
    n = planes.n_slices
    hu = np.empty((n, planes.rows, planes.cols), np.float32)
    out_bits = np.zeros((n, planes.rows, planes.cols), np.uint8)
    for k in range(n):
        pts = planes.points(k)
        grid = plane_grid(frame, pose, pts)
        v = sample_grid(vol, grid, pts.shape[:-1])[0]  # (sub, rows, cols)
        hu[k] = (v.mean(dim=0) + HU_AIR).numpy()
        b = sample_grid(bits, grid, pts.shape[:-1], mode="nearest")[0].round().to(torch.uint8)
        for bit in BIT.values():
            frac = ((b & bit) > 0).float().mean(dim=0)
            out_bits[k][(frac >= 0.5).numpy()] |= bit
    return hu, out_bits


def _acquire(rng: np.random.Generator, hu: np.ndarray, acq: CtAcquisition, planes: Planes) -> np.ndarray:
    """Project, add quantum noise, reconstruct. HU (slices, n, n) -> reconstructed HU, outside the circle air."""
    px = planes.pixel[0]
    theta = projector.angles(acq.views)
    gen = torch.Generator().manual_seed(int(rng.integers(2**31)))
    out = np.empty_like(hu)
    circle = projector.circle_mask(acq.matrix).numpy()
    batch = 8
    for i in range(0, hu.shape[0], batch):
        mu = torch.from_numpy(np.clip(1.0 + hu[i : i + batch] / 1000.0, 0.0, None) * (MU_WATER * px))
        sino = projector.forward(mu, theta)
        noisy = projector.add_poisson_noise(sino, acq.photons, gen, electronic=2.0)
        rec = projector.filtered_backprojection(noisy, theta, acq.kernel).numpy()
        out[i : i + batch] = 1000.0 * (rec / (MU_WATER * px) - 1.0) + acq.hu_offset
    out[:, ~circle] = HU_AIR
    return np.clip(out, -1024.0, 3071.0).astype(np.float32)
