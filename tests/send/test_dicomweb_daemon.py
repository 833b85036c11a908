"""DICOMweb in and out through the real daemon, with Orthanc and its DICOMweb plugin as the peer:

- a Python DICOMweb client (dicomweb-client) STOW-RSes a positive series to ``POST /dicomweb/studies``; it is stored
  (fsync + commit before the 200), completes, is flagged, and its SEG, SR, Secondary Capture key images, GSPS and PDF
  reach Orthanc over STOW-RS (a ``type: dicomweb`` destination with ``outputs: [seg, sr, sc, gsps, pdf]`` and a QIDO-RS
  check); SC and GSPS fetched back from Orthanc pass dciodvfy; ``triage-node resend`` duplicates nothing;
- Orthanc sends a study to us over STOW-RS (its ``/dicom-web/servers/.../stow``);
- a wrong token is refused (401), an unsupported object is reported in the Failed SOP Sequence (409)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import phantom
import pydicom
import pytest
import requests
import yaml
from dicomweb_client.api import DICOMwebClient
from peers import ROOT, SUPPORT, find_tool, make_daemon, require, wait_for
from peers_orthanc import start_orthanc

# SQLite only: DICOMweb in and out with Orthanc is the subject; the outbox runs on both in test_outbox.py
PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
TOKEN_CLIENT = "client-token-0123456789abcdef"
TOKEN_ORTHANC = "orthanc-token-0123456789abcdef"
SC, GSPS, PDF = "1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.11.1", "1.2.840.10008.5.1.4.1.1.104.1"


def _models_dir(tmp_path: Path) -> Path:
    d = tmp_path / "models" / "ich"
    d.mkdir(parents=True)
    weights = d / "weights.bin"
    weights.write_bytes(b"threshold analyzer: no weights")
    card = {
        "name": "ich", "version": "0.0-test", "analyzer": "stand_ins:ThresholdHemorrhage",
        "weights": "weights.bin", "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "architecture": {"type": "threshold"}, "input": {"modality": "CT"}, "classes": ["any_hemorrhage"],
        "thresholds": {"any_hemorrhage": 0.5}, "intended_use": "tests of result delivery only",
    }
    (d / "model.yaml").write_text(yaml.safe_dump(card))
    return d.parent


def _dciodvfy(path: Path) -> list[str]:
    out = subprocess.run([find_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.timeout(420)
def test_dicomweb_in_and_out_with_orthanc(tmp_path: Path) -> None:
    require(PLUGIN.exists(), f"{PLUGIN} is missing (Debian package orthanc-dicomweb)")
    find_tool("dciodvfy")
    from peers import free_port

    stow_port = free_port()
    orthanc = start_orthanc(
        tmp_path / "orthanc",
        extra={
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {
                "Enable": True, "Root": "/dicom-web/", "EnableWado": True, "Ssl": False,
                "Servers": {"triage": {"Url": f"http://127.0.0.1:{stow_port}/dicomweb/",
                                       "HttpHeaders": {"Authorization": f"Bearer {TOKEN_ORTHANC}"}}},
            },
        },
    )
    destination = {
        "name": "archive", "type": "dicomweb", "url": f"{orthanc.url}/dicom-web",
        "outputs": ["seg", "sr", "sc", "gsps", "pdf"], "qido_check": True,
        "backoff_initial_s": 0.5, "backoff_max_s": 1,
    }
    daemon = make_daemon(tmp_path / "daemon")
    daemon.env.update({
        "TRIAGE_NODE__DESTINATIONS": json.dumps([destination]),
        "TRIAGE_NODE__DICOMWEB": json.dumps({
            "enabled": True, "host": "127.0.0.1", "port": stow_port,
            "allowed_senders": [
                {"name": "PY_CLIENT", "token_sha256": hashlib.sha256(TOKEN_CLIENT.encode()).hexdigest()},
                {"name": "ORTHANC_WEB", "token": TOKEN_ORTHANC, "host": "127.0.0.1"},
            ],
        }),
        "TRIAGE_NODE__WEB__ENABLED": "false",
        "TRIAGE_NODE__MODELS__DIR": str(_models_dir(tmp_path)),
        "TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": ["ich"], "mr_swi": [], "mr_dwi": []}),
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), daemon.env.get("PYTHONPATH", "")]),
    })
    base = f"http://127.0.0.1:{stow_port}/dicomweb"
    try:
        daemon.start()
        case = phantom.write_case(tmp_path / "series")
        datasets = [pydicom.dcmread(p) for p in case.paths]

        # Refused: no token, a wrong token; an object we do not store is reported per instance.
        assert httpx.post(f"{base}/studies", timeout=10).status_code == 401
        wrong = DICOMwebClient(base, headers={"Authorization": "Bearer not-the-token-000000000"})
        with pytest.raises(requests.HTTPError, match="401"):
            wrong.store_instances(datasets[:1])
        client = DICOMwebClient(base, headers={"Authorization": f"Bearer {TOKEN_CLIENT}"})
        odd = pydicom.dcmread(case.paths[0])
        odd.SOPClassUID = "1.2.840.10008.5.1.4.1.1.104.2"  # Encapsulated CDA: not a class the node stores
        odd.file_meta.MediaStorageSOPClassUID = odd.SOPClassUID
        odd.SOPInstanceUID = odd.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        content_type = 'multipart/related; type="application/dicom"; boundary=b0undary'
        from io import BytesIO

        buf = BytesIO()
        odd.save_as(buf, enforce_file_format=True)
        body = b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + buf.getvalue() + b"\r\n--b0undary--\r\n"
        r = httpx.post(f"{base}/studies", content=body, timeout=30,
                       headers={"Content-Type": content_type, "Authorization": f"Bearer {TOKEN_CLIENT}"})
        assert r.status_code == 409, r.text
        (failed,) = r.json()["00081198"]["Value"]
        assert failed["00081197"]["Value"] == [0x0122] and failed["00081155"]["Value"] == [odd.SOPInstanceUID]

        # The Python client sends the positive series: stored, flagged, results over STOW-RS into Orthanc.
        response = client.store_instances(datasets)
        assert len(response.ReferencedSOPSequence) == len(datasets) and "FailedSOPSequence" not in response
        rows = daemon.sql("select s.calling_ae, count(*) from instances i join series s on s.id = i.series_id "
                          "group by s.calling_ae")
        assert rows == [("PY_CLIENT", len(datasets))]  # committed before the 200

        def delivered() -> bool:
            states = daemon.sql("select state from jobs")
            assert ("dead_letter",) not in states, daemon.log()[-3000:]
            return states == [("delivered",)]

        wait_for(delivered, timeout=180, interval=0.5, what="the job delivered over STOW-RS")
        kinds = dict(daemon.sql("select kind, sop_instance_uid from outbox where state = 'delivered'"))
        assert sorted(kinds) == ["gsps", "map", "pdf", "sc1", "sc2", "sc3", "seg", "sr"]
        count = orthanc.instance_count()
        assert count == len(kinds)
        by_class: dict[str, list[str]] = {}
        for uid in kinds.values():
            iid = orthanc.find_instance(uid)
            assert iid is not None
            by_class.setdefault(orthanc.tags(iid)["SOPClassUID"], []).append(iid)
            assert orthanc.tags(iid)["StudyInstanceUID"] == datasets[0].StudyInstanceUID  # in the source study
        assert len(by_class[SC]) == 3 and len(by_class[GSPS]) == 1 and len(by_class[PDF]) == 1
        for iid in (by_class[SC][0], by_class[GSPS][0], by_class[PDF][0]):
            path = tmp_path / f"{iid}.dcm"
            path.write_bytes(orthanc.file(iid))
            assert _dciodvfy(path) == [], iid

        # A resend sends the identical objects again: nothing new in Orthanc.
        (job_id,) = daemon.sql("select id from jobs")[0]
        subprocess.run(
            [sys.executable, "-m", "triage_node.cli", "resend", str(job_id), "--config", str(ROOT / "config.yaml")],
            env=daemon.env, check=True, capture_output=True, timeout=60,
        )
        wait_for(delivered, timeout=60, interval=0.5, what="the resend delivered")
        assert orthanc.instance_count() == count

        # Orthanc as a STOW-RS sender: another study from Orthanc to us.
        other = phantom.write_case(tmp_path / "series2", seed=11)
        for p in other.paths:
            httpx.post(f"{orthanc.url}/instances", content=p.read_bytes(), timeout=30).raise_for_status()
        found = httpx.post(f"{orthanc.url}/tools/lookup", content=str(other.sources[0].StudyInstanceUID), timeout=30)
        study_id = found.json()[0]["ID"]
        orthanc.post("/dicom-web/servers/triage/stow", {"Resources": [study_id], "Synchronous": True})
        counts = dict(daemon.sql("select s.calling_ae, count(*) from instances i join series s on s.id = i.series_id "
                                 "group by s.calling_ae"))
        assert counts["ORTHANC_WEB"] == len(other.paths)
    finally:
        daemon.stop()
        orthanc.stop()
