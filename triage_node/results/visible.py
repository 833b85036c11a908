"""Results every PACS viewer can show: Secondary Capture key images with the outline burned in, a Grayscale Softcopy
Presentation State outlining the source images, and an Encapsulated PDF summary.

Like the SEG and SR these are pure functions of their inputs: UIDs come from ``ResultIdentity`` (derived from the
job's stored UIDs), dates from ``when``, never the clock, so a rebuild or a resend gives byte-identical objects.
Each object carries the IHE AIR Contributing Equipment of the algorithms whose masks it shows.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian
from scipy import ndimage
from skimage import measure

from triage_node import __version__
from triage_node.inference.types import ModelOutput
from triage_node.preprocess.volume import Volume
from triage_node.results import sop
from triage_node.results.identity import (
    MANUFACTURER,
    AlgorithmInfo,
    ResultIdentity,
    contributing_equipment,
    stamp,
)
from triage_node.results.seg import LesionSegment

BANNER = "AI triage result, not for diagnosis"
MAX_KEY_IMAGES = 3
CT_WINDOW = (40.0, 80.0)  # brain window: centre, width (HU)
OUTLINE_RGB = (255, 40, 40)
OUTLINE_LAB = (54.0, 78.0, 60.0)  # the same red in CIELab (display colour of the GSPS layer)


def key_slices(segments: Sequence[LesionSegment], limit: int = MAX_KEY_IMAGES) -> list[int]:
    """The slices with the largest outlined area (all segments together), at most ``limit``, in z order."""
    if not segments:
        return []
    union = np.any(np.stack([s.mask for s in segments]), axis=0)
    area = union.reshape(union.shape[0], -1).sum(axis=1)
    best = [int(z) for z in np.argsort(-area, kind="stable")[:limit] if area[z] > 0]
    return sorted(best)


def _window(pixels: np.ndarray, modality: str) -> np.ndarray:
    """8-bit grey: the CT brain window, or the slice's 1-99th percentile for MR."""
    if modality == "CT":
        lo, hi = CT_WINDOW[0] - CT_WINDOW[1] / 2, CT_WINDOW[0] + CT_WINDOW[1] / 2
    else:
        lo, hi = (float(v) for v in np.percentile(pixels, [1, 99]))
        hi = hi if hi > lo else lo + 1.0
    return np.asarray((np.clip((pixels.astype(np.float32) - lo) / (hi - lo), 0, 1) * 255).round(), dtype=np.uint8)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def burn_in(grey: np.ndarray, outline: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """RGB (rows, cols, 3): the grey slice, the outline in red, a black banner on top with ``lines`` in white."""
    rows, cols = grey.shape
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    edge = outline & ~ndimage.binary_erosion(outline)
    if max(rows, cols) >= 256:
        edge = ndimage.binary_dilation(edge)
    rgb[edge] = OUTLINE_RGB
    size = max(8, min(rows, cols) // 24)
    banner_h = (size + 4) * len(lines) + 4
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, cols - 1, min(rows - 1, banner_h)), fill=(0, 0, 0))
    font = _font(size)
    for i, line in enumerate(lines):
        draw.text((4, 3 + i * (size + 4)), line, fill=(255, 255, 255), font=font)
    return np.asarray(image, dtype=np.uint8).copy()


def _orientation_letters(direction: Sequence[float]) -> str:
    """The patient-orientation code of a direction (LPS): the letters of its main components, largest first."""
    letters = []
    for axis in np.argsort(-np.abs(np.asarray(direction)))[:2]:
        value = float(direction[axis])
        if abs(value) < 0.2:
            continue
        letters.append(("L", "P", "H")[axis] if value > 0 else ("R", "A", "F")[axis])
    return "".join(letters) or "L"


