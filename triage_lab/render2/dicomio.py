"""This renderer's own DICOM writer: CT Image Storage and MR Image Storage series with full plane geometry.

Identities are synthetic (``RENDER2^...``) and UIDs derive from the case key, so a case always writes the same series.
CT pixel storage is one of several scanner conventions (signed with intercept 0 or -1024, unsigned 16- or 12-bit with
intercept -1024), the circle outside the reconstruction is padding, and the transfer syntax is explicit or implicit
VR little endian. DWI series carry b=0 and b=1000 trace images with the standard diffusion tags, Siemens-style image
types and descriptions; the ADC map is a separate derived series; SWI is a magnitude series typed ``M\\SWI``.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from triage_lab.render2.geometry import Planes

CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass(frozen=True)
class CtStorage:
    """How HU become stored values: ``stored = HU - intercept``, clipped to the pixel format."""

    name: str
    signed: bool
    bits_stored: int
    intercept: float
    padding: int  # stored value outside the reconstruction circle


CT_STORAGES = {
    "signed": CtStorage("signed", True, 16, 0.0, -2000),
    "signed1024": CtStorage("signed1024", True, 16, -1024.0, -2000),
    "unsigned1024": CtStorage("unsigned1024", False, 16, -1024.0, 0),
    "unsigned12": CtStorage("unsigned12", False, 12, -1024.0, 0),
}


def uid(*parts: object) -> str:
    return str(generate_uid(entropy_srcs=["triage-lab-render2", *(str(p) for p in parts)]))


@dataclass(frozen=True)
class SeriesInfo:
    """Series-level text and numbers; ``key`` makes the UIDs (e.g. ``ct-7000001``)."""

    key: str
    modality: str
    study_description: str
    series_description: str
    series_number: int
    body_part: str = "HEAD"
    implicit_vr: bool = False


def _base(info: SeriesInfo, study_key: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_STORAGE if info.modality == "CT" else MR_STORAGE
    ds.PatientName = f"RENDER2^{study_key.upper()}"
    ds.PatientID = f"R2-{study_key}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.PatientAge = "055Y"
    ds.StudyInstanceUID = uid("study", study_key)
    ds.SeriesInstanceUID = uid("series", info.key)
    ds.FrameOfReferenceUID = uid("frame", study_key)
    ds.StudyID = "2"
    ds.AccessionNumber = f"R2{zlib.crc32(study_key.encode()) % 10**8:08d}"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20260202"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = info.study_description
    ds.SeriesDescription = info.series_description
    ds.Modality = info.modality
    ds.Manufacturer = "triage-lab render2"
    ds.ManufacturerModelName = "projection-domain test renderer"
    ds.SeriesNumber = info.series_number
    ds.BodyPartExamined = info.body_part
    ds.PatientPosition = "HFS"
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    return ds


def _save(ds: Dataset, path: Path, implicit: bool) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(ds.SOPClassUID)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


def _geometry(ds: Dataset, planes: Planes, k: int) -> None:
    ds.ImageOrientationPatient = [round(float(v), 6) for v in (*planes.row_dir, *planes.col_dir)]
    ds.ImagePositionPatient = [round(float(v), 4) for v in planes.origins[k]]
    ds.PixelSpacing = [round(planes.pixel[0], 6), round(planes.pixel[1], 6)]
    ds.SliceThickness = round(planes.thickness, 3)
    ds.SliceLocation = round(float(planes.origins[k] @ planes.normal), 4)
    ds.Rows, ds.Columns = planes.rows, planes.cols


def write_ct(
    out_dir: Path, hu: np.ndarray, planes: Planes, info: SeriesInfo, storage: CtStorage, tilt_deg: float, kernel: str
) -> list[Path]:
    """Write HU (slices, rows, cols) as a CT series; pixels at or below -1024 outside the circle become padding."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = _base(info, info.key)
    paths = []
    n = hu.shape[0]
    c = (np.arange(planes.rows) - (planes.rows - 1) / 2.0) ** 2
    outside = (c[:, None] + c[None, :]) > ((planes.rows - 1) / 2.0) ** 2
    lo, hi = (-(2 ** (storage.bits_stored - 1)), 2 ** (storage.bits_stored - 1) - 1) if storage.signed else (
        0,
        2**storage.bits_stored - 1,
    )
    for k in range(n):
        ds = base.copy()
        ds.SOPInstanceUID = uid("instance", info.key, k)
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        _geometry(ds, planes, k)
        ds.KVP = 120
        ds.GantryDetectorTilt = round(tilt_deg, 2)
        ds.ConvolutionKernel = kernel.upper()
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = storage.intercept, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 80
        ds.PixelRepresentation = 1 if storage.signed else 0
        ds.BitsStored, ds.HighBit = storage.bits_stored, storage.bits_stored - 1
        ds.PixelPaddingValue = storage.padding
        stored = np.clip(np.rint(hu[k] - storage.intercept), lo, hi)
        stored[outside] = storage.padding
        ds.PixelData = stored.astype(np.int16 if storage.signed else np.uint16).tobytes()
        ds.ImagesInAcquisition = n
        ds.AcquisitionNumber = 1
        paths.append(_save(ds, out_dir / f"ct{k + 1:04d}.dcm", info.implicit_vr))
    return paths


def write_mr(
    out_dir: Path,
    images: Sequence[np.ndarray],
    planes: Planes,
    info: SeriesInfo,
    study_key: str,
    per_image: Sequence[dict[str, object]],
    image_types: Sequence[list[str]],
    prefix: str = "mr",
    spacing_between: float | None = None,
) -> list[Path]:
    """Write one or more stacks of MR images (each (slices, rows, cols), e.g. b=0 and b=1000) as one series.

    ``per_image[i]`` holds extra tags for every slice of stack ``i`` (b-value, sequence name...), ``image_types[i]``
    its ImageType. Values are scaled so the series' maximum is about 4000 and stored unsigned 16-bit."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = _base(info, study_key)
    peak = max(float(np.percentile(img, 99.9)) for img in images)
    scale = 3000.0 / max(peak, 1e-6)
    paths = []
    number = 0
    for i, img in enumerate(images):
        for k in range(img.shape[0]):
            number += 1
            ds = base.copy()
            ds.SOPInstanceUID = uid("instance", info.key, i, k)
            ds.InstanceNumber = number
            ds.ImageType = list(image_types[i])
            _geometry(ds, planes, k)
            if spacing_between is not None:
                ds.SpacingBetweenSlices = round(spacing_between, 3)
            ds.MagneticFieldStrength = 3
            ds.MRAcquisitionType = "2D"
            ds.PixelRepresentation = 0
            ds.BitsStored, ds.HighBit = 16, 15
            ds.AcquisitionNumber = 1
            ds.ImagesInAcquisition = sum(x.shape[0] for x in images)
            for tag, value in per_image[i].items():
                setattr(ds, tag, value)
            ds.PixelData = np.clip(np.rint(img[k] * scale), 0, 65535).astype(np.uint16).tobytes()
            paths.append(_save(ds, out_dir / f"{prefix}{number:04d}.dcm", info.implicit_vr))
    return paths
