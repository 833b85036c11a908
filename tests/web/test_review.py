"""The radiologist's loop through the HTTP API: the viewer's slice list and layers (no patient data in URLs, login
needed), verdicts (validated, stored with user and time, audited, on the worklist and in the JSON), the performance
JSON and CSV."""

from __future__ import annotations

import csv
import io

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from web_fixtures import PATIENT_ID, PATIENT_NAME, SLICES, USER, Clock, Seeded

from triage_node.worklist.db import transaction
from triage_node.worklist.models import AuditEntry, Verdict


def test_viewer_lists_every_slice_and_serves_layers_behind_the_login(client: TestClient, seeded: Seeded) -> None:
    job = seeded.critical_job_id
    assert client.get(f"/api/viewer/jobs/{job}").status_code == 401
    assert client.get(f"/viewer/jobs/{job}/slices/0/image.png").status_code in (302, 303, 307)

    from web_fixtures import login

    login(client)
    meta = client.get(f"/api/viewer/jobs/{job}").json()
    assert meta["count"] == SLICES
    assert meta["windows"] == ["brain", "subdural", "bone"]
    assert [s["index"] for s in meta["slices"] if s["outline"]] == [1, 2]
    assert [s["index"] for s in meta["slices"] if s["heat"]] == [1, 2]
    assert {j["index"] for j in meta["jumps"] if j["kind"] == "key"} == {1, 2}
    text = str(meta)
    assert PATIENT_ID not in text and "TESTPATIENT" not in text and seeded.critical_uid not in text
    # slices run head first along the slice normal: the seed's z grows with the index, so index 0 is the last slice

    pngs = {}
    for window in meta["windows"]:
        r = client.get(f"/viewer/jobs/{job}/slices/1/image.png?window={window}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        pngs[window] = np.asarray(Image.open(io.BytesIO(r.content)))
    assert pngs["brain"].shape == (64, 64)
    assert not np.array_equal(pngs["brain"], pngs["bone"])  # the presets differ
    outline = np.asarray(Image.open(io.BytesIO(client.get(f"/viewer/jobs/{job}/slices/1/outline.png").content)))
    assert outline.shape == (64, 64, 4) and (outline[..., 3] == 255).sum() > 10
    heat = np.asarray(Image.open(io.BytesIO(client.get(f"/viewer/jobs/{job}/slices/2/heat.png").content)))
    assert heat[..., 3].max() > 0
    assert client.get(f"/viewer/jobs/{job}/slices/0/outline.png").status_code == 404  # no lesion there
    assert client.get(f"/viewer/jobs/{job}/slices/{SLICES}/image.png").status_code == 404
    assert client.get(f"/viewer/jobs/{job}/slices/0/image.png?window=lung").status_code == 404
    assert client.get("/viewer/jobs/99999/slices/0/image.png").status_code == 404


def test_verdicts_are_validated_stored_audited_and_shown(client: TestClient, csrf: str, seeded: Seeded,
                                                         clock: Clock) -> None:
    uid, job = seeded.critical_uid, seeded.critical_job_id
    url = f"/api/studies/{uid}/verdicts"
    body = {"job_id": job, "verdict": "disagree", "label": "any_hemorrhage", "model": "ich", "comment": "calcification"}
    assert client.post(url, json=body).status_code == 403  # no CSRF token
    headers = {"X-CSRF-Token": csrf}
    # a present finding cannot be 'missed'; an absent one cannot be disagreed with; jobs of other studies are unknown
    assert client.post(url, json={**body, "verdict": "missed"}, headers=headers).status_code == 422
    assert client.post(url, json={**body, "label": "subdural"}, headers=headers).status_code == 422
    assert client.post(url, json={**body, "job_id": 99999}, headers=headers).status_code == 404
    assert client.post(url, json={**body, "verdict": "maybe"}, headers=headers).status_code == 422

    r = client.post(url, json=body, headers=headers)
    assert r.status_code == 200, r.text
    detail = r.json()
    assert detail["verdict"] == "rejected"
    (v,) = detail["verdicts"]
    assert (v["verdict"], v["label"], v["model"], v["model_version"], v["user"], v["current"]) == (
        "disagree", "any_hemorrhage", "ich", "1.0.0", USER, True)
    assert v["comment"] == "calcification" and v["present"] is True

    row = client.get("/api/worklist").json()[0]
    assert (row["study_instance_uid"], row["verdict"]) == (uid, "rejected")
    page = client.get("/")
    assert "verdict-rejected" in page.text and "✗ rejected" in page.text

    # a later verdict replaces it for the figures; both stay
    clock.advance(minutes=1)
    r = client.post(url, json={**body, "verdict": "agree", "comment": None}, headers=headers)
    assert r.json()["verdict"] == "confirmed"
    assert [v["current"] for v in r.json()["verdicts"]] == [False, True]
    with transaction(seeded.sessions) as s:
        rows = s.scalars(select(Verdict).order_by(Verdict.id)).all()
        assert [(x.verdict, x.user, x.at) for x in rows][-1] == ("agree", USER, clock.now)
        audit = s.scalars(select(AuditEntry).where(AuditEntry.action == "verdict")).all()
        assert len(audit) == 2 and all(a.user == USER for a in audit)
        assert all(PATIENT_NAME not in (a.detail or "") for a in audit)

    # the routine study flagged nothing: agree (no finding) needs no label; disagree is refused
    routine_job = client.get(f"/api/studies/{seeded.routine_uid}").json()["series"][0]["job_id"]
    rurl = f"/api/studies/{seeded.routine_uid}/verdicts"
    r = client.post(rurl, json={"job_id": routine_job, "verdict": "agree"}, headers=headers)
    # no model ran on the seeded routine study: nothing to rate
    assert r.status_code == 422 and "nothing to rate" in r.text


def test_form_verdict_redirects_back_to_the_study(client: TestClient, csrf: str, seeded: Seeded) -> None:
    r = client.post(
        f"/studies/{seeded.critical_uid}/verdicts",
        data={"csrf_token": csrf, "job_id": seeded.critical_job_id, "verdict": "unsure", "target": "ich|any_hemorrhage",
              "comment": ""},
    )
    assert r.status_code == 303 and r.headers["location"].endswith(f"#job-{seeded.critical_job_id}")
    page = client.get(f"/studies/{seeded.critical_uid}")
    assert 'class="verdict-current verdict-unsure"' in page.text
    assert 'id="viewer"' in page.text and "/static/viewer.js" in page.text


def test_performance_json_and_csv_agree(client: TestClient, csrf: str, seeded: Seeded) -> None:
    headers = {"X-CSRF-Token": csrf}
    client.post(f"/api/studies/{seeded.critical_uid}/verdicts", headers=headers,
                json={"job_id": seeded.critical_job_id, "verdict": "agree", "label": "any_hemorrhage", "model": "ich"})
    data = client.get("/api/performance?days=30").json()
    (ich,) = [m for m in data["models"] if m["model"] == "ich"]
    assert (ich["mode"], ich["flags"], ich["agree"], ich["disagree"]) == ("live", 1, 1, 0)
    assert ich["ppv"]["value"] == 1.0 and 0.2 < ich["ppv"]["low"] < 0.21  # Wilson 1/1: [0.2065, 1]
    assert sum(d["flags"] for d in ich["flags_per_day"]) == 1
    ct = [t for t in data["time_to_flag"] if t["pipeline"] == "ct_head"][0]
    assert ct["jobs"] == 1 and ct["p50"] == 65.0
    rows = list(csv.DictReader(io.StringIO(client.get("/api/performance.csv").text)))
    ppv = [r for r in rows if r["section"] == "accuracy" and r["model"] == "ich" and r["label"] == "(all)"
           and r["metric"] == "ppv"]
    assert ppv[0]["value"] == "1" and ppv[0]["k"] == "1" and ppv[0]["n"] == "1"
    page = client.get("/performance")
    assert page.status_code == 200 and "<svg" in page.text and "cdn" not in page.text.lower()
    assert 'data-ppv="1.0"' in page.text
