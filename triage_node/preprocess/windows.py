"""CT display windows as named presets (pure numpy)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np


@dataclass(frozen=True)
class Window:
    """A window given by its centre (level) and width, in HU."""

    center: float
    width: float

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """Map HU to [0, 1]: float32, same shape as ``hu``."""
        lo = self.center - self.width / 2.0
        out = (np.asarray(hu, dtype=np.float32) - np.float32(lo)) / np.float32(self.width)
        return np.clip(out, 0.0, 1.0, out=out)


class Preset(Enum):
    BRAIN = Window(40.0, 80.0)
    SUBDURAL = Window(80.0, 200.0)
    BONE = Window(600.0, 2800.0)


def three_windows(hu: np.ndarray) -> np.ndarray:
    """Stack brain, subdural and bone windows as channels.

    ``hu``: (..., y, x) any numeric dtype -> float32 (..., 3, y, x) in [0, 1].
    """
    return np.stack([p.value.apply(hu) for p in (Preset.BRAIN, Preset.SUBDURAL, Preset.BONE)], axis=-3)
