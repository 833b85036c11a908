"""The notification outbox: rows in the ``notifications`` table, one per flagged job and channel, sent with
exponential backoff until ``notifications.max_attempts``.

``queue_for_job`` runs inside the pipeline's transaction; ``notify_due`` runs on the scheduler. Network I/O happens
outside any transaction (the SQLite engine holds the write lock for a transaction's whole length). A row is claimed
before sending (``sending`` with a lease); a crash mid-send leaves the lease to expire and the row is sent again, so
delivery is at least once.

States: ``pending -> sending -> sent``, back to ``pending`` with a later ``next_attempt_at`` on failure, ``failed``
when the attempts are used up or the channel is no longer configured.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from triage_node.config import FHIR, HL7, Notifications
from triage_node.notify.channels import NotificationError, post_webhook, send_email
from triage_node.notify.fhir import bundle, post_bundle
from triage_node.notify.hl7 import oru_r01, send_mllp
from triage_node.notify.message import WEBHOOK_FORMATS, Alert, build_alert, email_text
from triage_node.worklist.db import transaction
from triage_node.worklist.models import Job, Notification, Study

log = logging.getLogger(__name__)

EMAIL_CHANNEL = "email"
WEBHOOK_PREFIX = "webhook:"
HL7_PREFIX = "hl7:"
FHIR_PREFIX = "fhir:"


class NotificationState(StrEnum):
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True)
class Backoff:
    """Retry timing: ``initial_s`` after the first failure, doubling up to ``max_s``; ``lease_s`` is how long a claimed
    row may stay ``sending`` before it counts as abandoned (well above the send timeouts)."""

    initial_s: float = 15.0
    max_s: float = 900.0
    lease_s: float = 120.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise ValueError(f"Backoff needs 0 < initial_s <= max_s, got {self.initial_s} and {self.max_s}")

    def delay(self, attempts: int) -> dt.timedelta:
        """The wait after the ``attempts``-th failed attempt (1-based)."""
        return dt.timedelta(seconds=min(self.max_s, self.initial_s * 2 ** max(0, attempts - 1)))


def webhook_channel(url: str) -> str:
    """A stable channel name for a webhook that does not store its URL (which carries a secret) in the database."""
    return WEBHOOK_PREFIX + hashlib.sha256(url.encode()).hexdigest()[:16]


def hl7_channel(cfg: HL7) -> str:
    return HL7_PREFIX + hashlib.sha256(f"{cfg.host}:{cfg.port}".encode()).hexdigest()[:16]


def fhir_channel(cfg: FHIR) -> str:
    return FHIR_PREFIX + hashlib.sha256(cfg.url.encode()).hexdigest()[:16]


def channels(config: Notifications) -> list[str]:
    names = [webhook_channel(w.url) for w in config.webhooks]
    names += [hl7_channel(h) for h in config.hl7] + [fhir_channel(f) for f in config.fhir]
    if config.email is not None:
        names.append(EMAIL_CHANNEL)
    return names


def queue_for_job(
    session: Session, job: Job, study: Study, notifications_config: Notifications, now: dt.datetime | None = None
) -> None:
    """Add a pending notification per configured channel when ``job.priority`` is in ``notifications.priorities``.
    Runs in the caller's transaction; calling it again for the same job adds nothing."""
    if job.priority not in notifications_config.priorities:
        return
    wanted = channels(notifications_config)
    if not wanted:
        return
    if job.id is None or study.id is None:
        session.flush()
    existing = set(session.scalars(select(Notification.channel).where(Notification.job_id == job.id)))
    due = now or job.flagged_at or dt.datetime.now(dt.UTC)
    for channel in wanted:
        if channel not in existing:
            session.add(
                Notification(
                    study_id=study.id,
                    job_id=job.id,
                    channel=channel,
                    state=NotificationState.PENDING.value,
                    next_attempt_at=due,
                )
            )
    log.info("job %s: %s notification(s) queued (priority %s)", job.id, len(set(wanted) - existing), job.priority)


@dataclass(frozen=True)
class _Claim:
    notification_id: int
    channel: str
    attempts: int
    alert: Alert


