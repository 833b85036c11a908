"""Write synthetic volumes as real DICOM series (CT or MR Image Storage) with consistent UIDs and geometry.

Used by tests, demos, benchmarks and ``triage-lab synth``. Identities are synthetic ("SYNTH^..."); UIDs derive from
the seed so the same call writes the same series.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

from triage_lab.synth.storage import STORAGES, Storage, draw_storage, storage_named

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


@dataclass(frozen=True)
class SeriesIds:
    patient_name: str
    patient_id: str
    accession: str
    study_uid: str
    series_uid: str


def series_ids(seed: int, series_key: str = "0", study_seed: int | None = None) -> SeriesIds:
    s = seed if study_seed is None else study_seed
    return SeriesIds(
        patient_name=f"SYNTH^PATIENT{s:05d}",
        patient_id=f"SYN{s:07d}",
        accession=f"ACC{s:07d}",
        study_uid=generate_uid(entropy_srcs=["triage-node-synth-study", str(s)]),
        series_uid=generate_uid(entropy_srcs=["triage-node-synth-series", str(seed), series_key]),
    )


def _base(
    ids: SeriesIds, modality: str, sop_class: str, study_description: str, series_description: str, series_number: int
) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.PatientName = ids.patient_name
    ds.PatientID = ids.patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = ids.study_uid
    ds.SeriesInstanceUID = ids.series_uid
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["frame", ids.series_uid])
    ds.StudyID = "1"
    ds.AccessionNumber = ids.accession
    today = dt.date(2026, 1, 1)
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = today.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "080000"
    ds.ReferringPhysicianName = "SYNTH^REFERRER"
    ds.StudyDescription = study_description
    ds.SeriesDescription = series_description
    ds.Modality = modality
    ds.Manufacturer = "triage-lab synth"
    ds.SeriesNumber = series_number
    ds.PositionReferenceIndicator = ""
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "HEAD"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def write_series(
    out_dir: Path,
    values: np.ndarray,
    spacing: tuple[float, float, float],
    seed: int,
    *,
    modality: str = "CT",
    series_key: str = "0",
    study_seed: int | None = None,
    study_description: str = "CT HEAD WITHOUT CONTRAST",
    series_description: str = "Head 5mm",
    series_number: int = 2,
    unsigned: bool = False,
    storage: Storage | str | None = None,
    declare_count: bool = True,
    extra: dict[str, object] | None = None,
    per_slice_extra: Sequence[dict[str, object]] | None = None,
) -> list[Path]:
    """Write ``values`` (z, y, x; HU for CT, signal for MR) as one series, slice 0 most inferior; return the paths.

    CT storage: ``storage`` is a :class:`~triage_lab.synth.storage.Storage`, the name of one in ``STORAGES``
    (``signed``, ``unsigned``, ``unsigned12``, ``half``, ``double``) or ``"seeded"`` (drawn from ``seed`` by
    ``draw_storage``); PixelRepresentation, BitsStored, HighBit and the rescale tags follow it and values beyond its
    range are clipped. Without it, ``unsigned`` stores unsigned 16 bits with RescaleIntercept -1024, else signed 16
    bits with intercept 0 (the output of earlier versions). ``declare_count`` sets ImagesInAcquisition so a receiver
    can complete the series without waiting.
    """
    store = _ct_storage(storage, unsigned, seed, modality)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = series_ids(seed, series_key, study_seed)
    sop_class = CT_IMAGE_STORAGE if modality == "CT" else MR_IMAGE_STORAGE
    base = _base(ids, modality, sop_class, study_description, series_description, series_number)
    dz, dy, dx = spacing
    nz, ny, nx = values.shape
    paths = []
    for z in range(nz):
        ds = base.copy()
        ds.SOPInstanceUID = generate_uid(entropy_srcs=["triage-node-synth-instance", ids.series_uid, str(z)])
        ds.InstanceNumber = z + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [-(nx - 1) * dx / 2, -(ny - 1) * dy / 2, round(z * dz, 4)]
        ds.SliceLocation = round(z * dz, 4)
        ds.SliceThickness = dz
        ds.PixelSpacing = [dy, dx]
        ds.Rows, ds.Columns = ny, nx
        plane = np.asarray(values[z])
        if modality == "CT":
            ds.KVP = 120
            ds.RescaleType = "HU"
            ds.WindowCenter, ds.WindowWidth = 40, 80
            ds.PixelRepresentation = 1 if store.signed else 0
            ds.BitsStored, ds.HighBit = store.bits_stored, store.bits_stored - 1
            ds.RescaleIntercept, ds.RescaleSlope = store.intercept, store.slope
            raw = store.encode(plane)
        else:
            ds.PixelRepresentation = 0
            ds.MagneticFieldStrength = 3
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.EchoTime = 20
            ds.RepetitionTime = 30
            raw = np.clip(np.rint(plane), 0, 65535).astype(np.uint16)
        if declare_count:
            ds.ImagesInAcquisition = nz
        ds.AcquisitionNumber = 1
        for k, v in (extra or {}).items():
            setattr(ds, k, v)
        if per_slice_extra is not None:
            for k, v in per_slice_extra[z].items():
                setattr(ds, k, v)
        ds.PixelData = raw.tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(sop_class)
        meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        path = out_dir / f"{z + 1:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _ct_storage(storage: Storage | str | None, unsigned: bool, seed: int, modality: str) -> Storage:
    if storage is None:
        return STORAGES["unsigned" if unsigned else "signed"]
    if modality != "CT":
        raise ValueError(f"storage applies to CT only, got modality {modality!r}")
    if unsigned:
        raise ValueError("give either unsigned=True or storage, not both")
    if isinstance(storage, Storage):
        return storage
    return draw_storage(seed) if storage == "seeded" else storage_named(storage)


def write_ct_series(
    out_dir: Path, hu: np.ndarray, spacing: tuple[float, float, float], seed: int, **kwargs: object
) -> list[Path]:
    """A CT head series from a HU volume (z, y, x). See ``write_series`` for the options."""
    return write_series(out_dir, hu, spacing, seed, modality="CT", **kwargs)  # type: ignore[arg-type]


def resample_slices(
    hu: np.ndarray, spacing: tuple[float, float, float], n_slices: int
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Resample a volume along z to ``n_slices`` slices covering the same extent (linear). -> (volume, spacing)."""
    nz = hu.shape[0]
    pos = np.linspace(0, nz - 1, n_slices)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, nz - 1)
    w = (pos - lo)[:, None, None].astype(np.float32)
    out = hu[lo].astype(np.float32) * (1 - w) + hu[hi].astype(np.float32) * w
    dz = spacing[0] * (nz - 1) / max(n_slices - 1, 1)
    return out, (dz, spacing[1], spacing[2])
