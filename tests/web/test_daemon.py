"""The worklist through a real ``triage-node serve``: DCMTK sends a series, a radiologist's client logs in over HTTP
and finds it; the terminal view prints the same study."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
from argon2 import PasswordHasher
from peers import ROOT, running_daemon, storescu, wait_for

from triage_node.synth.cli import phantom_head
from triage_node.synth.dicom import write_series

NO_MODELS = {"TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": [], "mr_swi": [], "mr_dwi": []})}
USER, PASSWORD = "dr.daemon", "daemon test password"


def test_a_received_series_shows_up_in_the_web_worklist_and_the_cli(tmp_path: Path) -> None:
    hu, spacing = phantom_head(12, 128)
    paths = write_series(tmp_path / "s", hu, spacing, seed=61)
    cheap_hash = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)
    env = {
        **NO_MODELS,
        "TRIAGE_NODE__SERIES__QUIET_PERIOD_S": "1",
        "TRIAGE_NODE__WEB__USERS": json.dumps([{"name": USER, "password_hash": cheap_hash}]),
        "TRIAGE_NODE__WEB__SECRET_KEY": "daemon-test",
    }
    with running_daemon(tmp_path / "d", **env) as d:
        storescu(d.port, paths)
        wait_for(lambda: d.sql("select state from jobs") == [("delivered",)], timeout=60, what="the job")
        (study_uid, patient_id) = d.sql("select study_instance_uid, patient_id from studies")[0]
        with httpx.Client(base_url=f"http://127.0.0.1:{d.web_port}", timeout=10) as web:
            assert web.get("/healthz").json() == {"status": "ok", "database": "ok"}
            anonymous = web.get("/api/worklist")
            assert anonymous.status_code == 401 and str(patient_id) not in anonymous.text
            assert web.get("/metrics").status_code == 200
            token = re.search(r'name="csrf_token" value="([^"]+)"', web.get("/login").text)
            assert token is not None
            login = web.post("/login", data={"username": USER, "password": PASSWORD, "csrf_token": token.group(1)})
            assert login.status_code == 303
            (row,) = web.get("/api/worklist").json()
            assert (row["study_instance_uid"], row["priority"], row["status"]) == (study_uid, "none", "done")
            (series,) = row["series"]
            assert (series["pipeline"], series["state"], series["instances"]) == ("ct_head", "delivered", 12)
            assert series["slices_kept"] + series["slices_dropped"] == 12
            assert web.get(f"/studies/{study_uid}").status_code == 200
        cli = subprocess.run(
            [sys.executable, "-m", "triage_node.cli", "worklist", "--config", str(ROOT / "config.yaml"), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=d.workdir,
            env={**os.environ, **d.env},
        )
        assert cli.returncode == 0, cli.stderr
        assert [r["study_instance_uid"] for r in json.loads(cli.stdout)] == [study_uid]
    assert f"{USER} logged in" in d.log()
    assert str(patient_id) not in d.log()
