"""The JSON API: the contract shape, filters, one study, acknowledgement."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select
from web_fixtures import USER, Clock, Seeded

from triage_node.worklist.db import transaction
from triage_node.worklist.models import AuditEntry, Study

STUDY_KEYS = {"study_instance_uid", "accession_number", "priority", "flagged_at", "status", "findings", "series"}
FINDING_KEYS = {"label", "present", "probability", "volume_ml", "location", "model", "model_version"}
SERIES_KEYS = {
    "series_instance_uid",
    "pipeline",
    "state",
    "reason",
    "instances",
    "slices_kept",
    "slices_dropped",
    "delivery",
}


def test_worklist_json_follows_the_contract(client: TestClient, seeded: Seeded, csrf: str) -> None:
    rows = client.get("/api/worklist").json()
    assert [r["study_instance_uid"] for r in rows] == [seeded.critical_uid, seeded.routine_uid]
    critical = rows[0]
    assert critical.keys() >= STUDY_KEYS
    assert (critical["priority"], critical["status"], critical["flagged_at"]) == (
        "critical",
        "sending",
        "2026-03-01T08:01:35Z",
    )
    assert all(f.keys() >= FINDING_KEYS for f in critical["findings"])
    assert all(s.keys() >= SERIES_KEYS for s in critical["series"])
    head, scout = critical["series"]
    assert head["delivery"] == {"seg": "delivered", "sr": "pending"}
    assert (scout["state"], scout["reason"], scout["delivery"]) == (
        "rejected",
        "localizer: ImageType contains LOCALIZER",
        "none",
    )


def test_worklist_json_filters(client: TestClient, seeded: Seeded, csrf: str) -> None:
    assert [r["priority"] for r in client.get("/api/worklist", params={"priority": "none"}).json()] == ["none"]
    assert client.get("/api/worklist", params={"priority": "high"}).status_code == 422
    assert client.get("/api/worklist", params={"state": "lost"}).status_code == 422
    assert len(client.get("/api/worklist", params={"limit": 1}).json()) == 1


def test_study_json_has_key_images_with_urls(client: TestClient, seeded: Seeded, csrf: str) -> None:
    detail = client.get(f"/api/studies/{seeded.critical_uid}").json()
    first = detail["key_images"][0]
    assert first["sop_instance_uid"] == seeded.key_sop_uid
    assert first["url"].startswith(f"/studies/{seeded.critical_uid}/key-images/{seeded.critical_job_id}/")
    assert client.get(first["url"]).headers["content-type"] == "image/png"
    assert client.get("/api/studies/1.2.3.404").status_code == 404


def test_acknowledge_by_api_is_stored_once(client: TestClient, seeded: Seeded, csrf: str, clock: Clock) -> None:
    uid = seeded.critical_uid
    first = client.post(f"/api/studies/{uid}/ack", headers={"X-CSRF-Token": csrf})
    assert first.status_code == 200
    assert (first.json()["acknowledged_by"], first.json()["acknowledged_at"]) == (USER, "2026-03-01T08:10:00Z")
    clock.advance(minutes=5)
    again = client.post(f"/api/studies/{uid}/ack", headers={"X-CSRF-Token": csrf})
    assert again.json()["acknowledged_at"] == "2026-03-01T08:10:00Z"
    with transaction(seeded.sessions) as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        assert study.acknowledged_by == USER
        assert len(s.scalars(select(AuditEntry).where(AuditEntry.action == "acknowledge")).all()) == 1
    assert client.post("/api/studies/1.2.3.404/ack", headers={"X-CSRF-Token": csrf}).status_code == 404
