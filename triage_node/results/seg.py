"""DICOM Segmentation objects: a BINARY SEG of the lesions found, and a FRACTIONAL SEG of the Grad-CAM saliency maps.

Segments follow PS3.3 C.8.20.4 (Segment Description): SNOMED CT category "Morphologically Abnormal Structure"
(49755003), a lesion type from ``codes.LESIONS`` (CID 7151 / 7159 family), an anatomic region, algorithm type AUTOMATIC
and an Algorithm Identification Sequence naming the model and its version. Empty frames are omitted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes as pcodes

from triage_node import __version__
from triage_node.inference.types import Finding, ModelOutput
from triage_node.results import codes
from triage_node.results.identity import (
    MANUFACTURER,
    AlgorithmInfo,
    ResultIdentity,
    contributing_equipment,
    derived_uid,
    stamp,
    used_algorithms,
)


@dataclass(frozen=True)
class LesionSegment:
    """One segment of the lesion SEG: ``number`` (1-based), the model and mask label it comes from, the mask, and
    the finding it measures (same label, or the model's only present finding when the model has one mask)."""

    number: int
    model: str
    label: str
    mask: np.ndarray
    finding: Finding | None


def lesion_segments(outputs: Sequence[ModelOutput]) -> list[LesionSegment]:
    """A segment per non-empty mask, numbered in output order then label order."""
    segments: list[LesionSegment] = []
    for out in outputs:
        nonempty = [(label, mask) for label, mask in sorted(out.masks.items()) if np.any(mask)]
        for label, mask in nonempty:
            finding = next((f for f in out.findings if f.label == label), None)
            if finding is None and len(nonempty) == 1:
                present = [f for f in out.findings if f.present]
                finding = present[0] if len(present) == 1 else None
            segments.append(LesionSegment(len(segments) + 1, out.model, label, mask.astype(bool), finding))
    return segments


def _algorithm_id(algo: AlgorithmInfo) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=algo.name,
        family=pcodes.cid7162.ArtificialIntelligence,
        version=algo.version,
        source=algo.manufacturer,
    )


def _fix_dimension_uid(ds: pydicom.Dataset, sop_uid: str) -> None:
    """highdicom draws a random Dimension Organization UID; derive it from the SOP Instance UID instead."""
    uid = derived_uid(sop_uid, "dimension-organization")
    for item in ds.get("DimensionOrganizationSequence", []):
        item.DimensionOrganizationUID = uid
    for item in ds.get("DimensionIndexSequence", []):
        item.DimensionOrganizationUID = uid


def by_source_frame(
    sources: Sequence[pydicom.Dataset], planes: np.ndarray, source_frames: Sequence[int | None] | None
) -> tuple[list[pydicom.Dataset], np.ndarray]:
    """Lay out ``planes`` (one per volume slice, (k, rows, cols, segments)) for highdicom.

    Single-frame sources: unchanged, one source per plane. An enhanced multi-frame source (every slice a frame of one
    instance, ``source_frames`` giving each slice's 0-based frame index): one source, and a plane per source frame in
    frame order, empty where the slice was dropped by the blank-slice filter.
    """
    if not source_frames or all(f is None for f in source_frames):
        return list(sources), planes
    uids = {str(ds.SOPInstanceUID) for ds in sources}
    if len(uids) != 1 or any(f is None for f in source_frames):
        raise ValueError("a multi-frame volume must come from frames of exactly one source instance")
    n_frames = int(sources[0].NumberOfFrames)
    full = np.zeros((n_frames, *planes.shape[1:]), dtype=planes.dtype)
    full[np.asarray(source_frames, dtype=int)] = planes
    return [sources[0]], full


def _common(
    sources: Sequence[pydicom.Dataset], pipeline: str, algos: list[AlgorithmInfo], when: dt.datetime
) -> dict[str, object]:
    return {
        "source_images": list(sources),
        "instance_number": 1,
        "manufacturer": MANUFACTURER,
        "manufacturer_model_name": f"triage-node {pipeline}"[:64],
        "software_versions": __version__,
        "device_serial_number": "triage-node",
        "content_creator_name": "triage-node^AI",
        "contributing_equipment": contributing_equipment(algos, when),
        "omit_empty_frames": True,
    }