def _claim(sessions: sessionmaker[Session], now: dt.datetime, backoff: Backoff, batch: int) -> list[_Claim]:
    with transaction(sessions) as s:
        rows = s.scalars(
            select(Notification)
            .where(Notification.state.in_([NotificationState.PENDING.value, NotificationState.SENDING.value]))
            .where(Notification.next_attempt_at <= now)
            .order_by(Notification.next_attempt_at, Notification.id)
            .limit(batch)
        ).all()
        claims = []
        for row in rows:
            job = s.scalars(
                select(Job).where(Job.id == row.job_id).options(selectinload(Job.findings), selectinload(Job.series))
            ).one_or_none()
            study = s.get(Study, row.study_id)
            if job is None or study is None:
                row.state = NotificationState.FAILED.value
                row.last_error = "the job or study is no longer stored"
                continue
            row.state = NotificationState.SENDING.value
            row.attempts += 1
            row.next_attempt_at = now + dt.timedelta(seconds=backoff.lease_s)
            claims.append(_Claim(row.id, row.channel, row.attempts, build_alert(job, study)))
    return claims


def _send(channel: str, alert: Alert, config: Notifications, now: dt.datetime, timeout_s: float) -> None:
    """Raise NotificationError unless the message went out."""
    if channel == EMAIL_CHANNEL:
        if config.email is None:
            raise NotificationError("channel email is no longer configured")
        subject, body = email_text(alert, config.email.include_phi)
        send_email(config.email, subject, body, now, timeout_s)
        return
    if channel.startswith(HL7_PREFIX):
        ris = next((h for h in config.hl7 if hl7_channel(h) == channel), None)
        if ris is None:
            raise NotificationError(f"channel {channel} is no longer configured")
        send_mllp(ris, oru_r01(alert, ris, now.strftime("%Y%m%d%H%M%S")), timeout_s)
        return
    if channel.startswith(FHIR_PREFIX):
        server = next((f for f in config.fhir if fhir_channel(f) == channel), None)
        if server is None:
            raise NotificationError(f"channel {channel} is no longer configured")
        post_bundle(server, bundle(alert, server.include_phi), timeout_s)
        return
    hook = next((w for w in config.webhooks if webhook_channel(w.url) == channel), None)
    if hook is None:
        raise NotificationError(f"channel {channel} is no longer configured")
    post_webhook(hook.url, WEBHOOK_FORMATS[hook.format](alert, hook.include_phi), timeout_s)


def _still_configured(channel: str, config: Notifications) -> bool:
    return channel in channels(config)


def notify_due(
    sessions: sessionmaker[Session],
    config: Notifications,
    now: dt.datetime,
    *,
    backoff: Backoff | None = None,
    timeout_s: float = 10.0,
    batch: int = 20,
) -> int:
    """Send the notifications that are due at ``now``; returns how many went out."""
    backoff = backoff or Backoff()
    sent = 0
    for claim in _claim(sessions, now, backoff, batch):
        error: str | None = None
        try:
            _send(claim.channel, claim.alert, config, now, timeout_s)
        except NotificationError as exc:
            error = str(exc)
        with transaction(sessions) as s:
            row = s.get_one(Notification, claim.notification_id)
            if error is None:
                row.state = NotificationState.SENT.value
                row.sent_at = now
                row.last_error = None
                sent += 1
                log.info("notification %s (job %s, %s) sent", row.id, row.job_id, claim.channel)
            elif claim.attempts >= config.max_attempts or not _still_configured(claim.channel, config):
                row.state = NotificationState.FAILED.value
                row.last_error = error
                log.error(
                    "notification %s (job %s) gave up after %d attempt(s): %s",
                    row.id,
                    row.job_id,
                    claim.attempts,
                    error,
                )
            else:
                row.state = NotificationState.PENDING.value
                row.next_attempt_at = now + backoff.delay(claim.attempts)
                row.last_error = error
                log.warning(
                    "notification %s (job %s) attempt %d failed, retry at %s: %s",
                    row.id,
                    row.job_id,
                    claim.attempts,
                    row.next_attempt_at.isoformat(),
                    error,
                )
    return sent
