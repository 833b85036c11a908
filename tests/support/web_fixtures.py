"""A small synthetic worklist for the web tests: a database, a spool with a few CT slices, and a job's masks.npz."""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pydicom
from fastapi.testclient import TestClient
from peers import ROOT
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy.orm import Session, sessionmaker

from triage_node.inference.types import ModelOutput
from triage_node.results.masks import masks_path, save_masks
from triage_node.worklist.db import make_engine, migrate, session_factory, transaction
from triage_node.worklist.models import FindingRow, Instance, Job, OutboxItem, Series, Study

OUTPUT = ROOT / "test-output" / "web"  # the browser tests' screenshots and timings

RESULTS = Path("results") / "job-critical"
T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)
SIZE = 64
SLICES = 4
PATIENT_NAME = "TESTPATIENT^CRITICAL"
PATIENT_ID = "PHI-77001"
USER = "dr.alvarez"
PASSWORD = "correct horse battery staple"


class Clock:
    """A settable UTC clock for session timeouts and acknowledgement times."""

    def __init__(self, now: dt.datetime):
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += dt.timedelta(**kw)


@dataclass(frozen=True)
class Seeded:
    sessions: sessionmaker[Session]
    spool_dir: Path
    critical_uid: str
    routine_uid: str
    critical_job_id: int
    key_sop_uid: str
    rejected_series_uid: str


def head_slice(z: int) -> np.ndarray:
    """HU (y, x): air, a skull ring, brain at 35 HU and a 70 HU blood blob on slices 1-2."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - SIZE / 2, xx - SIZE / 2)
    hu = np.full((SIZE, SIZE), -1000.0)
    hu[r < 28] = 1000.0
    hu[r < 25] = 35.0
    if z in (1, 2):
        hu[np.hypot(yy - 26, xx - 38) < 6] = 70.0
    return hu


def lesion_mask() -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return np.hypot(yy - 26, xx - 38) < 6


def write_slice(path: Path, study_uid: str, series_uid: str, sop_uid: str, z: int) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "CT"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.InstanceNumber = z + 1
    ds.ImagePositionPatient = [0.0, 0.0, float(z * 5)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [3.0, 3.0]
    ds.SliceThickness = 5.0
    ds.Rows = ds.Columns = SIZE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.PixelData = (head_slice(z) + 1024).astype(np.int16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _job(**kw: object) -> Job:
    uids = {
        k: generate_uid()
        for k in ("seg_series_uid", "seg_sop_uid", "sr_series_uid", "sr_sop_uid", "map_series_uid", "map_sop_uid")
    }
    return Job(version=1, **uids, **kw)


def sqlite_url(folder: Path) -> str:
    """The seed folder's own SQLite database (copied with the folder)."""
    return f"sqlite:///{folder / 'web.db'}"


