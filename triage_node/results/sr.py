"""The Comprehensive 3D SR carrying a TID 1500 Measurement Report of every finding, present or absent.

Content tree (PS3.16 TID 1500):

- Imaging Measurements: one measurement group per finding. A finding with a segment is a TID 1411 volumetric group that
  references the SEG segment; any other finding is a TID 1501 group that references its key source images. Each group
  holds the finding type, the algorithm (TID 4019), finding site and laterality, a qualitative evaluation
  (121052, DCM, "Presence of property") = Present / Absent, and TID 300 measurements: probability (no units), volume
  (mL) and number of lesions, the probability citing the key source images.
- Qualitative Evaluations (C0034375, UMLS): the triage priority as a CODE (260870009, SCT, "Priority") and a TEXT
  summary (121111, DCM, "Summary") for viewers that do not render TID 1500.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import CodeContentItem, ContainerContentItem, ContentSequence, TextContentItem
from highdicom.sr.enum import RelationshipTypeValues
from pydicom.sr.codedict import codes as pcodes

from triage_node.inference.types import Finding, ModelOutput
from triage_node.preprocess.volume import Volume
from triage_node.results import codes
from triage_node.results.identity import (
    MANUFACTURER,
    AlgorithmInfo,
    ResultIdentity,
    ResultsInputError,
    contributing_equipment,
    derived_uid,
    stamp,
    used_algorithms,
)
from triage_node.results.seg import LesionSegment

MAX_KEY_IMAGES = 5  # per finding: enough to find it, few enough to keep the report readable
DEVICE_UID_BASE = "triage-node observer device"

Group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.MeasurementsAndQualitativeEvaluations


def _key_images(f: Finding, sources: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    picked = [sources[z] for z in dict.fromkeys(f.key_slices) if 0 <= z < len(sources)]
    unique = list({str(ds.SOPInstanceUID): ds for ds in picked}.values())  # frames of one multi-frame instance
    return unique[:MAX_KEY_IMAGES]


def _measurements(
    f: Finding | None, seg: LesionSegment | None, volume: Volume, keys: Sequence[pydicom.Dataset]
) -> list[hd.sr.Measurement]:
    refs = [hd.sr.SourceImageForMeasurement(str(k.SOPClassUID), str(k.SOPInstanceUID)) for k in keys] or None
    out = []
    if f is not None:
        out.append(
            hd.sr.Measurement(codes.PROBABILITY, round(f.probability, 4), codes.NO_UNITS, referenced_images=refs)
        )
    volume_ml = f.volume_ml if f is not None else None
    if volume_ml is None and seg is not None:
        volume_ml = float(np.count_nonzero(seg.mask)) * volume.voxel_volume_ml
    if volume_ml is not None:
        out.append(hd.sr.Measurement(codes.VOLUME, round(volume_ml, 3), codes.MILLILITER))
    if f is not None and f.count is not None:
        out.append(hd.sr.Measurement(codes.NUMBER_OF_LESIONS, f.count, codes.LESIONS_UNIT))
    return out


def _group(
    n: int,
    label: str,
    f: Finding | None,
    seg: LesionSegment | None,
    algo: AlgorithmInfo,
    sources: Sequence[pydicom.Dataset],
    volume: Volume,
    seg_ds: pydicom.Dataset | None,
    identity: ResultIdentity,
) -> Group:
    lesion = codes.lesion_class(label)
    keys = _key_images(f, sources) if f is not None else []
    tracking = hd.sr.TrackingIdentifier(
        uid=derived_uid(identity.sr_sop_uid, "group", str(n)), identifier=f"{algo.name}:{label}"[:64]
    )
    present = True if f is None else f.present
    site = codes.finding_site(f.location, f.laterality) if f is not None else None
    common = {
        "tracking_identifier": tracking,
        "finding_type": lesion.finding_type,
        "algorithm_id": hd.sr.AlgorithmIdentification(
            name=algo.name, version=algo.version, manufacturer=algo.manufacturer
        ),
        "finding_sites": [hd.sr.FindingSite(site[0], laterality=site[1])] if site else None,
        "measurements": _measurements(f, seg, volume, keys) or None,
        "qualitative_evaluations": [
            hd.sr.QualitativeEvaluation(codes.PRESENCE, codes.PRESENT if present else codes.ABSENT)
        ],
    }
    if seg is not None and seg_ds is not None:
        # Built directly: ReferencedSegment.from_segmentation fails on single-segment SEGs in highdicom 0.28.2.
        ref = hd.sr.ReferencedSegment(
            sop_class_uid=str(seg_ds.SOPClassUID),
            sop_instance_uid=str(seg_ds.SOPInstanceUID),
            segment_number=seg.number,
            source_series=hd.sr.SourceSeriesForSegmentation(str(sources[0].SeriesInstanceUID)),
        )
        return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(referenced_segment=ref, **common)  # type: ignore[arg-type]
    group_sources = [
        hd.sr.SourceImageForMeasurementGroup(str(k.SOPClassUID), str(k.SOPInstanceUID)) for k in keys
    ] or None
    return hd.sr.MeasurementsAndQualitativeEvaluations(source_images=group_sources, **common)  # type: ignore[arg-type]


def _describe(label: str, f: Finding | None, seg: LesionSegment | None, volume: Volume) -> str:
    phrase = codes.lesion_class(label).phrase
    parts = []
    if f is not None:
        parts.append(f"p={f.probability:.2f}")
    vol = f.volume_ml if f is not None else None
    if vol is None and seg is not None:
        vol = float(np.count_nonzero(seg.mask)) * volume.voxel_volume_ml
    if vol is not None:
        parts.append(f"{vol:.1f} mL")
    if f is not None and f.count is not None:
        parts.append(f"count {f.count}")
    if f is not None and (f.location or f.laterality):
        where = f.location or ""
        if f.laterality and f.laterality not in where:
            where = f"{f.laterality} {where}".strip()
        parts.append(where)
    return f"{phrase} ({', '.join(parts)})" if parts else phrase


def summary_text(
    items: Sequence[tuple[str, Finding | None, LesionSegment | None, AlgorithmInfo]],
    volume: Volume,
    priority: str,
    pipeline: str,
) -> str:
    """The plain-text report: priority, what was found, what was looked for and not found, and the algorithms."""
    present = [_describe(lbl, f, s, volume) for lbl, f, s, _ in items if f is None or f.present]
    absent = [_describe(lbl, f, s, volume) for lbl, f, s, _ in items if f is not None and not f.present]
    algos = ", ".join(dict.fromkeys(f"{a.name} {a.version}" for *_, a in items))
    lines = [
        f"AI triage result ({pipeline}): priority {priority.upper()}.",
        ("Findings present: " + "; ".join(present) + ".") if present else "No finding present.",
    ]
    if absent:
        lines.append("Looked for and not found: " + "; ".join(absent) + ".")
    lines.append(f"Algorithms: {algos}. Automatic result, not verified by a physician.")
    return "\n".join(lines)


def build_sr(
    sources: Sequence[pydicom.Dataset],
    volume: Volume,
    outputs: Sequence[ModelOutput],
    algorithms: Mapping[str, AlgorithmInfo],
    identity: ResultIdentity,
    priority: str,
    pipeline: str,
    seg_ds: pydicom.Dataset | None,
    segments: Sequence[LesionSegment],
    when: dt.datetime,
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of every finding in ``outputs`` (see the module docstring for the tree)."""
    items: list[tuple[str, Finding | None, LesionSegment | None, AlgorithmInfo]] = []
    claimed: set[int] = set()
    for out in outputs:
        for f in out.findings:
            seg = next(
                (s for s in segments if s.model == out.model and s.finding is f and s.number not in claimed), None
            )
            if seg is not None:
                claimed.add(seg.number)
            items.append((f.label, f, seg, algorithms[out.model]))
    # A mask no finding speaks for is still reported (present, volume from the mask).
    for seg in segments:
        if seg.number not in claimed:
            items.append((seg.label, None, seg, algorithms[seg.model]))
    if not items:
        raise ResultsInputError("nothing to report: the outputs hold no findings and no masks")

    groups = [
        _group(n, label, f, seg, algo, sources, volume, seg_ds, identity)
        for n, (label, f, seg, algo) in enumerate(items, start=1)
    ]
    key_images: list[pydicom.Dataset] = []
    for _, finding, _, _ in items:
        if finding is not None:
            key_images.extend(k for k in _key_images(finding, sources) if k not in key_images)
    key_images.sort(key=lambda ds: volume.sop_instance_uids.index(str(ds.SOPInstanceUID)))

    modality = str(getattr(sources[0], "Modality", volume.modality))
    observer = hd.sr.ObserverContext(
        observer_type=pcodes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid(DEVICE_UID_BASE, pipeline),
            name="triage-node",
            manufacturer_name=MANUFACTURER,
            model_name=f"triage-node {pipeline}"[:64],
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.IMAGING_PROCEDURE.get(modality, codes.CT_HEAD),
        imaging_measurements=groups,
        # highdicom's image library (TID 1601) describes single-frame images only; multi-frame sources are still
        # referenced from each measurement group.
        referenced_images=[k for k in key_images if int(k.get("NumberOfFrames", 1) or 1) == 1] or None,
    )
    evaluations = ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    evaluations.ContentSequence = ContentSequence(
        [
            CodeContentItem(
                name=codes.PRIORITY,
                value=codes.priority_code(priority),
                relationship_type=RelationshipTypeValues.CONTAINS,
            ),
            TextContentItem(
                name=codes.SUMMARY,
                value=summary_text(items, volume, priority, pipeline),
                relationship_type=RelationshipTypeValues.CONTAINS,
            ),
        ]
    )
    report[0].ContentSequence.append(evaluations)

    evidence = [*sources, seg_ds] if seg_ds is not None else list(sources)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=identity.sr_series_uid,
        series_number=identity.series_number + 2,
        sop_instance_uid=identity.sr_sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        series_description="AI triage report (triage-node)",
        contributing_equipment=contributing_equipment(used_algorithms(outputs, algorithms), when),
    )
    stamp(sr, when)
    return sr
