"""What every analyzer returns: frozen findings plus masks and heat maps aligned with the input Volume."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from triage_node.preprocess.volume import Volume


@dataclass(frozen=True)
class Finding:
    """One finding of one model on one series.

    ``label``: a stable machine name (``any_hemorrhage``, ``epidural``, ``intraparenchymal``, ``intraventricular``,
    ``subarachnoid``, ``subdural``, ``hemorrhage_extent``, ``microbleed``, ``infarct``).
    ``probability``: the model's series-level probability in [0, 1].
    ``volume_ml``: lesion volume from a segmentation, when there is one.
    ``location``: e.g. ``"right thalamus"``; ``laterality``: ``left`` | ``right`` | ``bilateral`` | None.
    ``count``: number of lesions where that is the measure (microbleeds).
    ``key_slices``: z indices into the Volume that carry the finding (most significant first).
    ``positions``: lesion centres in patient coordinates (mm, LPS), e.g. one per microbleed.
    ``note``: for ``not_assessed`` (the series lies outside the model's training domain), the reason.
    """

    label: str
    present: bool
    probability: float
    model: str
    model_version: str
    volume_ml: float | None = None
    location: str | None = None
    laterality: str | None = None
    count: int | None = None
    key_slices: tuple[int, ...] = ()
    positions: tuple[tuple[float, float, float], ...] = ()
    note: str | None = None  # label ``not_assessed``: the reason the model did not run

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError(f"Finding probability must be in [0, 1], got {self.probability} for {self.label}")


@dataclass(frozen=True)
class ModelOutput:
    """An analyzer's result on one Volume.

    ``masks``: label -> bool array (z, y, x) aligned with the Volume (segmentations, microbleed spheres).
    ``heatmaps``: label -> float32 array (z, y, x) in [0, 1] (Grad-CAM), aligned with the Volume.
    """

    model: str
    model_version: str
    findings: tuple[Finding, ...]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    heatmaps: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: float = 0.0


class Analyzer(Protocol):
    """A loaded model that analyzes a Volume. Implementations must be thread-compatible for one caller at a time."""

    name: str
    version: str
    device_uid: str

    def analyze(self, volume: Volume) -> ModelOutput: ...
