"""The TID 1500 report: one group per finding with presence, probability, volume, site and laterality; the segment
reference (single-segment SEG, built without ReferencedSegment.from_segmentation); priority and text summary."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import phantom
import pydicom
from peers import find_tool

from triage_node.inference.types import Finding, ModelOutput
from triage_node.results.build import ResultFile, build_results
from triage_node.results.identity import AlgorithmInfo


def _walk(items: pydicom.Sequence) -> Iterator[pydicom.Dataset]:
    for item in items:
        yield item
        if "ContentSequence" in item:
            yield from _walk(item.ContentSequence)


def _name(item: pydicom.Dataset) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeMeaning)


def _groups(sr: pydicom.Dataset) -> dict[str, pydicom.Dataset]:
    """Measurement groups by tracking identifier."""
    groups = {}
    for item in _walk(sr.ContentSequence):
        if item.ValueType == "CONTAINER" and _name(item) == "Measurement Group":
            tid = next(i.TextValue for i in item.ContentSequence if _name(i) == "Tracking Identifier")
            groups[tid] = item
    return groups


def _child(group: pydicom.Dataset, name: str) -> pydicom.Dataset:
    return next(i for i in group.ContentSequence if _name(i) == name)


def _num(group: pydicom.Dataset, name: str) -> float:
    return float(_child(group, name).MeasuredValueSequence[0].NumericValue)


def _code(item: pydicom.Dataset) -> tuple[str, str]:
    c = item.ConceptCodeSequence[0]
    return str(c.CodeValue), str(c.CodingSchemeDesignator)


def test_one_group_per_finding_with_presence_and_probability(positive: dict[str, ResultFile]) -> None:
    sr = pydicom.dcmread(positive["sr"].path)
    groups = _groups(sr)
    assert sorted(groups) == [
        "ct_segmenter:hemorrhage_extent", "ich:any_hemorrhage", "ich:intraparenchymal", "ich:subdural"
    ]
    present = {"52101004", "SCT"}
    assert set(_code(_child(groups["ich:any_hemorrhage"], "Presence of property"))) == present
    assert _code(_child(groups["ich:subdural"], "Presence of property")) == ("272519000", "SCT")
    assert _code(_child(groups["ich:subdural"], "Finding")) == ("35486000", "SCT")
    assert _num(groups["ich:any_hemorrhage"], "Probability") == 0.97
    assert _num(groups["ich:subdural"], "Probability") == 0.03


def test_segmented_finding_references_the_seg_segment_with_volume_and_site(
    case: phantom.Case, positive: dict[str, ResultFile]
) -> None:
    sr = pydicom.dcmread(positive["sr"].path)
    seg = pydicom.dcmread(positive["seg"].path)
    group = _groups(sr)["ct_segmenter:hemorrhage_extent"]
    ref = _child(group, "Referenced Segment")
    sop = ref.ReferencedSOPSequence[0]
    assert sop.ReferencedSOPInstanceUID == seg.SOPInstanceUID
    assert sop.ReferencedSOPClassUID == seg.SOPClassUID
    assert sop.ReferencedSegmentNumber == 1
    expected_ml = phantom.hemorrhage_mask().sum() * case.volume.voxel_volume_ml
    assert abs(_num(group, "Volume") - expected_ml) < 0.01
    site = _child(group, "Finding Site")
    assert _code(site) == ("42695009", "SCT")  # thalamus
    assert _code(_child(site, "Laterality")) == ("24028007", "SCT")  # right
    # The SEG is in the SR's evidence, with the source series.
    evidence = {
        s.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for s in series.ReferencedSOPSequence
    }
    assert seg.SOPInstanceUID in evidence
    assert {str(ds.SOPInstanceUID) for ds in case.sources} <= evidence


def test_key_images_are_referenced_by_the_probability(case: phantom.Case, positive: dict[str, ResultFile]) -> None:
    sr = pydicom.dcmread(positive["sr"].path)
    prob = _child(_groups(sr)["ich:any_hemorrhage"], "Probability")
    refs = [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in prob.ContentSequence if i.ValueType == "IMAGE"]
    assert refs == [str(case.sources[z].SOPInstanceUID) for z in (7, 8, 6)]


def test_priority_is_coded_and_the_summary_is_readable(positive: dict[str, ResultFile]) -> None:
    sr = pydicom.dcmread(positive["sr"].path)
    items = list(_walk(sr.ContentSequence))
    priority = next(i for i in items if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "260870009")
    assert _code(priority) == ("25876001", "SCT")
    summary = next(i.TextValue for i in items if i.ValueType == "TEXT" and _name(i) == "Summary")
    assert summary.startswith("AI triage result (ct_head): priority CRITICAL.")
    assert "intracranial hemorrhage (p=0.88, 1.3 mL, right thalamus)" in summary
    assert "Looked for and not found: subdural hemorrhage (p=0.03)." in summary
    assert (sr.VerificationFlag, sr.CompletionFlag, sr.PreliminaryFlag) == ("UNVERIFIED", "COMPLETE", "PRELIMINARY")
    assert sr.StudyInstanceUID == pydicom.dcmread(positive["seg"].path).StudyInstanceUID


def test_negative_study_reports_each_finding_absent(negative: dict[str, ResultFile]) -> None:
    sr = pydicom.dcmread(negative["sr"].path)
    groups = _groups(sr)
    assert sorted(groups) == ["ct_segmenter:hemorrhage_extent", "ich:any_hemorrhage", "ich:subdural"]
    for tid, group in groups.items():
        assert _code(_child(group, "Presence of property")) == ("272519000", "SCT"), tid
        assert not [i for i in group.ContentSequence if _name(i) == "Referenced Segment"]
    summary = next(i.TextValue for i in _walk(sr.ContentSequence) if i.ValueType == "TEXT" and _name(i) == "Summary")
    assert "No finding present." in summary
    assert "Looked for and not found: intracranial hemorrhage (p=0.02); subdural hemorrhage (p=0.01)" in summary


def test_highdicom_reads_the_report_back(positive: dict[str, ResultFile]) -> None:
    sr = hd.sr.srread(positive["sr"].path)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 1 and groups[0].reference_type == hd.sr.CodedConcept("121191", "DCM", "Referenced Segment")
    assert len(sr.content.get_image_measurement_groups()) == 3


def test_microbleeds_report_count_and_declare_the_local_code(case: phantom.Case, tmp_path: Path) -> None:
    mask = np.zeros(case.volume.pixels.shape, bool)
    mask[7, 30:32, 30:32] = mask[9, 20:22, 40:42] = True
    out = ModelOutput(
        "cmb", "0.3",
        (Finding("microbleed", True, 0.8, "cmb", "0.3", count=2, key_slices=(7, 9), location="left frontal lobe"),),
        masks={"microbleed": mask},
    )
    algos = {"cmb": AlgorithmInfo("cmb", "0.3", "2.25.55")}
    files = {f.kind: f for f in build_results(
        case.sources, case.volume, [out], algos, phantom.identity("cmb"), "routine", "mr_swi", tmp_path
    )}
    sr = pydicom.dcmread(files["sr"].path)
    group = _groups(sr)["cmb:microbleed"]
    assert _code(_child(group, "Finding")) == ("CMB", "99TRN")
    assert _num(group, "Number of lesions (observable entity)") == 2
    site = _child(group, "Finding Site")
    assert (_code(site), _code(_child(site, "Laterality"))) == (("83251001", "SCT"), ("7771000", "SCT"))
    (scheme,) = sr.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == "99TRN"
    assert "CodingSchemeIdentificationSequence" not in pydicom.dcmread(files["seg"].path)  # SEG uses SNOMED only
    proc = subprocess.run([find_tool("dciodvfy"), str(files["sr"].path)], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    assert not [line for line in lines if line.startswith("Error")], lines
