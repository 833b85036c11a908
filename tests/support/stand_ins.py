"""The stand-in analyzers the daemon tests load through ordinary model cards (``analyzer: stand_ins:NAME``; the
tests put this folder on the daemon's ``PYTHONPATH``), so a test exercises the registry, the pipeline, the results
builder and the outbox exactly as a trained model would, in milliseconds."""

from __future__ import annotations

import threading

import numpy as np

from triage_node.inference.analyzer import CardAnalyzer
from triage_node.inference.types import Finding, ModelOutput
from triage_node.preprocess.volume import Volume


class ThresholdHemorrhage(CardAnalyzer):
    """Every voxel between 60 and 90 HU is ``any_hemorrhage``, with a Grad-CAM-like map on the same voxels.

    The card's ``postprocess`` may set ``key_slices`` (3), ``probability`` (0.95), ``heat`` (the map's value, 0.8)
    and ``location`` (none)."""

    def analyze(self, volume: Volume) -> ModelOutput:
        post = self.card.postprocess
        mask = (volume.pixels > 60) & (volume.pixels < 90)
        per_slice = mask.sum(axis=(1, 2))
        present = bool(mask.any())
        key = tuple(int(z) for z in np.argsort(-per_slice)[: int(post.get("key_slices", 3))] if per_slice[z] > 0)
        finding = Finding(
            "any_hemorrhage", present, float(post.get("probability", 0.95)) if present else 0.02, self.name,
            self.version, volume_ml=float(mask.sum()) * volume.voxel_volume_ml, location=post.get("location"),
            key_slices=key,
        )
        return ModelOutput(
            self.name, self.version, (finding,), masks={"any_hemorrhage": mask},
            heatmaps={"any_hemorrhage": mask.astype(np.float32) * float(post.get("heat", 0.8))},
        )


class StubAnalyzer(CardAnalyzer):
    """The reliability suite's model: the brightest soft-tissue voxels of a central box are ``hemorrhage_extent``,
    so every processed CT series yields a SEG and a TID 1500 SR. ``postprocess.delay_s`` stretches the inference
    stage so that the crash test can kill the daemon inside it."""

    def analyze(self, volume: Volume) -> ModelOutput:
        # Stands for the compute time of a real model; nothing to wait on, so an Event with a timeout.
        threading.Event().wait(float(self.card.postprocess.get("delay_s", 0.0)))
        px = np.nan_to_num(np.asarray(volume.pixels, dtype=np.float32))
        nz, ny, nx = px.shape
        box = np.zeros(px.shape, bool)
        box[:, ny // 3: 2 * ny // 3, nx // 3: 2 * nx // 3] = True
        inside = px[box]
        mask = box & (px > (float(np.median(inside)) if inside.size else 0.0) - 1e-3) & (px < 100)
        present = bool(mask.any())
        key = tuple(int(z) for z in np.argsort(-mask.sum(axis=(1, 2)))[:2]) if present else ()
        finding = Finding(
            "hemorrhage_extent", present, 0.9 if present else 0.1, self.name, self.version,
            volume_ml=round(float(mask.sum()) * volume.voxel_volume_ml, 3), key_slices=key,
        )
        return ModelOutput(self.name, self.version, (finding,), masks={"hemorrhage_extent": mask} if present else {})
