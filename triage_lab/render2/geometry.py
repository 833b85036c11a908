"""Where a canonical head lands in the scanner: a random rigid pose with scaling, a smooth random warp, and the
sampling of head-space arrays at the planes of an acquisition (optionally gantry-tilted, with thin sub-slices).

Frames: *patient* is DICOM LPS in mm (x to the patient's left, y posterior, z superior) with its origin near the head
centre; *head* is the canonical anatomy in mm, LPS-like axes, origin at its intracranial centre. A point maps as
``head = S^-1 R^-1 (patient - shift - warp(patient))``. The warp is a displacement field made from Gaussian-smoothed
white noise on a coarse box (not a sum of sinusoids or a few control points, as the training generator uses).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

WARP_BOX_MM = 150.0
WARP_STEP_MM = 6.0


def rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """3x3 rotation (radians): yaw about z, pitch about x (nodding), roll about y."""
    cz, sz = np.cos(yaw), np.sin(yaw)
    cx, sx = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(roll), np.sin(roll)
    rz = np.array([[cz, -sz, 0.0], [sz, cz, 0.0], [0.0, 0.0, 1.0]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cx, -sx], [0.0, sx, cx]])
    ry = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    return rz @ rx @ ry


@dataclass(frozen=True)
class Pose:
    """``rotation`` 3x3 and ``scale`` (3,) map head mm to patient mm, then ``shift`` (3,) mm; ``warp`` is a
    displacement field (3, n, n, n) in mm on the cube [-WARP_BOX_MM, WARP_BOX_MM]^3 of patient space (or None)."""

    rotation: np.ndarray
    scale: np.ndarray
    shift: np.ndarray
    warp: np.ndarray | None

    @property
    def volume_factor(self) -> float:
        """How much a head-space volume grows in patient space."""
        return float(np.prod(self.scale))

    def patient_to_head(self, pts: torch.Tensor) -> torch.Tensor:
        """Patient LPS mm (N, 3) -> head mm (N, 3), float32 (ample for mm)."""
        p = pts.float()
        if self.warp is not None:
            p = p - _sample_warp(self.warp, p)
        inv = np.linalg.inv(self.rotation @ np.diag(self.scale)).astype(np.float32)
        return (p - torch.from_numpy(self.shift.astype(np.float32))) @ torch.from_numpy(inv).T

    def head_to_patient(self, pts: np.ndarray) -> np.ndarray:
        """Head mm (N, 3) -> patient mm (N, 3), ignoring the (small) warp."""
        m = self.rotation @ np.diag(self.scale)
        return np.asarray(pts, np.float64) @ m.T + self.shift


def draw_pose(
    rng: np.random.Generator,
    yaw_deg: float = 14.0,
    pitch_deg: float = 18.0,
    roll_deg: float = 8.0,
    scale: tuple[float, float] = (0.88, 1.12),
    anisotropy: float = 0.06,
    shift_mm: float = 10.0,
    warp_mm: tuple[float, float] = (1.0, 4.5),
) -> Pose:
    """A random pose: rotations uniform within the bounds, an overall size times a per-axis shape factor, a shift,
    and a warp whose RMS displacement is drawn from ``warp_mm`` with a correlation length of 14-32 mm."""
    rot = rotation(*(np.deg2rad(rng.uniform(-b, b)) for b in (yaw_deg, pitch_deg, roll_deg)))
    s = rng.uniform(*scale) * rng.uniform(1.0 - anisotropy, 1.0 + anisotropy, 3)
    shift = rng.uniform(-shift_mm, shift_mm, 3) * np.array([1.0, 1.0, 0.6])
    amp = float(rng.uniform(*warp_mm))
    warp = smooth_noise_field(rng, amp, float(rng.uniform(14.0, 32.0))) if amp > 0 else None
    return Pose(rot, s, shift, warp)


def smooth_noise_field(rng: np.random.Generator, rms_mm: float, corr_mm: float) -> np.ndarray:
    """A 3-component displacement field (3, n, n, n) float32 of Gaussian-smoothed white noise, scaled to ``rms_mm``."""
    n = int(2 * WARP_BOX_MM / WARP_STEP_MM) + 1
    noise = rng.normal(0.0, 1.0, (3, n, n, n)).astype(np.float32)
    sigma = corr_mm / WARP_STEP_MM
    field = np.stack([ndimage.gaussian_filter(c, sigma, mode="wrap") for c in noise])
    rms = float(np.sqrt((field**2).sum(axis=0).mean()))
    return (field * (rms_mm / max(rms, 1e-9))).astype(np.float32)


def _sample_warp(warp: np.ndarray, pts: torch.Tensor) -> torch.Tensor:
    """Displacement (N, 3) mm at patient points (N, 3); the field's axes are (x, y, z) -> array (3, z, y, x)."""
    g = (pts.float() / WARP_BOX_MM).clamp(-1.0, 1.0).reshape(1, 1, 1, -1, 3)
    field = torch.from_numpy(warp)[None]  # (1, 3, D=z, H=y, W=x)
    d = F.grid_sample(field, g, mode="bilinear", padding_mode="border", align_corners=True)
    return d.reshape(3, -1).T