def _patient(ds: Dataset) -> dict[str, object]:
    return {
        "study_instance_uid": str(ds.StudyInstanceUID),
        "patient_id": str(ds.get("PatientID", "") or "") or None,
        "patient_name": ds.get("PatientName") or None,
        "patient_birth_date": str(ds.get("PatientBirthDate", "") or "") or None,
        "patient_sex": str(ds.get("PatientSex", "") or "") or None,
        "accession_number": str(ds.get("AccessionNumber", "") or "") or None,
        "study_id": str(ds.get("StudyID", "") or "") or None,
        "study_date": str(ds.get("StudyDate", "") or "") or None,
        "study_time": str(ds.get("StudyTime", "") or "").split(".")[0] or None,
        "referring_physician_name": ds.get("ReferringPhysicianName") or None,
    }


def _source_ref(ds: Dataset, frame: int | None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if frame is not None:
        item.ReferencedFrameNumber = frame + 1
    return item


def summary_lines(outputs: Sequence[ModelOutput], priority: str) -> list[str]:
    """One line per present finding (``any hemorrhage 97%, 4.2 ml, right frontal``), most probable first."""
    present = sorted(
        (f for out in outputs for f in out.findings if f.present), key=lambda f: (-f.probability, f.label)
    )
    lines = []
    for f in present:
        parts = [f"{f.probability * 100:.0f}%"]
        if f.volume_ml is not None:
            parts.append(f"{f.volume_ml:.1f} ml")
        if f.count is not None:
            parts.append(f"n={f.count}")
        if f.location:
            parts.append(f.location)
        lines.append(f"{f.label.replace('_', ' ')} {', '.join(parts)}")
    return lines or [f"no finding (priority {priority})"]


def build_sc(
    sources: Sequence[Dataset],
    volume: Volume,
    segments: Sequence[LesionSegment],
    algorithms: Mapping[str, AlgorithmInfo],
    identity: ResultIdentity,
    outputs: Sequence[ModelOutput],
    priority: str,
    when: dt.datetime,
    source_frames: Sequence[int | None] | None = None,
) -> list[hd.sc.SCImage]:
    """Secondary Capture key images (RGB, burned-in outline and banner) in the source study, one per key slice."""
    union = np.any(np.stack([s.mask for s in segments]), axis=0) if segments else None
    if union is None:
        return []
    algos = [algorithms[m] for m in dict.fromkeys(s.model for s in segments)]
    headline = summary_lines(outputs, priority)[0]
    images = []
    for number, z in enumerate(key_slices(segments), start=1):
        src = sources[z]
        pixels = burn_in(
            _window(volume.pixels[z], volume.modality), union[z], [BANNER, f"{priority.upper()}: {headline}"[:80]]
        )
        spacing = src.get("PixelSpacing") or (volume.spacing[1], volume.spacing[2])
        image = hd.sc.SCImage(
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=identity.sc_series_uid,
            series_number=identity.series_number + 3,
            sop_instance_uid=identity.sc_sop_uid(number),
            instance_number=number,
            manufacturer=MANUFACTURER,
            pixel_spacing=(float(spacing[0]), float(spacing[1])),
            patient_orientation=(
                _orientation_letters(volume.row_direction), _orientation_letters(volume.col_direction)
            ),
            contributing_equipment=contributing_equipment(algos, when),
            **_patient(src),  # type: ignore[arg-type]
        )
        image.SeriesDescription = "AI key images (triage-node, not for diagnosis)"
        image.ImageType = ["DERIVED", "SECONDARY"]
        image.BurnedInAnnotation = "YES"
        image.BodyPartExamined = "HEAD"  # unpaired: General Series Laterality (Type 2C) is then absent
        image.ImageComments = BANNER
        image.ManufacturerModelName = "triage-node"
        image.SoftwareVersions = __version__
        image.DerivationDescription = "Source slice in a display window with the AI outline and a banner burned in"
        frame = source_frames[z] if source_frames else None
        image.SourceImageSequence = [_source_ref(src, frame)]
        image.ContentDate = when.strftime("%Y%m%d")  # type: ignore[assignment]  # pydicom coerces to DA / TM
        image.ContentTime = when.strftime("%H%M%S")  # type: ignore[assignment]
        image.DateOfSecondaryCapture = when.strftime("%Y%m%d")  # type: ignore[assignment]  # highdicom: the clock
        image.TimeOfSecondaryCapture = when.strftime("%H%M%S")  # type: ignore[assignment]
        stamp(image, when)
        images.append(image)
    return images


def _contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of ``mask`` in PIXEL units ((column, row) pairs, 0\\0 the top left corner of the image)."""
    padded = np.pad(mask.astype(np.float32), 1)
    out = []
    for contour in measure.find_contours(padded, 0.5):
        if len(contour) < 3:
            continue
        # find_contours gives (row, col) at pixel centres of the padded image: -1 for the pad, +0.5 to the centre.
        xy = np.stack([contour[:, 1] - 0.5, contour[:, 0] - 0.5], axis=1)
        xy = np.clip(xy, 0.0, [mask.shape[1], mask.shape[0]])
        if not np.array_equal(xy[0], xy[-1]):
            xy = np.vstack([xy, xy[:1]])
        out.append(np.round(xy, 2).astype(np.float32))
    return out


def build_gsps(
    sources: Sequence[Dataset],
    volume: Volume,
    segments: Sequence[LesionSegment],
    algorithms: Mapping[str, AlgorithmInfo],
    identity: ResultIdentity,
    pipeline: str,
    when: dt.datetime,
    source_frames: Sequence[int | None] | None = None,
) -> hd.pr.GrayscaleSoftcopyPresentationState | None:
    """A GSPS on the source images with the outline of every lesion as a POLYLINE on each slice it touches, and the
    banner as text; None when nothing is outlined."""
    if not segments:
        return None
    union = np.any(np.stack([s.mask for s in segments]), axis=0)
    slices = [z for z in range(union.shape[0]) if union[z].any()]
    if not slices:
        return None
    layer = hd.pr.GraphicLayer(
        layer_name="AI_OUTLINE",
        order=1,
        description="AI triage outline",
        display_color=hd.color.CIELabColor(*OUTLINE_LAB),
    )
    multiframe = bool(source_frames) and all(f is not None for f in source_frames or ())
    referenced = [sources[0]] if multiframe else [sources[z] for z in slices]
    annotations = []
    for z in slices:
        rows, cols = union[z].shape
        objects = [hd.pr.GraphicObject("POLYLINE", c, "PIXEL") for c in _contours(union[z])]
        if not objects:
            continue
        text = hd.pr.TextObject(
            BANNER, "PIXEL", bounding_box=(2.0, 2.0, float(cols - 2), float(max(12, rows // 14))),
            text_justification="LEFT",
        )
        frame = source_frames[z] if multiframe and source_frames else None
        annotations.append(
            hd.pr.GraphicAnnotation(
                referenced_images=[sources[z]],
                graphic_layer=layer,
                referenced_frame_number=None if frame is None else frame + 1,
                graphic_objects=objects,
                text_objects=[text],
            )
        )
    voi = None
    if volume.modality == "CT":
        voi = [
            hd.pr.SoftcopyVOILUTTransformation(
                window_center=CT_WINDOW[0],
                window_width=CT_WINDOW[1],
                referenced_images=hd.ReferencedImageSequence(referenced_images=referenced),
            )
        ]
    algos = [algorithms[m] for m in dict.fromkeys(s.model for s in segments)]
    ds = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=referenced,
        series_instance_uid=identity.gsps_series_uid,
        series_number=identity.series_number + 4,
        sop_instance_uid=identity.gsps_sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=f"triage-node {pipeline}"[:64],
        software_versions=__version__,
        device_serial_number="triage-node",
        content_label="AI_TRIAGE",
        content_description=BANNER,
        graphic_annotations=annotations,
        graphic_layers=[layer],
        content_creator_name="triage-node^AI",
        voi_lut_transformations=voi,
        contributing_equipment=contributing_equipment(algos, when),
    )
    ds.SeriesDescription = "AI outline (presentation state, triage-node)"
    ds.BodyPartExamined = "HEAD"  # unpaired: no Laterality (see build_sc)
    stamp(ds, when)
    ds.PresentationCreationDate, ds.PresentationCreationTime = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    return ds


# -- PDF -------------------------------------------------------------------------------------------------------------


def _pdf_text(text: str) -> str:
    safe = text.encode("latin-1", "replace").decode("latin-1")
    return safe.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def render_pdf(title: str, lines: Sequence[tuple[str, int]]) -> bytes:
    """A one-page A4 PDF with Helvetica text: ``title`` then ``lines`` ((text, font size) pairs). Deterministic: no
    dates, no random IDs, so the same input gives the same bytes."""
    y = 800
    ops = [f"BT /F1 16 Tf 50 {y} Td ({_pdf_text(title)}) Tj ET"]
    y -= 28
    for text, size in lines:
        if y < 50:
            break
        ops.append(f"BT /F1 {size} Tf 50 {y} Td ({_pdf_text(text)}) Tj ET")
        y -= size + 6
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n".encode() + body + b"\nendobj\n")
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def pdf_summary(
    outputs: Sequence[ModelOutput], algorithms: Mapping[str, AlgorithmInfo], priority: str, pipeline: str,
    when: dt.datetime,
) -> bytes:
    lines: list[tuple[str, int]] = [
        (BANNER + ".", 12),
        ("", 6),
        (f"Priority: {priority}", 12),
        (f"Pipeline: {pipeline}", 10),
        (f"Result time: {when:%Y-%m-%d %H:%M:%S} UTC", 10),
        ("", 6),
        ("Findings:", 12),
        *((f"  - {line}", 11) for line in summary_lines(outputs, priority)),
        ("", 6),
        ("Algorithms:", 12),
        *((f"  - {a.name} {a.version} ({a.manufacturer}), Device UID {a.device_uid}", 9) for a in algorithms.values()),
        ("", 6),
        (f"triage-node {__version__}. Automated triage aid: the images need a radiologist's read.", 9),
    ]
    return render_pdf("AI triage summary", lines)


def build_pdf(
    sources: Sequence[Dataset],
    outputs: Sequence[ModelOutput],
    algorithms: Mapping[str, AlgorithmInfo],
    identity: ResultIdentity,
    priority: str,
    pipeline: str,
    when: dt.datetime,
    key: Sequence[int] = (),
    source_frames: Sequence[int | None] | None = None,
) -> Dataset:
    """An Encapsulated PDF Storage object in the source study with the findings, the priority and the algorithms."""
    src = sources[0]
    used = {o.model: algorithms[o.model] for o in outputs if o.model in algorithms}
    document = pdf_summary(outputs, used, priority, pipeline, when)
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds = Dataset()
    ds.SpecificCharacterSet = src.get("SpecificCharacterSet", "ISO_IR 100") or "ISO_IR 100"
    ds.SOPClassUID = sop.ENCAPSULATED_PDF_SOP_CLASS
    ds.SOPInstanceUID = identity.pdf_sop_uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, src.get(keyword, "") or "")
    for keyword in ("StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber"):
        setattr(ds, keyword, src.get(keyword, "") or "")
    ds.StudyInstanceUID = src.StudyInstanceUID
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = identity.pdf_series_uid
    ds.SeriesNumber = identity.series_number + 5
    ds.SeriesDescription = "AI triage summary (triage-node, not for diagnosis)"
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = f"triage-node {pipeline}"[:64]
    ds.SoftwareVersions = __version__
    ds.DeviceSerialNumber = "triage-node"
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate, ds.ContentTime = date, time
    ds.AcquisitionDateTime = date + time
    ds.BurnedInAnnotation = "NO"  # the document names no patient
    ds.DocumentTitle = "AI triage summary"
    ds.ConceptNameCodeSequence = []
    refs = [
        _source_ref(sources[z], source_frames[z] if source_frames else None) for z in (key or [0])
    ]
    ds.SourceInstanceSequence = refs
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocument = document + (b"\0" if len(document) % 2 else b"")
    ds.EncapsulatedDocumentLength = len(document)
    ds.ContributingEquipmentSequence = contributing_equipment(list(used.values()), when)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    return ds


__all__ = ["BANNER", "build_gsps", "build_pdf", "build_sc", "burn_in", "key_slices", "render_pdf", "summary_lines"]
