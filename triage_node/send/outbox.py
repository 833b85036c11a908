"""The persistent outbox: every result object for every destination is a row that survives restarts.

Life of a row (``OutboxState``): ``pending`` -> ``sending`` (committed *before* the network call, so a crash leaves it
``sending`` and ``states.resume_interrupted`` puts it back) -> ``delivered``, or back to ``pending`` with exponential
backoff, or ``dead_letter`` when the status can never succeed or ``max_attempts`` is used up. ``resend`` re-queues a
job's rows whatever their state. After every batch ``states.settle_delivery`` derives the job's state from its rows.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage_node.config import Destination
from triage_node.worklist import states
from triage_node.worklist.claims import DEFAULT_LEASE_S, OUTBOX_CHANNEL, Heartbeat, notify
from triage_node.worklist.db import is_postgres, transaction
from triage_node.worklist.models import Job, JobState, OutboxItem, OutboxState

if TYPE_CHECKING:  # send/scu.py (pydicom, pynetdicom) is imported where delivery happens, not by `triage-node resend`
    from triage_node.send.scu import Outgoing, SendResult

log = logging.getLogger(__name__)

BATCH_SIZE = 50


class ResultFileLike(Protocol):
    """``results.build.ResultFile``; a protocol so that send/ does not import the builders (and highdicom)."""

    @property
    def kind(self) -> str: ...
    @property
    def path(self) -> object: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def sop_instance_uid(self) -> str: ...


def _output_of(kind: str) -> str:
    """= results.build.output_of (not imported: send/ stays free of the builders): map -> seg, sc1.. -> sc."""
    if kind == "map":
        return "seg"
    return "sc" if kind.startswith("sc") and kind[2:].isdigit() else kind


class Sender(Protocol):
    def __call__(self, dest: Destination, calling_ae: str, items: Sequence[Outgoing]) -> list[SendResult]: ...


def backoff(dest: Destination, attempts: int) -> dt.timedelta:
    """Delay before the next try after ``attempts`` failed ones: initial x 2^(attempts-1), capped at backoff_max_s."""
    exponent = min(max(attempts - 1, 0), 60)
    return dt.timedelta(seconds=min(dest.backoff_initial_s * 2.0**exponent, dest.backoff_max_s))


def enqueue(
    session: Session,
    job: Job,
    files: Sequence[ResultFileLike],
    destinations: Sequence[Destination],
    now: dt.datetime,
) -> None:
    """Queue every file for every destination, once: an existing (job, destination, kind) row is kept as it is
    (a rerun of the job rebuilds identical objects under the same UIDs), except that its path follows the new file."""
    if job.id is None:
        session.flush()
    rows = session.scalars(select(OutboxItem).where(OutboxItem.job_id == job.id))
    existing = {(o.destination, o.kind): o for o in rows}
    added = 0
    for dest in destinations:
        for f in files:
            if _output_of(f.kind) not in dest.outputs:  # the destination's output profile (config: outputs)
                continue
            row = existing.get((dest.name, f.kind))
            if row is not None:
                row.path = str(f.path)
                continue
            session.add(
                OutboxItem(
                    job_id=job.id,
                    destination=dest.name,
                    kind=f.kind,
                    sop_class_uid=f.sop_class_uid,
                    sop_instance_uid=f.sop_instance_uid,
                    path=str(f.path),
                    state=OutboxState.PENDING.value,
                    attempts=0,
                    next_attempt_at=now,
                    created_at=now,
                    updated_at=now,
                )
            )
            added += 1
    if added:
        notify(session, OUTBOX_CHANNEL)
        log.info("job %d: %d result object(s) queued for %d destination(s)", job.id, added, len(destinations))


def _claim(
    session: Session,
    destinations: dict[str, Destination],
    now: dt.datetime,
    limit: int,
    node: str | None = None,
    lease_s: float = DEFAULT_LEASE_S,
) -> list[OutboxItem]:
    """Due rows (``pending`` whose time has come, or ``sending`` under a lease that ran out: their sender died),
    taken with FOR UPDATE SKIP LOCKED on PostgreSQL so that two senders never send the same row at once."""
    due = ((OutboxItem.state == OutboxState.PENDING.value) & (OutboxItem.next_attempt_at <= now)) | (
        (OutboxItem.state == OutboxState.SENDING.value)
        & OutboxItem.lease_until.is_not(None)
        & (OutboxItem.lease_until < now)
    )
    stmt = (
        select(OutboxItem)
        .where(due)
        .where(OutboxItem.destination.in_(destinations))
        .order_by(OutboxItem.next_attempt_at, OutboxItem.id)
        .limit(limit)
    )
    if is_postgres(session):
        stmt = stmt.with_for_update(skip_locked=True)
    rows = list(session.scalars(stmt))
    for row in rows:
        if row.state == OutboxState.SENDING.value:
            log.warning("job %d: %s to %s taken over from %s", row.job_id, row.kind, row.destination, row.claimed_by)
        row.state = OutboxState.SENDING.value
        row.attempts += 1
        row.updated_at = now
        row.claimed_by = node
        row.lease_until = now + dt.timedelta(seconds=lease_s)
    return rows


def _settle(session: Session, row: OutboxItem, result: SendResult, dest: Destination, now: dt.datetime) -> None:
    from triage_node.send.scu import Outcome

    row.last_status = result.status
    row.updated_at = now
    if result.outcome is Outcome.DELIVERED:
        row.state = OutboxState.DELIVERED.value
        row.delivered_at = now
        row.last_error = None
        return
    row.last_error = result.error
    if result.outcome is Outcome.PERMANENT:
        row.state = OutboxState.DEAD_LETTER.value
        log.warning("job %d: %s to %s dead-lettered: %s", row.job_id, row.kind, dest.name, result.error)
    elif row.attempts >= dest.max_attempts:
        row.state = OutboxState.DEAD_LETTER.value
        row.last_error = f"{result.error} (gave up after {row.attempts} attempts)"
        log.warning("job %d: %s to %s dead-lettered after %d attempts", row.job_id, row.kind, dest.name, row.attempts)
    else:
        row.state = OutboxState.PENDING.value
        row.next_attempt_at = now + backoff(dest, row.attempts)


def deliver_due(
    sessions: sessionmaker[Session],
    destinations: Sequence[Destination],
    calling_ae: str,
    now: dt.datetime,
    *,
    batch_size: int = BATCH_SIZE,
    sender: Sender | None = None,
    node: str | None = None,
    lease_s: float = DEFAULT_LEASE_S,
    heartbeat: Heartbeat | None = None,
) -> int:
    """Send the items whose time has come (at most ``batch_size``), one association per destination; return how many
    were delivered. Rows for destinations no longer configured stay pending (listed by the worklist, not lost).
    ``sender``: default ``send/scu.send_batch``. ``node``, ``lease_s``: the claim this sender writes on the rows
    (another node's sender takes them over once the lease runs out); ``heartbeat`` extends it while the batch is
    sent."""
    from triage_node.send.scu import Outcome, Outgoing, SendResult, send_batch

    sender = sender or send_batch
    by_name = {d.name: d for d in destinations}
    if not by_name:
        return 0
    with transaction(sessions) as s:
        claimed = _claim(s, by_name, now, batch_size, node, lease_s)
        claimed_ids = [row.id for row in claimed]
        batches: dict[str, list[Outgoing]] = defaultdict(list)
        for row in claimed:
            batches[row.destination].append(Outgoing(row.id, Path(row.path), row.sop_class_uid, row.sop_instance_uid))
    if not batches:
        return 0
    results: dict[str, list[SendResult]] = {}
    if heartbeat is not None:
        heartbeat.hold_outbox(claimed_ids)
    try:
        for name, items in batches.items():
            try:
                results[name] = sender(by_name[name], calling_ae, items)
            except Exception as exc:  # a bug below the network edge must not strand rows in 'sending'
                log.exception("destination %s: sending failed unexpectedly", name)
                results[name] = [
                    SendResult(i.key, Outcome.RETRY, None, f"{type(exc).__name__}: {exc}") for i in items
                ]
    finally:
        if heartbeat is not None:
            heartbeat.release_outbox(claimed_ids)
    delivered = 0
    with transaction(sessions) as s:
        jobs: set[int] = set()
        for name, batch_results in results.items():
            for result in batch_results:
                item = s.get(OutboxItem, result.key)
                if item is None or item.state != OutboxState.SENDING.value or item.claimed_by != node:
                    continue  # re-queued by ``resend``, or taken over by another sender, meanwhile: its state wins
                _settle(s, item, result, by_name[name], now)
                item.claimed_by = item.lease_until = None
                delivered += result.outcome is Outcome.DELIVERED
                jobs.add(item.job_id)
        s.flush()
        for job_id in sorted(jobs):
            job = s.get(Job, job_id)
            if job is not None:
                s.refresh(job, ["outbox"])
                states.settle_delivery(s, job, now)
    log.info(
        "outbox: %d of %d item(s) delivered to %d destination(s)",
        delivered, sum(len(b) for b in batches.values()), len(batches),
    )
    return delivered


def resend(session: Session, job_id: int, now: dt.datetime) -> int:
    """Re-queue every outbox item of job ``job_id`` (delivered and dead-lettered ones too) with fresh attempts;
    return how many. The job goes back to ``results_ready`` until the outbox settles again."""
    rows = list(session.scalars(select(OutboxItem).where(OutboxItem.job_id == job_id)))
    for row in rows:
        row.state = OutboxState.PENDING.value
        row.attempts = 0
        row.next_attempt_at = now
        row.delivered_at = None
        row.committed_at = None
        row.updated_at = now
        row.claimed_by = row.lease_until = None
    job = session.get(Job, job_id)
    if rows and job is not None and job.state in (JobState.DELIVERED.value, JobState.DEAD_LETTER.value):
        states.transition(session, job, JobState.RESULTS_READY, reason=None, now=now)
    if rows:
        notify(session, OUTBOX_CHANNEL)
        log.info("job %d: %d outbox item(s) re-queued", job_id, len(rows))
    return len(rows)
