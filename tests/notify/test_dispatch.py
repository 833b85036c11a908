"""The notification outbox against a real local HTTP receiver and SMTP sink: queueing, PHI policy, retries."""

from __future__ import annotations

import datetime as dt

import pytest
from notify_fixtures import ACCESSION, PATIENT_ID, T0, Receiver, Sink, add_flagged_job, free_port
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage_node.config import Notifications
from triage_node.notify import Backoff, NotificationState, notify_due, queue_for_job, webhook_channel
from triage_node.worklist.db import transaction
from triage_node.worklist.models import Job, Notification, Study

PHI = (PATIENT_ID, "NOTIFY", ACCESSION, "1.2.826.0.1.3680043.10.77")


def config(receiver: Receiver | None = None, smtp_port: int | None = None, **kw: object) -> Notifications:
    webhooks = kw.pop("webhooks", [{"url": receiver.url()}] if receiver else [])
    email = kw.pop("email", None)
    if smtp_port is not None and email is None:
        email = {
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp_port,
            "sender": "triage@example.org",
            "recipients": ["stroke-team@example.org", "neuro@example.org"],
        }
    return Notifications(webhooks=webhooks, email=email, **kw)


def queue(sessions: sessionmaker[Session], cfg: Notifications, priority: str = "critical") -> int:
    with transaction(sessions) as s:
        job, study = add_flagged_job(s, priority=priority)
        queue_for_job(s, job, study, cfg, now=T0)
        return job.id


def rows(sessions: sessionmaker[Session]) -> list[Notification]:
    with transaction(sessions) as s:
        return list(s.scalars(select(Notification).order_by(Notification.id)))


def test_queue_for_job_adds_one_row_per_channel_once(sessions: sessionmaker[Session], receiver: Receiver) -> None:
    cfg = config(receiver, smtp_port=2525)
    job_id = queue(sessions, cfg)
    with transaction(sessions) as s:  # calling it again (a re-run of the job) adds nothing
        job = s.get_one(Job, job_id)
        queue_for_job(s, job, s.get_one(Study, job.series.study_id), cfg, now=T0)
    found = rows(sessions)
    assert sorted(n.channel for n in found) == sorted([webhook_channel(receiver.url()), "email"])
    assert all(n.state == "pending" and n.next_attempt_at == T0 for n in found)
    assert all("s3cr3t" not in n.channel for n in found)  # the webhook's secret path is not stored


def test_only_configured_priorities_are_queued(sessions: sessionmaker[Session], receiver: Receiver) -> None:
    queue(sessions, config(receiver), priority="routine")
    assert rows(sessions) == []


def test_webhook_json_without_phi_by_default(sessions: sessionmaker[Session], receiver: Receiver) -> None:
    cfg = config(receiver)
    job_id = queue(sessions, cfg)
    assert notify_due(sessions, cfg, T0 - dt.timedelta(seconds=1)) == 0  # not due yet
    assert notify_due(sessions, cfg, T0) == 1
    (req,) = receiver.requests
    assert req.path == "/hook/T000/B000/s3cr3t"
    assert req.headers["Content-Type"] == "application/json"
    body = req.body
    assert body["event"] == "triage_node.flagged"
    assert (body["priority"], body["job_id"], body["modality"], body["pipeline"]) == (
        "critical",
        job_id,
        "CT",
        "ct_head",
    )
    assert body["flagged_at"] == "2026-03-01T08:00:00Z"
    assert [f["label"] for f in body["findings"]] == ["any_hemorrhage", "subdural"]  # present only, most likely first
    assert body["findings"][0]["volume_ml"] == 4.25
    assert not any(p in str(body) for p in PHI)
    (row,) = rows(sessions)
    assert (row.state, row.attempts, row.sent_at) == ("sent", 1, T0)
    assert notify_due(sessions, cfg, T0 + dt.timedelta(hours=1)) == 0  # sent once


def test_webhook_with_phi_when_configured(sessions: sessionmaker[Session], receiver: Receiver) -> None:
    cfg = config(webhooks=[{"url": receiver.url(), "include_phi": True}])
    queue(sessions, cfg)
    notify_due(sessions, cfg, T0)
    body = receiver.requests[0].body
    assert (body["patient_id"], body["accession_number"]) == (PATIENT_ID, ACCESSION)
    assert body["patient_name"] == "NOTIFY^PATIENT"


@pytest.mark.parametrize("fmt", ["slack", "teams"])
def test_slack_and_teams_bodies(sessions: sessionmaker[Session], receiver: Receiver, fmt: str) -> None:
    cfg = config(webhooks=[{"url": receiver.url(), "format": fmt}])
    queue(sessions, cfg)
    assert notify_due(sessions, cfg, T0) == 1
    body = receiver.requests[0].body
    if fmt == "slack":
        assert set(body) == {"text"}
        assert body["text"].startswith("*CRITICAL: any hemorrhage (+1 more), study ref")
        text = body["text"]
    else:
        (attachment,) = body["attachments"]
        assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
        card = attachment["content"]
        assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
        text = "\n".join(b["text"] for b in card["body"])
    assert "any hemorrhage: 97%, 4.2 ml, right frontal lobe" in text
    assert not any(p in text for p in PHI)