@dataclass(frozen=True)
class HeadFrame:
    """How head mm relate to the indices of a canonical array (z, y, x): ``index = A @ head + b``."""

    matrix: np.ndarray  # (3, 3)
    offset: np.ndarray  # (3,)
    shape: tuple[int, int, int]

    @classmethod
    def axial(
        cls, shape: tuple[int, int, int], spacing: tuple[float, float, float], centre_mm: np.ndarray, flip_x: bool
    ) -> HeadFrame:
        """An array with z towards the vertex, y posterior, x across (towards the patient's left unless ``flip_x``).

        ``centre_mm`` is the head origin in array mm (z, y, x)."""
        dz, dy, dx = spacing
        sx = -1.0 if flip_x else 1.0
        # head (x, y, z) -> index (z, y, x)
        m = np.array([[0.0, 0.0, 1.0 / dz], [0.0, 1.0 / dy, 0.0], [sx / dx, 0.0, 0.0]])
        b = np.asarray(centre_mm, np.float64) / np.array([dz, dy, dx])
        return cls(m, b, shape)

    def to_index(self, head: torch.Tensor) -> torch.Tensor:
        m, b = self.matrix.astype(np.float32), self.offset.astype(np.float32)
        return head.float() @ torch.from_numpy(m).T + torch.from_numpy(b)

    def to_head(self, index: np.ndarray) -> np.ndarray:
        """Array indices (N, 3) as (z, y, x) -> head mm (N, 3)."""
        return (np.asarray(index, np.float64) - self.offset) @ np.linalg.inv(self.matrix).T


@dataclass(frozen=True)
class Planes:
    """An axial acquisition: ``n_slices`` planes of ``rows`` x ``cols`` pixels.

    ``origins`` (n, 3): ImagePositionPatient of each plane (LPS mm); ``row_dir`` / ``col_dir``: the direction cosines
    (row_dir: along a row, i.e. increasing column; col_dir: increasing row); ``pixel`` (row spacing, column spacing)
    mm; ``thickness`` mm; ``sub`` thin sub-slices averaged across the thickness.
    """

    origins: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    rows: int
    cols: int
    pixel: tuple[float, float]
    thickness: float
    sub: int

    @property
    def normal(self) -> np.ndarray:
        return np.cross(self.row_dir, self.col_dir)

    @property
    def n_slices(self) -> int:
        return int(self.origins.shape[0])

    def points(self, k: int) -> torch.Tensor:
        """Patient points (sub, rows, cols, 3) float32 of plane ``k``'s thin sub-slices."""
        r = torch.arange(self.rows, dtype=torch.float32)[:, None, None] * self.pixel[0]
        c = torch.arange(self.cols, dtype=torch.float32)[None, :, None] * self.pixel[1]
        offs = ((np.arange(self.sub) + 0.5) / self.sub - 0.5).astype(np.float32)
        base = torch.from_numpy(self.origins[k].astype(np.float32))
        row_d, col_d, nrm = (torch.from_numpy(v.astype(np.float32)) for v in (self.row_dir, self.col_dir, self.normal))
        plane = base + c * row_d + r * col_d  # (rows, cols, 3)
        d = torch.from_numpy(offs * np.float32(self.thickness))[:, None, None, None] * nrm
        return plane[None] + d


def axial_planes(
    z_positions: np.ndarray,
    matrix: int,
    fov_mm: float,
    thickness: float,
    sub: int,
    tilt_deg: float = 0.0,
    centre: tuple[float, float] = (0.0, 0.0),
) -> Planes:
    """Planes at table positions ``z_positions`` (mm), square ``matrix`` over ``fov_mm``, centred on ``centre`` (x, y)
    at z = table position; a gantry tilt turns the column direction about the patient x axis (head up: +y tips up)."""
    px = fov_mm / matrix
    t = np.deg2rad(tilt_deg)
    row_dir = np.array([1.0, 0.0, 0.0])
    col_dir = np.array([0.0, np.cos(t), np.sin(t)])
    half = (matrix - 1) / 2.0 * px
    origins = np.stack(
        [np.array([centre[0], centre[1], z]) - half * row_dir - half * col_dir for z in np.asarray(z_positions)]
    )
    return Planes(origins, row_dir, col_dir, matrix, matrix, (px, px), thickness, sub)


def plane_grid(frame: HeadFrame, pose: Pose, points: torch.Tensor) -> torch.Tensor:
    """The ``grid_sample`` grid (1, 1, 1, N, 3) that reads a canonical array at patient ``points`` (..., 3)."""
    head = pose.patient_to_head(points.reshape(-1, 3))
    idx = frame.to_index(head)  # (N, 3) as (z, y, x)
    size = torch.tensor([max(n - 1, 1) for n in frame.shape], dtype=torch.float32)
    return (idx * (2.0 / size) - 1.0).flip(1).reshape(1, 1, 1, -1, 3)  # grid wants (x, y, z)


def sample_grid(
    volume: torch.Tensor, grid: torch.Tensor, shape: tuple[int, ...], mode: str = "bilinear"
) -> torch.Tensor:
    """Read ``volume`` (C, z, y, x) float32 at ``grid`` (from :func:`plane_grid`) -> (C, *shape); zero outside the
    array (store arrays so that zero means empty space)."""
    out = F.grid_sample(volume[None], grid, mode=mode, padding_mode="zeros", align_corners=True)[0]
    return out.reshape(volume.shape[0], *shape)
