"""A stand-in analyzer for end-to-end tests of delivery: calls every voxel between 60 and 90 HU hemorrhage.

Loaded by the real daemon through a model card (``analyzer: threshold_analyzer:ThresholdHemorrhage``), so the test
exercises the registry, the pipeline, the results builder and the outbox exactly as a trained model would."""

from __future__ import annotations

import numpy as np

from triage_node.inference.card import ModelCard
from triage_node.inference.types import Finding, ModelOutput
from triage_node.preprocess.volume import Volume


class ThresholdHemorrhage:
    def __init__(self, card: ModelCard, threads: int = 1, device: str = "cpu", precision: str = "fp32"):
        self.name, self.version, self.device_uid = card.name, card.version, card.device_uid

    def analyze(self, volume: Volume) -> ModelOutput:
        mask = (volume.pixels > 60) & (volume.pixels < 90)
        per_slice = mask.sum(axis=(1, 2))
        present = bool(mask.any())
        key = tuple(int(z) for z in np.argsort(-per_slice)[:3] if per_slice[z] > 0)
        finding = Finding(
            "any_hemorrhage", present, 0.95 if present else 0.02, self.name, self.version,
            volume_ml=float(mask.sum()) * volume.voxel_volume_ml, key_slices=key,
        )
        return ModelOutput(
            self.name, self.version, (finding,), masks={"any_hemorrhage": mask},
            heatmaps={"any_hemorrhage": mask.astype(np.float32) * 0.8},
        )
