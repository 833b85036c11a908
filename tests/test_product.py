"""The whole product with the shipped models: DCMTK sends synthetic studies, the daemon flags them and delivers SEG and
SR to a real Orthanc, and dicom3tools validates what was sent.

Held-out seeds (never used in training) and synthetic identities only.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from peers import ROOT, find_tool, make_daemon, storescu, wait_for
from peers_orthanc import Modality, start_orthanc

from triage_lab.synth.dicom import write_series

# SQLite only: the shipped models end to end take minutes; the daemon on both is tests/web/test_daemon.py
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR3D = "1.2.840.10008.5.1.4.1.1.88.34"


def _models_present() -> bool:
    return all((ROOT / "models" / n / "model.yaml").exists() for n in ("ich", "ct_segmenter", "cmb", "infarct"))


@pytest.fixture
def product(tmp_path: Path):  # type: ignore[no-untyped-def]
    assert _models_present(), "the shipped models are missing from models/"
    daemon = make_daemon(tmp_path / "daemon")
    orthanc = start_orthanc(tmp_path / "orthanc", modalities={"triage": Modality("TRIAGE_NODE", port=daemon.port)})
    destination = {
        "name": "pacs",
        "ae_title": "ORTHANC",
        "host": "127.0.0.1",
        "port": orthanc.dicom_port,
        "backoff_initial_s": 0.5,
        "backoff_max_s": 2,
    }
    daemon.env.update({"TRIAGE_NODE__DESTINATIONS": json.dumps([destination]), "TRIAGE_NODE__MODELS__THREADS": "2"})
    daemon.start(timeout=180)
    try:
        yield daemon, orthanc
    finally:
        daemon.stop()
        orthanc.stop()


def _job(daemon, series_uid: str) -> tuple:  # type: ignore[no-untyped-def]
    rows = daemon.sql(
        "select j.id, j.state, j.pipeline, j.priority, j.results_dir, j.reason from jobs j join series s on s.id = "
        f"j.series_id where s.series_instance_uid = '{series_uid}' order by j.id desc"
    )
    return rows[0] if rows else ()


def _wait_delivered(daemon, series_uid: str, timeout: float = 240) -> tuple:  # type: ignore[no-untyped-def]
    def done() -> tuple | None:
        job = _job(daemon, series_uid)
        if job and job[1] in ("rejected", "skipped", "failed", "dead_letter"):
            raise AssertionError(f"job ended {job[1]}: {job[5]}\n{daemon.log()[-3000:]}")
        return job if job and job[1] == "delivered" else None

    return wait_for(done, timeout=timeout, interval=0.5, what="the job to be delivered")  # type: ignore[return-value]


def _findings(daemon, job_id: int) -> dict[str, tuple]:  # type: ignore[no-untyped-def]
    rows = daemon.sql(
        f"select label, present, probability, volume_ml, location, count from findings where job_id = {job_id}"
    )
    return {r[0]: r[1:] for r in rows}


def _orthanc_sop_classes(orthanc, study_uid: str) -> list[str]:  # type: ignore[no-untyped-def]
    found = orthanc.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}})
    return [orthanc.tags(i)["SOPClassUID"] for i in found]


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = find_tool("dciodvfy")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.timeout(600)
def test_head_ct_with_hemorrhage_is_flagged_critical_and_seg_sr_reach_the_pacs(product, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from triage_lab.synth.cases import make_ct_case

    daemon, orthanc = product
    # A held-out seed the shipped ich model detects (4 of the 5 positives tried were; its held-out series-level
    # sensitivity is in models/ich/model.yaml). This test proves the product path, the card states the accuracy.
    case = make_ct_case(990_006, subtypes=("intraparenchymal",), n_slices=40)
    paths = write_series(tmp_path / "ct", np.asarray(case.hu, np.float32), case.spacing, seed=990_006)
    neg = make_ct_case(990_002, subtypes=(), n_slices=40)
    neg_paths = write_series(tmp_path / "neg", np.asarray(neg.hu, np.float32), neg.spacing, seed=990_002)
    storescu(daemon.port, paths[0].parent)
    storescu(daemon.port, neg_paths[0].parent)

    from pydicom import dcmread

    src = dcmread(paths[0], stop_before_pixels=True)
    job_id, _, pipeline, priority, results_dir, _ = _wait_delivered(daemon, src.SeriesInstanceUID)
    assert (pipeline, priority) == ("ct_head", "critical")
    findings = _findings(daemon, job_id)
    # Both CT models report; the flag needs one of them (their held-out sensitivities are in their cards).
    assert {
        "any_hemorrhage",
        "epidural",
        "intraparenchymal",
        "intraventricular",
        "subarachnoid",
        "subdural",
        "hemorrhage",
    } <= set(findings)
    assert findings["any_hemorrhage"][0] and findings["any_hemorrhage"][1] >= 0.5
    assert findings["hemorrhage"][0] and findings["hemorrhage"][2] > 0  # the segmenter's extent, in mL
    classes = _orthanc_sop_classes(orthanc, src.StudyInstanceUID)
    assert classes.count(SEG) >= 1 and classes.count(SR3D) == 1
    for name in ("seg.dcm", "sr.dcm"):
        assert _dciodvfy_errors(Path(results_dir) / name) == []
    assert daemon.sql(f"select priority from studies where study_instance_uid = '{src.StudyInstanceUID}'") == [
        ("critical",)
    ]

    neg_src = dcmread(neg_paths[0], stop_before_pixels=True)
    job_id, _, _, priority, results_dir, _ = _wait_delivered(daemon, neg_src.SeriesInstanceUID)
    assert priority == "none"
    assert not _findings(daemon, job_id)["any_hemorrhage"][0]
    assert _orthanc_sop_classes(orthanc, neg_src.StudyInstanceUID) == [SR3D]  # an SR saying what was not found
    assert not (Path(results_dir) / "seg.dcm").exists()
    log = daemon.log()
    assert "SYNTH^PATIENT" not in log and "SYN0990006" not in log


@pytest.mark.timeout(600)
def test_dwi_infarct_is_located_and_swi_microbleeds_are_counted(product, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pydicom import dcmread

    from triage_lab.synth.mr import make_dwi_case, make_swi_case

    daemon, orthanc = product
    dwi = make_dwi_case(990_101, region="thalamus", side="right")
    dwi_paths = write_series(
        tmp_path / "dwi",
        dwi.dwi,
        dwi.spacing,
        seed=990_101,
        modality="MR",
        study_description="MR BRAIN",
        series_description="DWI b1000 TRACE",
        extra={"DiffusionBValue": 1000.0},
    )
    swi = make_swi_case(990_102, n_bleeds=3)
    swi_paths = write_series(
        tmp_path / "swi",
        swi.volume,
        swi.spacing,
        seed=990_102,
        modality="MR",
        study_description="MR BRAIN",
        series_description="SWI",
    )
    storescu(daemon.port, dwi_paths[0].parent)
    storescu(daemon.port, swi_paths[0].parent)

    d_src = dcmread(dwi_paths[0], stop_before_pixels=True)
    job_id, _, pipeline, priority, _, _ = _wait_delivered(daemon, d_src.SeriesInstanceUID)
    assert (pipeline, priority) == ("mr_dwi", "critical")
    present, _, volume, location, _ = _findings(daemon, job_id)["infarct"]
    assert present and volume > 0 and location == "right thalamus"

    s_src = dcmread(swi_paths[0], stop_before_pixels=True)
    job_id, _, pipeline, _, _, _ = _wait_delivered(daemon, s_src.SeriesInstanceUID)
    assert pipeline == "mr_swi"
    present, _, _, _, count = _findings(daemon, job_id)["microbleed"]
    assert present and abs(count - 3) <= 1  # issue 15's measure: the count within +-1 (cmb 2.0 finds 2 of these 3)
    assert SEG in _orthanc_sop_classes(orthanc, s_src.StudyInstanceUID)
