"""The Volume that flows from series assembly to the models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Volume:
    """A sorted, geometry-checked image volume.

    ``pixels``: float32, shape (z, y, x). Hounsfield units for CT (rescale applied), stored values x slope + intercept
    for MR. z follows the slice normal (ascending position along ``normal``).
    ``spacing``: (z, y, x) in mm; z is the distance between slice positions, not SliceThickness.
    ``origin``: ImagePositionPatient of slice 0 (mm, LPS).
    ``row_direction`` / ``col_direction``: the two direction cosines of ImageOrientationPatient (LPS).
    ``sop_instance_uids``: one per slice, in z order, so results can reference their source instances.
    """

    pixels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    row_direction: tuple[float, float, float]
    col_direction: tuple[float, float, float]
    sop_instance_uids: tuple[str, ...]
    modality: str
    # Images of the same series aligned with ``pixels`` slice by slice, by name: ``b0`` (a DWI volume's b=0 images).
    companions: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.pixels.ndim != 3:
            raise ValueError(f"Volume pixels must be 3-D (z, y, x), got shape {self.pixels.shape}")
        for name, arr in self.companions.items():
            if arr.shape != self.pixels.shape:
                raise ValueError(f"Volume companion {name!r} has shape {arr.shape}, pixels {self.pixels.shape}")
        if len(self.sop_instance_uids) != self.pixels.shape[0]:
            raise ValueError(
                f"Volume needs one SOP Instance UID per slice: {len(self.sop_instance_uids)} UIDs "
                f"for {self.pixels.shape[0]} slices"
            )

    @property
    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.row_direction), np.asarray(self.col_direction))

    def voxel_to_patient(self, zyx: np.ndarray) -> np.ndarray:
        """Map voxel indices (N, 3) as (z, y, x) to patient coordinates (N, 3) in mm (LPS)."""
        zyx = np.atleast_2d(np.asarray(zyx, dtype=np.float64))
        r = np.asarray(self.row_direction)  # direction of increasing column index (x)
        c = np.asarray(self.col_direction)  # direction of increasing row index (y)
        dz, dy, dx = self.spacing
        points = np.asarray(self.origin) + zyx[:, 2:3] * dx * r + zyx[:, 1:2] * dy * c + zyx[:, 0:1] * dz * self.normal
        return np.asarray(points)

    @property
    def voxel_volume_ml(self) -> float:
        dz, dy, dx = self.spacing
        return dz * dy * dx / 1000.0
