"""Claims shared by several nodes, on SQLite and on a real PostgreSQL: SKIP LOCKED, leases, takeover, fencing, the
heartbeat, outbox claims, the spool identity and concurrent receivers."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from triage_node.send.outbox import _claim
from triage_node.worklist import claims, states
from triage_node.worklist.db import make_engine, migrate, session_factory, transaction
from triage_node.worklist.models import Job, JobState, OutboxItem, OutboxState, Series, Study

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_a_claim_in_progress_is_skipped_not_waited_for(env) -> None:  # type: ignore[no-untyped-def]
    engine, sessions = env
    if engine.dialect.name == "sqlite":
        pytest.skip("SQLite serializes claimers at BEGIN IMMEDIATE: one node's claim waits for the other's")
    with transaction(sessions) as a:
        first = claims.claim_job(a, NOW, "node-a", 30)
        assert first is not None
        got: list[int | None] = []

        def other() -> None:
            with transaction(sessions) as b:
                job = claims.claim_job(b, NOW, "node-b", 30)
                got.append(job.id if job else None)

        t = threading.Thread(target=other)
        t.start()
        t.join(timeout=5)
        assert not t.is_alive(), "the second claimer waited on the first one's row lock"
        assert got and got[0] is not None and got[0] != first.id


def test_an_expired_lease_is_taken_over_and_the_old_claim_is_fenced_off(env) -> None:  # type: ignore[no-untyped-def]
    _, sessions = env
    with transaction(sessions) as s:
        job = claims.claim_job(s, NOW, "node-a", 30)
        assert job is not None and job.id == 1
        old = claims.Claim(job.id, "node-a", job.claim_token)
    with transaction(sessions) as s:  # other jobs are claimed meanwhile; job 1 is not, its lease runs
        assert [claims.claim_job(s, NOW + dt.timedelta(seconds=10), "node-b", 30).id for _ in range(2)] == [2, 3]  # type: ignore[union-attr]
        assert claims.claim_job(s, NOW + dt.timedelta(seconds=29), "node-b", 30) is None
    with transaction(sessions) as s:
        taken = claims.claim_job(s, NOW + dt.timedelta(seconds=31), "node-b", 30)
        assert taken is not None and taken.id == 1 and taken.claimed_by == "node-b"
        assert taken.claim_token == old.token + 1 and taken.attempts == 2
        new = claims.Claim(taken.id, "node-b", taken.claim_token)
    with pytest.raises(claims.ClaimLost, match="now held by node-b"), transaction(sessions) as s:
        claims.fence(s, old)
    with transaction(sessions) as s:
        claims.fence(s, new)  # the holder commits
        j = s.get(Job, 1)
        assert j is not None
        states.transition(s, j, JobState.RESULTS_READY, now=NOW)
    with pytest.raises(claims.ClaimLost), transaction(sessions) as s:
        claims.fence(s, new)  # done: nobody holds it any more


def test_the_heartbeat_keeps_a_claim_and_notices_a_lost_one(env) -> None:  # type: ignore[no-untyped-def]
    _, sessions = env
    t = [NOW]
    with transaction(sessions) as s:
        a = claims.claim_job(s, NOW, "node-a", 30)
        b = claims.claim_job(s, NOW, "node-a", 30)
        assert a is not None and b is not None
        ca, cb = claims.Claim(a.id, "node-a", a.claim_token), claims.Claim(b.id, "node-a", b.claim_token)
    hb = claims.Heartbeat(sessions, "node-a", 30, clock=lambda: t[0])
    hb.hold_job(ca)
    hb.hold_job(cb)
    t[0] = NOW + dt.timedelta(seconds=25)
    hb.beat()
    with transaction(sessions) as s:  # job a's lease was extended: at +40 s nobody may take it
        s.execute(select(Job).where(Job.id == cb.job_id)).scalar_one().claimed_by = "someone-else"
        assert claims.claim_job(s, NOW + dt.timedelta(seconds=40), "node-b", 30) is not None  # job 3, never held
        assert claims.claim_job(s, NOW + dt.timedelta(seconds=40), "node-b", 30) is None
    hb.beat()
    assert hb.lost(cb.job_id) and not hb.lost(ca.job_id)


def test_outbox_rows_are_claimed_with_a_lease_and_taken_over_after_it(env) -> None:  # type: ignore[no-untyped-def]
    _, sessions = env
    from triage_node.config import Destination

    dest = {"pacs": Destination(name="pacs", ae_title="PACS", host="127.0.0.1", port=104)}
    with transaction(sessions) as s:
        for kind in ("seg", "sr"):
            s.add(OutboxItem(job_id=1, destination="pacs", kind=kind, sop_class_uid="x", sop_instance_uid=kind,
                             path="p", state=OutboxState.PENDING.value, next_attempt_at=NOW))
    with transaction(sessions) as s:
        rows = _claim(s, dest, NOW, 10, "node-a", 30)
        assert [(r.state, r.claimed_by) for r in rows] == [("sending", "node-a")] * 2
    with transaction(sessions) as s:
        assert _claim(s, dest, NOW + dt.timedelta(seconds=20), 10, "node-b", 30) == []
    with transaction(sessions) as s:
        rows = _claim(s, dest, NOW + dt.timedelta(seconds=31), 10, "node-b", 30)
        assert [(r.claimed_by, r.attempts) for r in rows] == [("node-b", 2)] * 2


def test_restart_of_one_node_leaves_a_live_nodes_claims_alone(env) -> None:  # type: ignore[no-untyped-def]
    _, sessions = env
    with transaction(sessions) as s:
        claims.claim_job(s, NOW, "live", 30)
    with transaction(sessions) as s:
        assert states.resume_interrupted(s, NOW + dt.timedelta(seconds=5), only_expired=True) == []
    with transaction(sessions) as s:
        assert states.resume_interrupted(s, NOW + dt.timedelta(seconds=31), only_expired=True) == [1]


def test_the_spool_must_be_the_one_the_database_was_made_with(env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, sessions = env
    shared = tmp_path / "shared-spool"
    first = claims.check_spool(sessions, shared)
    assert claims.check_spool(sessions, shared) == first  # a second node on the same mount
    with pytest.raises(claims.SpoolMismatch, match=r"expects spool id .*, it has no \.triage-node-spool-id file"):
        claims.check_spool(sessions, tmp_path / "a-local-folder")
    other = tmp_path / "other"
    other.mkdir()
    (other / claims.SPOOL_MARK).write_text("0123\n")
    with pytest.raises(claims.SpoolMismatch, match="it holds spool id 0123"):
        claims.check_spool(sessions, other)


def test_receivers_writing_one_series_at_once_count_every_instance(db_url: str, tmp_path: Path) -> None:
    """Four receive processes (here: four engines, each with its own connection) record instances of one new study
    and series at the same moment: one study row, one series row, every instance counted once."""
    from triage_node.receive.header import Header
    from triage_node.receive.records import record_instance

    engines = [make_engine(db_url) for _ in range(4)]
    migrate(engines[0])
    per, errors = 15, []
    barrier = threading.Barrier(len(engines))

    def header(n: int) -> Header:
        return Header(
            sop_instance_uid=f"1.2.9.{n}", sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_uid="1.2.9",
            series_uid="1.2.9.1", transfer_syntax_uid="1.2.840.10008.1.2.1", instance_number=n,
            expected_instances=len(engines) * per, source=Dataset,
        )

    def receiver(i: int) -> None:
        try:
            barrier.wait()
            for k in range(per):
                n = i * per + k
                for attempt in range(5):
                    try:
                        with engines[i].begin() as conn:
                            record_instance(conn, header(n), f"x/{n}", 1, f"{n:064x}", "CT", NOW)
                        break
                    except Exception as exc:  # a conflict the caller retries (as scp.py does)
                        if attempt == 4:
                            raise
                        assert "40P01" in str(exc) or "deadlock" in str(exc) or "locked" in str(exc), exc
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=receiver, args=(i,)) for i in range(len(engines))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    sessions = session_factory(engines[0])
    with sessions() as s:
        assert s.scalar(select(Series.received_instances)) == len(engines) * per
        assert len(s.scalars(select(Study)).all()) == 1 and len(s.scalars(select(Series)).all()) == 1
    for e in engines:
        e.dispose()
