"""The worklist through a real ``triage-node serve``: DCMTK sends a head CT with a bleed, a stand-in model flags it
critical, the webhook is notified without patient data, a radiologist's client logs in over HTTP, sees the study on
top with its key image (rendered from the pipeline's own masks.npz), acknowledges it; the CLI prints the same list."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from argon2 import PasswordHasher
from peers import ROOT, SUPPORT, running_daemon, storescu, wait_for
from PIL import Image

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head

USER, PASSWORD = "dr.daemon", "daemon test password"


@pytest.fixture
def hook() -> Iterator[tuple[str, list[Any]]]:
    """A local webhook receiver: (url, received JSON bodies)."""
    bodies: list[Any] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's name
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hooks/critical", bodies
    server.shutdown()
    server.server_close()


def model_env(folder: Path) -> dict[str, str]:
    model = folder / "webstub"
    model.mkdir(parents=True)
    weights = model / "weights.bin"
    weights.write_bytes(b"threshold stand-in: no weights\n")
    (model / "model.yaml").write_text(
        "name: webstub\nversion: 0.0-test\nanalyzer: stand_ins:ThresholdHemorrhage\nweights: weights.bin\n"
        f"sha256: {hashlib.sha256(weights.read_bytes()).hexdigest()}\narchitecture: {{kind: threshold}}\n"
        "input: {modality: CT}\nclasses: [any_hemorrhage]\nthresholds: {any_hemorrhage: 0.5}\n"
        "postprocess: {key_slices: 2, probability: 0.93, heat: 0.9, location: right frontal lobe}\n"
        "intended_use: web end-to-end tests only\n"
    )
    return {
        "TRIAGE_NODE__MODELS__DIR": str(folder),
        "TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": ["webstub"], "mr_swi": [], "mr_dwi": []}),
        "PYTHONPATH": os.pathsep.join(p for p in (str(SUPPORT), os.environ.get("PYTHONPATH", "")) if p),
    }


@pytest.mark.timeout(180)
def test_critical_study_through_the_daemon(tmp_path: Path, hook: tuple[str, list[Any]], db_url: str) -> None:
    hook_url, bodies = hook
    hu, spacing = phantom_head(12, 128)
    hu[4:8, 40:52, 72:85] = 75.0  # a bleed in the brain
    paths = write_series(tmp_path / "s", hu, spacing, seed=61)
    cheap_hash = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)
    env = {
        **model_env(tmp_path / "models"),
        "TRIAGE_NODE__SERIES__QUIET_PERIOD_S": "1",
        "TRIAGE_NODE__WEB__USERS": json.dumps([{"name": USER, "password_hash": cheap_hash}]),
        "TRIAGE_NODE__WEB__SECRET_KEY": "daemon-test",
        "TRIAGE_NODE__NOTIFICATIONS__WEBHOOKS": json.dumps([{"url": hook_url}]),
        "TRIAGE_NODE__STORAGE__DATABASE_URL": db_url,  # the daemon and its CLI on each backend
    }
    with running_daemon(tmp_path / "d", **env) as d:
        storescu(d.port, paths)
        wait_for(lambda: d.sql("select state from jobs") == [("delivered",)], timeout=90, what="the job")
        (study_uid, patient_id, patient_name) = d.sql(
            "select study_instance_uid, patient_id, patient_name from studies"
        )[0]
        phi = (str(patient_id), str(patient_name).split("^")[0])

        # The critical notification went out on the webhook, without patient data.
        wait_for(lambda: bodies, timeout=30, what="the webhook notification")
        (note,) = bodies
        assert (note["priority"], note["findings"][0]["label"]) == ("critical", "any_hemorrhage")
        assert not any(p in json.dumps(note) for p in phi)
        wait_for(lambda: d.sql("select state, attempts from notifications") == [("sent", 1)], timeout=10)

        with httpx.Client(base_url=f"http://127.0.0.1:{d.web_port}", timeout=10) as web:
            assert web.get("/healthz").json() == {"status": "ok", "database": "ok"}
            anonymous = web.get("/api/worklist")
            assert anonymous.status_code == 401 and not any(p in anonymous.text for p in phi)
            assert web.get("/metrics").status_code == 200
            token = re.search(r'name="csrf_token" value="([^"]+)"', web.get("/login").text)
            assert token is not None
            login = web.post("/login", data={"username": USER, "password": PASSWORD, "csrf_token": token.group(1)})
            assert login.status_code == 303

            (row,) = web.get("/api/worklist").json()
            assert (row["study_instance_uid"], row["priority"], row["status"]) == (study_uid, "critical", "done")
            (finding,) = row["findings"]
            assert (finding["label"], finding["present"], finding["model"]) == ("any_hemorrhage", True, "webstub")
            (series,) = row["series"]
            assert (series["pipeline"], series["state"], series["instances"]) == ("ct_head", "delivered", 12)

            detail = web.get(f"/api/studies/{study_uid}").json()
            assert len(detail["key_images"]) == 2
            png = web.get(detail["key_images"][0]["url"])
            assert png.headers["content-type"] == "image/png"
            rgb = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB")).astype(int)
            outline = (rgb[..., 0] > 240) & (rgb[..., 1] > 200) & (rgb[..., 2] < 40)
            assert outline.sum() > 20, "no lesion outline from the pipeline's masks.npz"

            session = web.get("/api/session").json()
            assert web.post(f"/api/studies/{study_uid}/ack").status_code == 403
            ack = web.post(f"/api/studies/{study_uid}/ack", headers={"X-CSRF-Token": session["csrf_token"]})
            assert ack.status_code == 200
        assert d.sql("select acknowledged_by from studies") == [(USER,)]
        assert ("acknowledge",) in d.sql("select action from audit_log")

        cli = subprocess.run(
            [sys.executable, "-m", "triage_node.cli", "worklist", "--config", str(ROOT / "config.yaml"), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=d.workdir,
            env={**os.environ, **d.env},
        )
        assert cli.returncode == 0, cli.stderr
        assert [(r["study_instance_uid"], r["acknowledged_by"]) for r in json.loads(cli.stdout)] == [(study_uid, USER)]
    log = d.log()
    assert f"{USER} logged in" in log
    assert not any(p in log for p in phi)
