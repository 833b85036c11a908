"""The lesion SEG and the Grad-CAM map: frames reference the right source instances and carry the right pixels;
segments are coded, AUTOMATIC and identify their algorithm; Contributing Equipment follows IHE AIR."""

from __future__ import annotations

import numpy as np
import phantom
import pydicom

from triage_node.results.build import ResultFile
from triage_node.results.seg import lesion_segments


def _frames(ds: pydicom.Dataset) -> np.ndarray:
    arr = ds.pixel_array
    return arr[None] if arr.ndim == 2 else arr


def test_seg_frames_reference_the_source_slices_that_hold_the_mask(
    case: phantom.Case, positive: dict[str, ResultFile]
) -> None:
    seg = pydicom.dcmread(positive["seg"].path)
    mask = phantom.hemorrhage_mask()
    z_of = {str(ds.SOPInstanceUID): z for z, ds in enumerate(case.sources)}
    frames = _frames(seg)
    referenced = []
    for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        src = fg.DerivationImageSequence[0].SourceImageSequence[0]
        z = z_of[src.ReferencedSOPInstanceUID]
        referenced.append(z)
        assert src.ReferencedSOPClassUID == case.sources[z].SOPClassUID
        position = [float(v) for v in fg.PlanePositionSequence[0].ImagePositionPatient]
        assert position == [float(v) for v in case.sources[z].ImagePositionPatient]
        ident = fg if "SegmentIdentificationSequence" in fg else seg.SharedFunctionalGroupsSequence[0]
        assert ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber == 1
        assert np.array_equal(frames[i].astype(bool), mask[z]), f"frame {i + 1} (slice {z}) pixels differ"
    # Empty frames are omitted: exactly the slices that hold the mask, each once.
    assert sorted(referenced) == sorted(np.flatnonzero(mask.any(axis=(1, 2))).tolist())
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == case.sources[0].SeriesInstanceUID
    assert seg.StudyInstanceUID == case.sources[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == case.sources[0].FrameOfReferenceUID


def test_seg_segment_is_coded_automatic_and_names_its_algorithm(positive: dict[str, ResultFile]) -> None:
    seg = pydicom.dcmread(positive["seg"].path)
    assert seg.SegmentationType == "BINARY"
    (segment,) = seg.SegmentSequence
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentLabel == "intracranial hemorrhage"
    cat = segment.SegmentedPropertyCategoryCodeSequence[0]
    typ = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (cat.CodeValue, cat.CodingSchemeDesignator) == ("49755003", "SCT")
    assert (typ.CodeValue, typ.CodingSchemeDesignator) == ("50960005", "SCT")
    algo = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("ct_segmenter", "0.9.1")
    assert segment.TrackingID == "ct_segmenter:hemorrhage_extent"


def test_contributing_equipment_identifies_each_algorithm(positive: dict[str, ResultFile]) -> None:
    for kind, expected in (("seg", {"ct_segmenter"}), ("map", {"ich"}), ("sr", {"ich", "ct_segmenter"})):
        ds = pydicom.dcmread(positive[kind].path)
        items = [i for i in ds.ContributingEquipmentSequence if i.Manufacturer == "triage-node project"]
        assert {i.ManufacturerModelName for i in items} == expected, kind
        for item in items:
            purpose = item.PurposeOfReferenceCodeSequence[0]
            assert (purpose.CodeValue, purpose.CodingSchemeDesignator) == ("109102", "DCM")
            assert item.Manufacturer == "triage-node project"
            assert item.DeviceUID == phantom.ALGORITHMS[item.ManufacturerModelName].device_uid
            assert item.SoftwareVersions == phantom.ALGORITHMS[item.ManufacturerModelName].version


def test_gradcam_map_is_a_fractional_saliency_seg(case: phantom.Case, positive: dict[str, ResultFile]) -> None:
    m = pydicom.dcmread(positive["map"].path)
    assert m.SegmentationType == "FRACTIONAL"
    assert (m.SegmentationFractionalType, m.MaximumFractionalValue) == ("PROBABILITY", 255)
    (segment,) = m.SegmentSequence
    typ = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (typ.CodeValue, typ.CodingSchemeDesignator) == ("130404", "DCM")
    assert segment.SegmentLabel.startswith("Grad-CAM")
    heat = phantom.positive_outputs(case.volume)[0].heatmaps["any_hemorrhage"]
    z_of = {str(ds.SOPInstanceUID): z for z, ds in enumerate(case.sources)}
    frames = _frames(m)
    zs = []
    for i, fg in enumerate(m.PerFrameFunctionalGroupsSequence):
        z = z_of[fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        zs.append(z)
        np.testing.assert_allclose(frames[i] / 255.0, heat[z], atol=1 / 255)
    assert sorted(zs) == sorted(np.flatnonzero(heat.any(axis=(1, 2))).tolist())


def test_segments_pair_masks_with_findings(case: phantom.Case) -> None:
    segs = lesion_segments(phantom.positive_outputs(case.volume))
    assert [(s.number, s.model, s.label) for s in segs] == [(1, "ct_segmenter", "hemorrhage_extent")]
    assert segs[0].finding is not None and segs[0].finding.volume_ml is not None
    assert lesion_segments(phantom.negative_outputs(case.volume)) == []
