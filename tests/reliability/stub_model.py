"""A stand-in analyzer for the reliability suite, loaded by the daemon through an ordinary model card.

It marks the brightest soft-tissue voxels of a central box as ``hemorrhage_extent``, so every processed CT series
yields a SEG and a TID 1500 SR, in milliseconds. ``postprocess.delay_s`` in the card stretches the inference stage so
that the crash test can kill the daemon inside it. The daemon imports it by the card's ``analyzer`` path (the test
puts this folder on ``PYTHONPATH``).
"""

from __future__ import annotations

import threading

import numpy as np

from triage_node.inference.card import ModelCard
from triage_node.inference.types import Finding, ModelOutput
from triage_node.preprocess.volume import Volume


class StubAnalyzer:
    def __init__(self, card: ModelCard, threads: int = 1, device: str = "cpu", precision: str = "fp32"):
        self.name = card.name
        self.version = card.version
        self.device_uid = card.device_uid
        self.delay_s = float(card.postprocess.get("delay_s", 0.0))

    def analyze(self, volume: Volume) -> ModelOutput:
        # Stands for the compute time of a real model; nothing to wait on, so an Event with a timeout.
        threading.Event().wait(self.delay_s)
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
