"""Acute infarct on DWI with its location: crop-grid segmentation, then the region atlas registered to the patient.

Input: a Volume of the b=1000 (trace) images of a DWI series; b=0 and ADC are not needed (the series router should hand
over the highest b-value near 1000). The lesion is segmented by the crop-grid segmenter (``CropGridSegmenter``, shared
with the CT hemorrhage model), the MNI region atlas (``triage_node.inference.atlas``) is affinely registered to the
volume's parenchyma, and the location is the atlas region holding most of the lesion's voxels, the side is the side of
the MNI midline most of them lie on ("bilateral" when each side holds at least a fifth).

Why segment + atlas rather than the source study's direct classifier: see ``models/infarct/model.yaml`` (training.
design_choice) and docs/models_mr.md - on the same held-out synthetic cases the direct classifier was far less accurate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from triage_node.inference.analyzer import CardAnalyzer
from triage_node.inference.atlas import Region, Registration, load_mni_atlas, register_to_mni
from triage_node.inference.card import ModelCard
from triage_node.inference.segmenter import CropGridSegmenter
from triage_node.inference.types import Finding, ModelOutput
from triage_node.preprocess.volume import Volume

log = logging.getLogger(__name__)

BILATERAL_SHARE = 0.2


@dataclass(frozen=True)
class Location:
    """Where a lesion lies: ``region`` (None when it falls outside the atlas brain), ``side`` (left | right |
    bilateral), the share of lesion voxels in that region, and the phrase used in the finding ("right thalamus")."""

    region: Region | None
    side: str
    region_share: float

    @property
    def phrase(self) -> str:
        return f"{self.side} {self.region.phrase}" if self.region is not None else f"{self.side} hemisphere"


def locate(volume: Volume, mask: np.ndarray, registration: Registration) -> Location:
    """Read a lesion's region and side off the MNI atlas. ``mask``: bool (z, y, x) aligned with ``volume``."""
    atlas = load_mni_atlas()
    pts = registration.voxels_to_mni(volume, np.argwhere(mask))
    labels = atlas.lookup(pts)
    counts = np.bincount(labels, minlength=len(Region) + 1)[1:]
    if counts.sum() == 0:
        region, share = None, 0.0
    else:
        k = int(np.argmax(counts))
        region, share = Region(k + 1), float(counts[k] / max(len(labels), 1))
    right = float((pts[:, 0] > 0).mean()) if len(pts) else 0.5
    side = "bilateral" if BILATERAL_SHARE <= right <= 1 - BILATERAL_SHARE else ("right" if right > 0.5 else "left")
    return Location(region, side, share)


