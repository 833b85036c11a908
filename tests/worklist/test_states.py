from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import text

from triage_node.worklist import states
from triage_node.worklist.db import migrate, transaction
from triage_node.worklist.models import Job, JobState, OutboxItem

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_sqlite_runs_in_wal_mode_with_full_sync_and_migrations_are_idempotent(env) -> None:  # type: ignore[no-untyped-def]
    engine, _ = env
    migrate(engine)
    with engine.connect() as c:
        if engine.dialect.name == "sqlite":
            assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
            assert c.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        else:  # PostgreSQL: a commit is on disk when it returns
            assert c.execute(text("SHOW synchronous_commit")).scalar() == "on"
            assert c.execute(text("SHOW fsync")).scalar() == "on"
        assert c.execute(text("select version_num from alembic_version")).scalar()


def test_claim_takes_each_job_once_in_order(env) -> None:  # type: ignore[no-untyped-def]
    _, sessions = env
    with transaction(sessions) as s:
        first = states.claim_next_job(s, NOW)
        assert first is not None and first.version == 1 and first.state == "processing" and first.attempts == 1
    with transaction(sessions) as s:
        second = states.claim_next_job(s, NOW)
        assert second is not None and second.version == 2
    with transaction(sessions) as s:
        third = states.claim_next_job(s, NOW)
        assert third is not None and third.version == 3
    with transaction(sessions) as s:
        assert states.claim_next_job(s, NOW) is None


def test_invalid_transition_names_both_states(env) -> None:  # type: ignore[no-untyped-def]
    _, sessions = env
    with transaction(sessions) as s:
        job = s.get(Job, 1)
        with pytest.raises(states.TransitionError, match="complete -> delivered is not a valid transition"):
            states.transition(s, job, JobState.DELIVERED)


def test_restart_resumes_processing_jobs_and_sending_items(env) -> None:  # type: ignore[no-untyped-def]
    _, sessions = env
    with transaction(sessions) as s:
        states.claim_next_job(s, NOW)
        s.add(
            OutboxItem(
                job_id=2,
                destination="pacs",
                kind="sr",
                sop_class_uid="x",
                sop_instance_uid="y",
                path="p",
                state="sending",
            )
        )
    with transaction(sessions) as s:
        assert states.resume_interrupted(s, NOW) == [1]
    with sessions() as s:
        assert s.get(Job, 1).state == "complete"  # type: ignore[union-attr]
        assert s.get(OutboxItem, 1).state == "pending"  # type: ignore[union-attr]


def test_delivery_state_follows_the_outbox(env) -> None:  # type: ignore[no-untyped-def]
    _, sessions = env
    with transaction(sessions) as s:
        job = s.get(Job, 1)
        assert job is not None
        job.state = "results_ready"
        for kind in ("seg", "sr"):
            s.add(
                OutboxItem(
                    job_id=1,
                    destination="pacs",
                    kind=kind,
                    sop_class_uid="x",
                    sop_instance_uid=kind,
                    path="p",
                    state="delivered" if kind == "seg" else "dead_letter",
                )
            )
        s.flush()
        s.refresh(job)
        states.settle_delivery(s, job, NOW)
        assert job.state == "dead_letter"
        job.outbox[1].state = "pending"  # resend
        states.settle_delivery(s, job, NOW)
        assert job.state == "results_ready"
        job.outbox[1].state = "delivered"
        states.settle_delivery(s, job, NOW)
        assert job.state == "delivered"
