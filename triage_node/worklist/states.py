"""Job state transitions, all in one place. Each function runs inside the caller's transaction.

``complete -> processing -> results_ready -> delivered``, with ``rejected`` / ``skipped`` (terminal, reason stored),
``failed`` (reason stored; retried until ``max_job_attempts``) and ``dead_letter`` (delivery gave up).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from triage_node.worklist.claims import DEFAULT_LEASE_S, claim_job, new_node_name
from triage_node.worklist.models import Job, JobState, OutboxItem, OutboxState

TERMINAL = frozenset({JobState.DELIVERED, JobState.REJECTED, JobState.SKIPPED, JobState.DEAD_LETTER})

ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.COMPLETE: frozenset({JobState.PROCESSING, JobState.SKIPPED, JobState.REJECTED}),
    JobState.PROCESSING: frozenset(
        {
            JobState.RESULTS_READY,
            JobState.REJECTED,
            JobState.SKIPPED,
            JobState.FAILED,
            JobState.COMPLETE,
            JobState.DELIVERED,
        }
    ),
    JobState.RESULTS_READY: frozenset({JobState.DELIVERED, JobState.DEAD_LETTER}),
    JobState.FAILED: frozenset({JobState.COMPLETE}),
    JobState.DEAD_LETTER: frozenset({JobState.RESULTS_READY}),
    JobState.DELIVERED: frozenset({JobState.RESULTS_READY}),
    JobState.REJECTED: frozenset({JobState.COMPLETE}),
    JobState.SKIPPED: frozenset({JobState.COMPLETE}),
}


class TransitionError(RuntimeError):
    pass


def transition(
    session: Session, job: Job, to: JobState, reason: str | None = None, now: dt.datetime | None = None
) -> None:
    """Move ``job`` to ``to`` or raise TransitionError naming both states."""
    now = now or dt.datetime.now(dt.UTC)
    current = JobState(job.state)
    if to not in ALLOWED.get(current, frozenset()):
        raise TransitionError(f"job {job.id}: {current.value} -> {to.value} is not a valid transition")
    job.state = to.value
    job.updated_at = now
    if reason is not None:
        job.reason = reason
    if to == JobState.PROCESSING:
        job.started_at = now
        job.attempts += 1
    if to in TERMINAL or to in (JobState.RESULTS_READY, JobState.FAILED):
        job.finished_at = now


def claim_next_job(
    session: Session, now: dt.datetime, node: str | None = None, lease_s: float | None = None
) -> Job | None:
    """Claim the oldest due job for processing: queued (``complete`` whose retry time has come), or ``processing``
    under a lease that ran out (its node died). See ``worklist/claims.py`` (FOR UPDATE SKIP LOCKED, lease)."""
    return claim_job(session, now, node or new_node_name(), lease_s or DEFAULT_LEASE_S)


def resume_interrupted(session: Session, now: dt.datetime, *, only_expired: bool = False) -> list[int]:
    """At start-up: jobs left ``processing`` by a crash go back to the queue; outbox items left ``sending`` become
    ``pending`` again (the PACS may have stored them: the same SOP Instance UID makes the resend harmless).

    ``only_expired``: when other nodes share the database, only claims whose lease ran out (or that have none) are
    someone's crash; a live node's claims are left alone."""
    expired_job = Job.lease_until.is_(None) | (Job.lease_until < now)
    expired_out = OutboxItem.lease_until.is_(None) | (OutboxItem.lease_until < now)
    query = select(Job.id).where(Job.state == JobState.PROCESSING.value)
    if only_expired:
        query = query.where(expired_job)
    ids = list(session.scalars(query))
    if ids:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids))
            .values(state=JobState.COMPLETE.value, updated_at=now, claimed_by=None, lease_until=None)
        )
    out = update(OutboxItem).where(OutboxItem.state == OutboxState.SENDING.value)
    if only_expired:
        out = out.where(expired_out)
    session.execute(
        out.values(state=OutboxState.PENDING.value, next_attempt_at=now, claimed_by=None, lease_until=None)
    )
    return ids


def settle_delivery(session: Session, job: Job, now: dt.datetime | None = None) -> None:
    """Derive a ``results_ready`` job's state from its outbox: all delivered -> delivered; any dead -> dead_letter."""
    if job.state not in (JobState.RESULTS_READY.value, JobState.DEAD_LETTER.value):
        return
    states = {o.state for o in job.outbox}
    if states and states <= {OutboxState.DELIVERED.value}:
        if job.state == JobState.RESULTS_READY.value:
            transition(session, job, JobState.DELIVERED, now=now)
        else:
            transition(session, job, JobState.RESULTS_READY, now=now)
            transition(session, job, JobState.DELIVERED, now=now)
    elif OutboxState.DEAD_LETTER.value in states and job.state == JobState.RESULTS_READY.value:
        pending = {OutboxState.PENDING.value, OutboxState.SENDING.value} & states
        if not pending:
            transition(session, job, JobState.DEAD_LETTER, now=now)
    elif job.state == JobState.DEAD_LETTER.value and states & {OutboxState.PENDING.value, OutboxState.SENDING.value}:
        transition(session, job, JobState.RESULTS_READY, now=now)