def build_seg(
    sources: Sequence[pydicom.Dataset],
    segments: Sequence[LesionSegment],
    algorithms: Mapping[str, AlgorithmInfo],
    identity: ResultIdentity,
    pipeline: str,
    when: dt.datetime,
    source_frames: Sequence[int | None] | None = None,
) -> hd.seg.Segmentation:
    """The BINARY lesion SEG in the source study, one segment per ``segments`` item (at least one)."""
    if not segments:
        raise ValueError("build_seg needs at least one non-empty segment")
    descriptions = []
    for seg in segments:
        lesion = codes.lesion_class(seg.label)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=seg.number,
                segment_label=lesion.phrase[:64],
                segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL,
                segmented_property_type=lesion.segment_type,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=_algorithm_id(algorithms[seg.model]),
                tracking_uid=derived_uid(identity.seg_sop_uid, "segment", str(seg.number)),
                tracking_id=f"{seg.model}:{seg.label}"[:64],
                anatomic_regions=[lesion.region],
            )
        )
    sources, pixels = by_source_frame(sources, np.stack([seg.mask for seg in segments], axis=-1), source_frames)
    algos = [algorithms[m] for m in dict.fromkeys(seg.model for seg in segments)]
    ds = hd.seg.Segmentation(
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=identity.seg_series_uid,
        series_number=identity.series_number,
        sop_instance_uid=identity.seg_sop_uid,
        series_description="AI lesion segmentation (triage-node)",
        content_label="LESIONS",
        content_description=f"Automatic lesion segmentation, pipeline {pipeline}"[:64],
        **_common(sources, pipeline, algos, when),  # type: ignore[arg-type]
    )
    _fix_dimension_uid(ds, identity.seg_sop_uid)
    stamp(ds, when)
    return ds


def build_map(
    sources: Sequence[pydicom.Dataset],
    heatmaps: Sequence[tuple[ModelOutput, str, np.ndarray]],
    algorithms: Mapping[str, AlgorithmInfo],
    identity: ResultIdentity,
    pipeline: str,
    when: dt.datetime,
    source_frames: Sequence[int | None] | None = None,
) -> hd.seg.Segmentation:
    """A FRACTIONAL SEG holding Grad-CAM saliency (values in [0, 1]) per heat map, so a reader sees why a slice was
    flagged. The segment type is (130404, DCM, "Saliency"): the values are attention, not lesion probability."""
    descriptions = []
    planes = []
    for number, (out, label, arr) in enumerate(heatmaps, start=1):
        lesion = codes.lesion_class(label)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=f"Grad-CAM {lesion.phrase}"[:64],
                segmented_property_category=codes.MORPHOLOGICALLY_ABNORMAL,
                segmented_property_type=codes.SALIENCY,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=_algorithm_id(algorithms[out.model]),
                tracking_uid=derived_uid(identity.map_sop_uid, "segment", str(number)),
                tracking_id=f"{out.model}:gradcam:{label}"[:64],
                anatomic_regions=[lesion.region],
            )
        )
        planes.append(np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0))
    algos = [algorithms[m] for m in dict.fromkeys(out.model for out, _, _ in heatmaps)]
    sources, stacked = by_source_frame(sources, np.stack(planes, axis=-1), source_frames)
    ds = hd.seg.Segmentation(
        pixel_array=stacked,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255,
        segment_descriptions=descriptions,
        series_instance_uid=identity.map_series_uid,
        series_number=identity.series_number + 1,
        sop_instance_uid=identity.map_sop_uid,
        series_description="AI saliency maps (Grad-CAM, triage-node)",
        content_label="SALIENCY",
        content_description="Grad-CAM saliency of the classifier, scaled to 0-1"[:64],
        **_common(sources, pipeline, algos, when),  # type: ignore[arg-type]
    )
    _fix_dimension_uid(ds, identity.map_sop_uid)
    stamp(ds, when)
    return ds


__all__ = ["LesionSegment", "build_map", "build_seg", "lesion_segments", "used_algorithms"]