def test_failed_webhook_is_retried_with_backoff_then_sent(sessions: sessionmaker[Session], receiver: Receiver) -> None:
    receiver.statuses[:] = [500, 503, 200]
    cfg = config(receiver, max_attempts=5)
    queue(sessions, cfg)
    backoff = Backoff(initial_s=10, max_s=600)
    assert notify_due(sessions, cfg, T0, backoff=backoff) == 0
    (row,) = rows(sessions)
    assert (row.state, row.attempts, row.next_attempt_at) == ("pending", 1, T0 + dt.timedelta(seconds=10))
    assert row.last_error is not None and "answered HTTP 500" in row.last_error
    assert "s3cr3t" not in row.last_error
    assert notify_due(sessions, cfg, T0 + dt.timedelta(seconds=9), backoff=backoff) == 0  # waits for the backoff
    assert len(receiver.requests) == 1
    assert notify_due(sessions, cfg, T0 + dt.timedelta(seconds=10), backoff=backoff) == 0
    (row,) = rows(sessions)
    assert (row.attempts, row.next_attempt_at) == (2, T0 + dt.timedelta(seconds=30))  # 10 s later doubled
    assert notify_due(sessions, cfg, T0 + dt.timedelta(seconds=30), backoff=backoff) == 1
    (row,) = rows(sessions)
    assert (row.state, row.attempts, row.last_error) == ("sent", 3, None)


def test_gives_up_after_max_attempts(sessions: sessionmaker[Session]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    cfg = config(webhooks=[{"url": dead}], max_attempts=2)
    queue(sessions, cfg)
    backoff = Backoff(initial_s=1, max_s=1)
    notify_due(sessions, cfg, T0, backoff=backoff)
    notify_due(sessions, cfg, T0 + dt.timedelta(seconds=1), backoff=backoff)
    (row,) = rows(sessions)
    assert (row.state, row.attempts) == ("failed", 2)
    assert row.last_error is not None and "ConnectError" in row.last_error
    assert notify_due(sessions, cfg, T0 + dt.timedelta(hours=1), backoff=backoff) == 0


def test_a_channel_removed_from_the_config_fails_its_rows(sessions: sessionmaker[Session], receiver: Receiver) -> None:
    queue(sessions, config(receiver))
    assert notify_due(sessions, config(), T0) == 0
    (row,) = rows(sessions)
    assert row.state == NotificationState.FAILED
    assert row.last_error is not None and "no longer configured" in row.last_error


def test_an_abandoned_claim_is_sent_again_after_its_lease(sessions: sessionmaker[Session], receiver: Receiver) -> None:
    cfg = config(receiver)
    queue(sessions, cfg)
    with transaction(sessions) as s:  # as a crash mid-send leaves it
        row = s.scalars(select(Notification)).one()
        row.state, row.attempts, row.next_attempt_at = "sending", 1, T0 + dt.timedelta(seconds=120)
    assert notify_due(sessions, cfg, T0 + dt.timedelta(seconds=60)) == 0
    assert notify_due(sessions, cfg, T0 + dt.timedelta(seconds=120)) == 1
    assert rows(sessions)[0].attempts == 2


def test_email_reaches_the_smtp_sink_without_phi(sessions: sessionmaker[Session], smtp: Sink) -> None:
    cfg = config(smtp_port=smtp.port)
    queue(sessions, cfg)
    assert notify_due(sessions, cfg, T0) == 1
    ((rcpts, msg),) = smtp.messages
    assert rcpts == ["stroke-team@example.org", "neuro@example.org"]
    assert msg["Subject"].startswith("[triage-node] CRITICAL: any hemorrhage (+1 more), study ref")
    assert msg["From"] == "triage@example.org"
    body = msg.get_payload(decode=True).decode()
    assert "any hemorrhage: 97%, 4.2 ml, right frontal lobe" in body
    assert "subdural: 61%" in body
    assert "epidural" not in body
    assert not any(p in body + msg["Subject"] for p in PHI)


def test_email_with_phi_when_configured(sessions: sessionmaker[Session], smtp: Sink) -> None:
    cfg = config(
        email={
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "sender": "t@example.org",
            "recipients": ["a@example.org"],
            "include_phi": True,
        }
    )
    queue(sessions, cfg)
    notify_due(sessions, cfg, T0)
    body = smtp.messages[0][1].get_payload(decode=True).decode()
    assert f"(ID {PATIENT_ID})" in body and ACCESSION in body
