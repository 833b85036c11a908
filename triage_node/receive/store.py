"""Durable storage of one received instance: parse and check the header, write the bytes (temporary name, fsync,
rename, fsync the folder), then record the row in one transaction. Only after both may the SCP answer success.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session

from triage_node.receive.contexts import ENHANCED_SOP_CLASSES, NATIVE_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES
from triage_node.worklist.models import Instance, Series, SeriesState, Study

log = logging.getLogger(__name__)

# DICOM PS3.4 C-STORE failure statuses.
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_DOES_NOT_MATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_PROCESSING_FAILURE = 0x0110

MAX_FRAMES = 5000


class Refused(Exception):
    """An instance that must be refused with ``status``; ``reason`` goes to the log (no PHI)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value)[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class Header:
    """What the receive path needs from an instance. Patient fields are PHI: never log them."""

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    modality: str | None
    instance_number: int | None
    series_number: int | None
    series_description: str | None
    body_part: str | None
    expected_instances: int | None
    patient_name: str | None
    patient_id: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    accession_number: str | None
    study_id: str | None
    study_description: str | None
    study_date: str | None
    study_time: str | None
    referring_physician: str | None


def _check_pixels(ds: Dataset, transfer_syntax: str) -> None:
    for kw in ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PixelRepresentation"):
        if _int(ds, kw) is None:
            raise Refused(STATUS_DATASET_DOES_NOT_MATCH, f"image attribute {kw} is missing")
    if "PixelData" not in ds:
        raise Refused(STATUS_DATASET_DOES_NOT_MATCH, "PixelData is missing")
    rows, cols = int(ds.Rows), int(ds.Columns)
    bits, spp = int(ds.BitsAllocated), int(ds.SamplesPerPixel)
    frames = _int(ds, "NumberOfFrames") or 1
    if rows == 0 or cols == 0 or frames < 1 or frames > MAX_FRAMES:
        raise Refused(STATUS_DATASET_DOES_NOT_MATCH, f"image size {rows}x{cols}x{frames} frames is not plausible")
    if bits not in (1, 8, 16, 32) or spp not in (1, 3):
        raise Refused(STATUS_DATASET_DOES_NOT_MATCH, f"BitsAllocated {bits} / SamplesPerPixel {spp} is not valid")
    if transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
        expected = (rows * cols * frames * spp * bits + 7) // 8
        actual = len(ds.PixelData)
        if actual < expected:
            raise Refused(
                STATUS_DATASET_DOES_NOT_MATCH,
                f"PixelData holds {actual} bytes, the header declares {expected} ({rows}x{cols}x{frames}x{bits} bit)",
            )


def parse_header(data: bytes, context_sop_class: str, affected_sop_instance: str | None) -> Header:
    """Parse an encoded dataset (with file meta) and check what storing it requires; raise Refused otherwise."""
    try:
        ds = dcmread(BytesIO(data), force=False)
        ds.get("PixelData")  # touch the last element so a truncated stream fails here, not later
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError, TypeError, AttributeError) as exc:
        raise Refused(STATUS_CANNOT_UNDERSTAND, f"dataset cannot be parsed ({type(exc).__name__}: {exc})") from exc
    meta = ds.file_meta
    transfer_syntax = str(meta.get("TransferSyntaxUID", ""))
    uids = {}
    for kw in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = _text(ds, kw)
        if value is None:
            raise Refused(STATUS_DATASET_DOES_NOT_MATCH, f"{kw} is missing")
        uids[kw] = value.strip()
    if uids["SOPClassUID"] != context_sop_class:
        raise Refused(
            STATUS_DATASET_DOES_NOT_MATCH,
            f"SOPClassUID {uids['SOPClassUID']} does not match the presentation context {context_sop_class}",
        )
    if uids["SOPClassUID"] not in STORAGE_SOP_CLASSES:
        raise Refused(STATUS_DATASET_DOES_NOT_MATCH, f"SOP class {uids['SOPClassUID']} is not an accepted image class")
    if affected_sop_instance and affected_sop_instance != uids["SOPInstanceUID"]:
        raise Refused(STATUS_DATASET_DOES_NOT_MATCH, "SOPInstanceUID differs from the request's Affected SOP Instance UID")
    _check_pixels(ds, transfer_syntax)
    expected = _int(ds, "ImagesInAcquisition")
    if uids["SOPClassUID"] in ENHANCED_SOP_CLASSES:
        expected = None  # counts frames of one acquisition, not instances of the series
    return Header(
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax,
        modality=_text(ds, "Modality", 16),
        instance_number=_int(ds, "InstanceNumber"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription", 128),
        body_part=_text(ds, "BodyPartExamined", 64),
        expected_instances=expected if expected and expected > 0 else None,
        patient_name=_text(ds, "PatientName", 324),
        patient_id=_text(ds, "PatientID"),
        patient_birth_date=_text(ds, "PatientBirthDate", 8),
        patient_sex=_text(ds, "PatientSex", 16),
        accession_number=_text(ds, "AccessionNumber"),
        study_id=_text(ds, "StudyID", 16),
        study_description=_text(ds, "StudyDescription", 128),
        study_date=_text(ds, "StudyDate", 8),
        study_time=_text(ds, "StudyTime", 16),
        referring_physician=_text(ds, "ReferringPhysicianName", 324),
    )


def _safe(uid: str) -> str:
    # UIDs are digits and dots; anything else (a hostile header) must not reach the file system.
    return "".join(c for c in uid if c.isdigit() or c == ".")[:64] or "invalid"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Instance files under ``root/<study>/<series>/<sop>.<sha16>.dcm``; a name is never reused for other bytes."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._known_dirs: set[Path] = set()

    def relative_path(self, header: Header, sha: str) -> str:
        return f"{_safe(header.study_uid)}/{_safe(header.series_uid)}/{_safe(header.sop_instance_uid)}.{sha[:16]}.dcm"

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._known_dirs:
            return
        created = []
        for p in reversed([folder, *folder.parents]):
            if p == self.root or self.root in p.parents:
                if not p.exists():
                    p.mkdir(exist_ok=True)
                    created.append(p)
        for p in created:  # make each new folder's entry durable in its parent
            _fsync_dir(p.parent)
        self._known_dirs.add(folder)

    def write(self, rel: str, data: bytes) -> Path:
        """Write ``data`` durably at ``rel`` (idempotent: an existing file of that name holds the same bytes)."""
        final = self.root / rel
        if final.exists():
            return final
        self._ensure_dir(final.parent)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.{id(data)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
        return final

    def remove_temporaries(self) -> int:
        """Delete ``*.tmp`` files left by a crash mid-write (their senders never got a success status)."""
        n = 0
        for tmp in self.root.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            n += 1
        return n


@dataclass(frozen=True)
class Recorded:
    series_id: int
    duplicate: bool  # same SOP Instance UID and same bytes as before: nothing new was stored
    new_version: bool  # same SOP Instance UID with different bytes: the older version is superseded
    reopened: bool  # the series had completed; this instance reopened it as a new version
    complete_by_count: bool  # the series now holds as many instances as it declares


def record_instance(
    session: Session, header: Header, rel_path: str, size: int, sha: str, calling_ae: str, now: dt.datetime
) -> Recorded:
    """Insert the instance row and update its study and series, inside the caller's transaction."""
    existing = session.scalars(select(Instance).where(Instance.sop_instance_uid == header.sop_instance_uid)).all()
    if any(i.sha256 == sha for i in existing):
        same = next(i for i in existing if i.sha256 == sha)
        return Recorded(same.series_id, duplicate=True, new_version=False, reopened=False, complete_by_count=False)

    study = session.scalar(select(Study).where(Study.study_instance_uid == header.study_uid))
    if study is None:
        study = Study(
            study_instance_uid=header.study_uid,
            patient_name=header.patient_name,
            patient_id=header.patient_id,
            patient_birth_date=header.patient_birth_date,
            patient_sex=header.patient_sex,
            accession_number=header.accession_number,
            study_id=header.study_id,
            study_description=header.study_description,
            study_date=header.study_date,
            study_time=header.study_time,
            referring_physician=header.referring_physician,
            first_received_at=now,
            last_received_at=now,
        )
        session.add(study)
        session.flush()
    study.last_received_at = now

    series = session.scalar(select(Series).where(Series.series_instance_uid == header.series_uid))
    if series is None:
        series = Series(
            study_id=study.id,
            series_instance_uid=header.series_uid,
            modality=header.modality,
            series_number=header.series_number,
            series_description=header.series_description,
            body_part=header.body_part,
            calling_ae=calling_ae,
            expected_instances=header.expected_instances,
            received_instances=0,
            first_received_at=now,
            last_received_at=now,
            state=SeriesState.RECEIVING.value,
            version=1,
        )
        session.add(series)
        session.flush()
    reopened = False
    if series.state == SeriesState.COMPLETE.value:
        series.state = SeriesState.RECEIVING.value
        series.version += 1
        series.completed_at = None
        reopened = True
    series.last_received_at = now
    if header.expected_instances and not series.expected_instances:
        series.expected_instances = header.expected_instances

    for old in existing:
        old.superseded = True
    if not existing:
        series.received_instances += 1
    session.add(
        Instance(
            series_id=series.id,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            instance_number=header.instance_number,
            path=rel_path,
            size=size,
            sha256=sha,
            received_at=now,
        )
    )
    complete = bool(series.expected_instances) and series.received_instances >= (series.expected_instances or 0)
    return Recorded(series.id, duplicate=False, new_version=bool(existing), reopened=reopened, complete_by_count=complete)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
