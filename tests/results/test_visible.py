"""Results every viewer shows (results/visible.py): Secondary Capture key images with the outline and the banner
burned in, a GSPS outlining the source images, an Encapsulated PDF; dciodvfy clean, stable UIDs, identical bytes on
a rebuild, and only built when asked for."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import phantom
import pydicom
import pytest
from peers import find_tool

from triage_node.results import sop
from triage_node.results.build import ResultFile, build_results, output_of
from triage_node.results.visible import BANNER, OUTLINE_RGB, render_pdf

VISIBLE = ("sc", "gsps", "pdf")


def _build(case: phantom.Case, out: Path, visible: tuple[str, ...] = VISIBLE) -> dict[str, ResultFile]:
    files = build_results(
        case.sources, case.volume, phantom.positive_outputs(case.volume), phantom.ALGORITHMS, phantom.identity(),
        "critical", "ct_head", out, visible=visible,
    )
    return {f.kind: f for f in files}


@pytest.fixture(scope="module")
def built(case: phantom.Case, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ResultFile]:
    return _build(case, tmp_path_factory.mktemp("visible"))


def test_kinds_classes_and_outputs(built: dict[str, ResultFile]) -> None:
    assert set(built) == {"seg", "map", "sr", "sc1", "sc2", "sc3", "gsps", "pdf"}
    assert built["sc1"].sop_class_uid == sop.SC_SOP_CLASS
    assert built["gsps"].sop_class_uid == sop.GSPS_SOP_CLASS
    assert built["pdf"].sop_class_uid == sop.ENCAPSULATED_PDF_SOP_CLASS
    kinds = ("seg", "map", "sr", "sc2", "gsps", "pdf")
    assert [output_of(k) for k in kinds] == ["seg", "seg", "sr", "sc", "gsps", "pdf"]
    assert len({f.sop_instance_uid for f in built.values()}) == len(built)


def test_not_built_unless_asked(case: phantom.Case, tmp_path: Path) -> None:
    assert set(_build(case, tmp_path, visible=())) == {"seg", "map", "sr"}


def test_rebuild_is_byte_identical(case: phantom.Case, built: dict[str, ResultFile], tmp_path: Path) -> None:
    again = _build(case, tmp_path)
    for kind in ("sc1", "sc2", "sc3", "gsps", "pdf"):
        assert again[kind].sop_instance_uid == built[kind].sop_instance_uid
        assert again[kind].path.read_bytes() == built[kind].path.read_bytes(), kind


def test_sc_key_images_show_outline_and_banner_in_the_source_study(
    case: phantom.Case, built: dict[str, ResultFile]
) -> None:
    mask = phantom.hemorrhage_mask()
    source_uids = [str(ds.SOPInstanceUID) for ds in case.sources]
    for kind in ("sc1", "sc2", "sc3"):
        ds = pydicom.dcmread(built[kind].path)
        assert ds.StudyInstanceUID == case.sources[0].StudyInstanceUID
        assert ds.PatientID == case.sources[0].PatientID
        assert ds.BurnedInAnnotation == "YES" and ds.ImageComments == BANNER
        z = source_uids.index(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
        assert mask[z].any(), "a key image is a slice with the outline"
        rgb = ds.pixel_array
        assert rgb.shape == (64, 64, 3)
        red = np.all(rgb == OUTLINE_RGB, axis=-1)
        assert red[mask[z]].any() or red.any()
        assert (rgb[:4] == 0).all(axis=-1).any() and (rgb[:20] > 200).all(axis=-1).any()  # banner: black, white text
        assert [item.DeviceUID for item in ds.ContributingEquipmentSequence if "DeviceUID" in item] == ["2.25.1002"]


def test_gsps_outlines_each_slice_of_the_lesion(case: phantom.Case, built: dict[str, ResultFile]) -> None:
    ds = pydicom.dcmread(built["gsps"].path)
    mask = phantom.hemorrhage_mask()
    expected = {str(case.sources[z].SOPInstanceUID) for z in range(mask.shape[0]) if mask[z].any()}
    annotated = set()
    for ann in ds.GraphicAnnotationSequence:
        uid = ann.ReferencedImageSequence[0].ReferencedSOPInstanceUID
        annotated.add(uid)
        z = [str(s.SOPInstanceUID) for s in case.sources].index(uid)
        poly = ann.GraphicObjectSequence[0]
        assert poly.GraphicType == "POLYLINE" and poly.GraphicAnnotationUnits == "PIXEL"
        pts = np.asarray(poly.GraphicData, dtype=float).reshape(-1, 2)
        assert np.array_equal(pts[0], pts[-1])
        cols, rows = np.nonzero(mask[z].T)
        assert cols.min() - 1 <= pts[:, 0].min() and pts[:, 0].max() <= cols.max() + 2
        assert rows.min() - 1 <= pts[:, 1].min() and pts[:, 1].max() <= rows.max() + 2
        assert ann.TextObjectSequence[0].UnformattedTextValue == BANNER
    assert annotated == expected
    assert ds.SoftcopyVOILUTSequence[0].WindowCenter == 40


def test_pdf_summary(built: dict[str, ResultFile]) -> None:
    ds = pydicom.dcmread(built["pdf"].path)
    doc = bytes(ds.EncapsulatedDocument)[: int(ds.EncapsulatedDocumentLength)]
    assert doc.startswith(b"%PDF-1.4") and doc.rstrip().endswith(b"%%EOF")
    assert b"any hemorrhage 97%" in doc and b"Priority: critical" in doc and BANNER.encode() in doc
    assert b"(Leading\\)" in render_pdf("t", [("(Leading)", 10)])


def test_dciodvfy_finds_no_errors(built: dict[str, ResultFile]) -> None:
    dciodvfy = find_tool("dciodvfy")
    allowed = (
        "Warning - Attribute is not present in standard DICOM IOD - (0x0018,0x1002) UI Device UID",
        "Warning - Dicom dataset contains attributes not present in standard DICOM IOD - this is a Standard Extended",
    )
    for kind in ("sc1", "gsps", "pdf"):
        proc = subprocess.run([dciodvfy, str(built[kind].path)], capture_output=True, text=True, timeout=120)
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith(("Error", "Warning"))]
        assert [line for line in lines if not line.startswith(allowed)] == [], f"{kind}: {lines}"
