"""End to end through the real daemon: a positive series arrives while the PACS (Orthanc) is down, the daemon crashes
with its results in the outbox, restarts, the PACS comes back, and SEG, map and SR arrive exactly once in the source
study; ``triage-node resend`` sends them again without duplicates."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import phantom
import pytest
import yaml
from peers import ROOT, SUPPORT, make_daemon, storescu, wait_for
from peers_orthanc import Modality, start_orthanc

# SQLite only: a daemon with Orthanc (about 11 s); the outbox's claims and retries run on both in test_outbox.py


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


@pytest.mark.timeout(300)
def test_results_survive_pacs_outage_and_daemon_crash(tmp_path: Path) -> None:
    case = phantom.write_case(tmp_path / "series")
    daemon = make_daemon(tmp_path / "daemon")
    orthanc = start_orthanc(tmp_path / "orthanc", modalities={"triage": Modality("TRIAGE_NODE", port=daemon.port)})
    destination = {
        "name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port,
        "backoff_initial_s": 0.5, "backoff_max_s": 1, "max_attempts": 1000,
    }
    daemon.env.update({
        "TRIAGE_NODE__DESTINATIONS": json.dumps([destination]),
        "TRIAGE_NODE__MODELS__DIR": str(_models_dir(tmp_path)),
        "TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": ["ich"], "mr_swi": [], "mr_dwi": []}),
        "PYTHONPATH": os.pathsep.join([str(SUPPORT), daemon.env.get("PYTHONPATH", "")]),
    })
    try:
        for p in case.paths:  # the PACS already holds the source series
            httpx.post(f"{orthanc.url}/instances", content=p.read_bytes(), timeout=30).raise_for_status()
        orthanc.stop(graceful=False)
        daemon.start()
        storescu(daemon.port, case.paths, calling="PACS")

        def failed_once() -> bool:
            rows = daemon.sql("select state, attempts from outbox")
            return len(rows) == 3 and all(state == "pending" and attempts >= 1 for state, attempts in rows)

        wait_for(failed_once, timeout=120, what="three outbox rows that failed at least once")
        daemon.kill()  # crash with everything still in the outbox
        orthanc.start()
        daemon.start()

        def delivered() -> bool:
            return daemon.sql("select state from jobs") == [("delivered",)]

        wait_for(delivered, timeout=60, what="the job to be delivered")
        uids = dict(daemon.sql("select kind, sop_instance_uid from outbox where state = 'delivered'"))
        assert sorted(uids) == ["map", "seg", "sr"]
        assert orthanc.instance_count() == len(case.paths) + 3
        (study,) = orthanc.get("/studies")
        for uid in uids.values():
            instance = orthanc.find_instance(uid)
            assert instance is not None and orthanc.get(f"/instances/{instance}/study")["ID"] == study

        (job_id,) = daemon.sql("select id from jobs")[0]
        cli = subprocess.run(
            [sys.executable, "-m", "triage_node.cli", "resend", str(job_id), "--config", str(ROOT / "config.yaml")],
            env=daemon.env, cwd=daemon.workdir, capture_output=True, text=True, timeout=120,
        )
        assert cli.returncode == 0, cli.stderr
        wait_for(lambda: daemon.sql("select count(*) from outbox where state = 'delivered' and attempts = 1")
                 == [(3,)], timeout=60, what="the resent objects to be delivered")
        assert orthanc.instance_count() == len(case.paths) + 3
        log = daemon.log()
        src = case.sources[0]
        assert str(src.PatientName) not in log and str(src.PatientID) not in log  # no patient identity in the log
    finally:
        daemon.stop()
        orthanc.stop(graceful=False)