def seed(tmp_path: Path, database_url: str | None = None) -> Seeded:
    """A critical CT study with a hemorrhage (4 stored slices, masks + Grad-CAM, a rejected localizer series) and a
    routine study without findings that arrived earlier; in ``database_url``, by default a SQLite file in the folder."""
    engine = make_engine(database_url or sqlite_url(tmp_path))
    migrate(engine)
    sessions = session_factory(engine)
    spool = tmp_path / "spool"
    study_uid, series_uid, scout_uid = generate_uid(), generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(SLICES)]
    for z, sop in enumerate(sops):
        write_slice(spool / study_uid / series_uid / f"{sop}.dcm", study_uid, series_uid, sop, z)

    results = RESULTS
    (spool / results).mkdir(parents=True)
    mask = np.zeros((SLICES, SIZE, SIZE), dtype=bool)
    mask[1] = mask[2] = lesion_mask()
    heat = np.zeros((SLICES, SIZE, SIZE), dtype=np.uint8)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    heat[1] = heat[2] = np.clip(255 - 12 * np.hypot(yy - 26, xx - 38), 0, 255).astype(np.uint8)
    save_masks(
        masks_path(spool / results),
        sops,
        [ModelOutput("ich", "1.0.0", (), {"hemorrhage": mask}, {"any_hemorrhage": (heat + 0.5) / 255.0})],
    )

    with transaction(sessions) as s:
        routine = Study(
            study_instance_uid=generate_uid(),
            patient_name="OTHER^PATIENT",
            patient_id="PHI-77002",
            accession_number="ACC-ROUTINE",
            study_description="CT HEAD",
            priority="none",
            first_received_at=T0 - dt.timedelta(hours=1),
            last_received_at=T0 - dt.timedelta(hours=1),
        )
        routine.series.append(
            Series(series_instance_uid=generate_uid(), modality="CT", received_instances=30, state="complete")
        )
        routine.series[0].jobs.append(
            _job(state="delivered", pipeline="ct_head", instances=30, slices_kept=30, slices_dropped=0)
        )
        s.add(routine)

        study = Study(
            study_instance_uid=study_uid,
            patient_name=PATIENT_NAME,
            patient_id=PATIENT_ID,
            accession_number="ACC-CRIT-1",
            study_description="CT HEAD W/O",
            study_date="20260301",
            study_time="075500",
            priority="critical",
            flagged_at=T0 + dt.timedelta(seconds=95),
            first_received_at=T0,
            last_received_at=T0 + dt.timedelta(seconds=30),
        )
        series = Series(
            series_instance_uid=series_uid,
            modality="CT",
            series_number=2,
            series_description="HEAD 5mm",
            received_instances=SLICES,
            state="complete",
            last_received_at=T0 + dt.timedelta(seconds=30),
        )
        for z, sop in enumerate(sops):
            series.instances.append(
                Instance(
                    sop_instance_uid=sop,
                    sop_class_uid=CTImageStorage,
                    transfer_syntax_uid=ExplicitVRLittleEndian,
                    instance_number=z + 1,
                    path=f"{study_uid}/{series_uid}/{sop}.dcm",
                    size=1,
                    sha256=f"{z:064d}",
                )
            )
        job = _job(
            state="results_ready",
            pipeline="ct_head",
            rule="ct-head",
            instances=SLICES,
            slices_kept=SLICES,
            slices_dropped=0,
            priority="critical",
            flagged_at=study.flagged_at,
            last_instance_at=T0 + dt.timedelta(seconds=30),
            results_dir=str(spool / results),
        )
        job.findings.append(
            FindingRow(
                label="any_hemorrhage",
                present=True,
                probability=0.97,
                volume_ml=4.2,
                location="right frontal lobe",
                model="ich",
                model_version="1.0.0",
                key_slices=[1, 2],
                key_sop_uids=[sops[1], sops[2]],
            )
        )
        job.findings.append(
            FindingRow(label="subdural", present=False, probability=0.03, model="ich", model_version="1.0.0")
        )
        job.outbox.append(
            OutboxItem(
                destination="pacs",
                kind="seg",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4",
                sop_instance_uid=job.seg_sop_uid,
                path="seg.dcm",
                state="delivered",
            )
        )
        job.outbox.append(
            OutboxItem(
                destination="pacs",
                kind="sr",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.88.22",
                sop_instance_uid=job.sr_sop_uid,
                path="sr.dcm",
                state="pending",
            )
        )
        series.jobs.append(job)
        study.series.append(series)
        scout = Series(
            series_instance_uid=scout_uid,
            modality="CT",
            series_number=1,
            series_description="SCOUT",
            received_instances=2,
            state="complete",
        )
        scout.jobs.append(_job(state="rejected", reason="localizer: ImageType contains LOCALIZER", instances=2))
        study.series.append(scout)
        s.add(study)
        s.flush()
        job_id = job.id
        routine_uid = routine.study_instance_uid
    seeded = Seeded(
        sessions=sessions,
        spool_dir=spool,
        critical_uid=study_uid,
        routine_uid=routine_uid,
        critical_job_id=job_id,
        key_sop_uid=sops[1],
        rejected_series_uid=scout_uid,
    )
    ids = {f.name: getattr(seeded, f.name) for f in fields(seeded) if f.name not in ("sessions", "spool_dir")}
    (tmp_path / "seeded.json").write_text(json.dumps(ids))
    return seeded


def reopen(folder: Path, database_url: str | None = None) -> Seeded:
    """The Seeded of a copied seed folder, with a copy of its database (by default the folder's SQLite file)."""
    ids = json.loads((folder / "seeded.json").read_text())
    engine = make_engine(database_url or sqlite_url(folder))
    sessions = session_factory(engine)
    with transaction(sessions) as s:  # the pipeline stores results_dir as an absolute path
        job = s.get_one(Job, ids["critical_job_id"])
        job.results_dir = str(folder / "spool" / RESULTS)
    return Seeded(sessions=sessions, spool_dir=folder / "spool", **ids)


def login(client: TestClient, user: str = USER, password: str = PASSWORD) -> str:
    """Log in through the form; returns the session's CSRF token."""
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
    assert token is not None
    response = client.post(
        "/login", data={"username": user, "password": password, "csrf_token": token.group(1), "next": "/"}
    )
    assert response.status_code == 303, response.text
    return str(client.get("/api/session").json()["csrf_token"])