def adc_parts(b1000: np.ndarray, b0: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The head mask and ln(S0 / S1000) map (both (z, y, x)) that :func:`adc_ratio` reads; None without signal.
    Split out so that a caller scoring many masks on one series computes them once."""
    fg = b0[b0 > 0]
    if fg.size == 0:
        return None
    head = b0 > 0.1 * float(np.percentile(fg, 99))
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.log(np.clip(b0, 1e-6, None) / np.clip(b1000, 1e-6, None))
    return head, lr


def adc_ratio(
    b1000: np.ndarray, b0: np.ndarray, mask: np.ndarray, parts: tuple[np.ndarray, np.ndarray] | None = None
) -> float | None:
    """The lesion's median ADC over the parenchyma's, from a b=1000 and a b=0 volume (z, y, x): ln(S0 / S1000) is
    ADC x b, and the ratio of medians needs no b. Parenchyma: head voxels (b=0 above a tenth of its 99th percentile)
    outside ``mask`` whose ln ratio lies in 0.1-1.5 (ADC about 100-1500 x 1e-6 mm^2/s at b=1000: brain, not CSF or
    air). An acute infarct restricts diffusion (about half the parenchyma's ADC); T2 shine-through and most artefacts
    do not. None when either set is empty. ``parts``: :func:`adc_parts` of the same volumes, if already computed."""
    parts = parts if parts is not None else adc_parts(b1000, b0)
    if parts is None:
        return None
    head, lr = parts
    tissue = head & ~mask & (lr > 0.1) & (lr < 1.5)
    lesion = head & mask & np.isfinite(lr)
    if tissue.sum() < 100 or not lesion.any():
        return None
    ref = float(np.median(lr[tissue]))
    return float(np.median(lr[lesion])) / ref if ref > 0 else None


def restricted(
    b1000: np.ndarray, b0: np.ndarray, max_adc_ratio: float | None
) -> Callable[[np.ndarray], bool] | None:
    """The ADC rule as a test of one candidate lesion (bool (z, y, x)): True when its :func:`adc_ratio` is at most
    ``max_adc_ratio`` or cannot be measured. Each candidate is judged before the largest is kept, so a large bright
    region without restricted diffusion (T2 shine-through, an artefact) cannot hide a small true infarct. None when
    there is no rule (``max_adc_ratio`` None). The ln(S0/S1000) map is computed only once a candidate exists."""
    if max_adc_ratio is None:
        return None
    cached: list[tuple[np.ndarray, np.ndarray] | None] = []  # adc_parts, computed when a candidate is first judged

    def accept(component: np.ndarray) -> bool:
        if not cached:
            cached.append(adc_parts(b1000, b0))
        ratio = adc_ratio(b1000, b0, component, cached[0]) if cached[0] is not None else None
        if ratio is not None and ratio > max_adc_ratio:
            log.debug("infarct: candidate ADC ratio %.2f > %.2f: not restricted, passed over", ratio, max_adc_ratio)
            return False
        return True

    return accept


class InfarctAnalyzer(CardAnalyzer):
    """Analyzer for a ``models/infarct`` card (a crop-grid segmenter card with ``finding_label: infarct``)."""

    def __init__(self, card: ModelCard, threads: int = 1, device: str = "cpu", precision: str = "fp32") -> None:
        super().__init__(card, threads, device, precision)
        self.segmenter = CropGridSegmenter(card, threads=threads, device=device, precision=precision)
        # A lesion whose ADC is above this share of the parenchyma's is dropped, where the series carries b=0 images.
        limit = card.postprocess.get("max_adc_ratio")
        self.max_adc_ratio = float(limit) if limit is not None else None

    def analyze(self, volume: Volume) -> ModelOutput:
        t0 = time.monotonic()
        b0 = volume.companions.get("b0")
        accept = restricted(volume.pixels, b0, self.max_adc_ratio) if b0 is not None else None
        mask, gate = self.segmenter.segment(volume.pixels, volume.spacing, accept)
        present = bool(mask.any())
        location: Location | None = None
        if present:
            try:
                location = locate(volume, mask, register_to_mni(volume))
            except ValueError as e:  # no parenchyma found: report the lesion without a location
                log.warning(
                    "infarct: atlas registration failed for series with %d slices: %s", volume.pixels.shape[0], e
                )
        per_slice = mask.sum(axis=(1, 2))
        order = np.argsort(-per_slice, kind="stable")
        positions: tuple[tuple[float, float, float], ...] = ()
        if present:
            c = volume.voxel_to_patient(np.argwhere(mask).mean(axis=0))[0]
            positions = ((float(c[0]), float(c[1]), float(c[2])),)
        finding = Finding(
            label="infarct",
            present=present,
            probability=float(np.clip(gate, 0.0, 1.0)),
            model=self.name,
            model_version=self.version,
            volume_ml=round(float(mask.sum()) * volume.voxel_volume_ml, 2) if present else 0.0,
            location=location.phrase if location is not None else None,
            laterality=location.side if location is not None else None,
            key_slices=tuple(int(i) for i in order if per_slice[i] > 0),
            positions=positions,
        )
        return ModelOutput(self.name, self.version, (finding,), masks={"infarct": mask}, seconds=time.monotonic() - t0)
