"""An analytic phantom head for tests, demos and benchmarks (no GPL data, no randomness)."""

from __future__ import annotations

import numpy as np


def phantom_head(n_slices: int = 40, size: int = 256) -> tuple[np.ndarray, tuple[float, float, float]]:
    """An analytic head: skull ellipsoid shell (1000 HU), brain (30 HU), ventricles (5 HU), air outside.

    -> (HU float32 (z, y, x), spacing (z, y, x) mm). Covers 200 mm in z.
    """
    z, y, x = np.meshgrid(
        np.linspace(-1, 1, n_slices), np.linspace(-1.2, 1.2, size), np.linspace(-1.2, 1.2, size), indexing="ij"
    )
    r = np.sqrt((x / 0.75) ** 2 + (y / 0.9) ** 2 + (z / 0.95) ** 2)
    hu = np.full(z.shape, -1000.0, dtype=np.float32)
    hu[r < 1.0] = 1000.0
    hu[r < 0.92] = 30.0
    vent = np.sqrt(((np.abs(x) - 0.12) / 0.08) ** 2 + (y / 0.3) ** 2 + (z / 0.25) ** 2) < 1
    hu[vent & (r < 0.92)] = 5.0
    return hu, (200.0 / max(n_slices - 1, 1), 240.0 / size, 240.0 / size)
