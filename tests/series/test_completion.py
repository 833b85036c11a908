from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from triage_node.config import CountRule, Match
from triage_node.series.completion import complete_due
from triage_node.worklist.db import make_engine, migrate, session_factory, transaction
from triage_node.worklist.models import Job, Series, Study

T0 = dt.datetime(2026, 1, 1, 8, 0, tzinfo=dt.UTC)


@pytest.fixture
def sessions(db_url):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def add_series(sessions, uid: str, received: int, expected: int | None, last: dt.datetime, **kw: object) -> None:  # type: ignore[no-untyped-def]
    with transaction(sessions) as s:
        study = Study(study_instance_uid=f"1.2.{uid}", first_received_at=T0, last_received_at=last)
        s.add(study)
        s.flush()
        s.add(
            Series(
                study_id=study.id,
                series_instance_uid=uid,
                received_instances=received,
                expected_instances=expected,
                first_received_at=T0,
                last_received_at=last,
                **kw,
            )
        )


def run(sessions, now: dt.datetime, **kw: object) -> list[str]:  # type: ignore[no-untyped-def]
    with transaction(sessions) as s:
        jobs = complete_due(s, now, quiet_period_s=30, **kw)  # type: ignore[arg-type]
        return [j.series.series_instance_uid for j in jobs]


def test_quiet_period_completes_a_series_that_does_not_declare_its_size(sessions) -> None:  # type: ignore[no-untyped-def]
    add_series(sessions, "1", 10, None, T0)
    assert run(sessions, T0 + dt.timedelta(seconds=29)) == []
    assert run(sessions, T0 + dt.timedelta(seconds=30)) == ["1"]
    assert run(sessions, T0 + dt.timedelta(seconds=90)) == []  # once


def test_declared_size_completes_at_once_and_a_short_series_waits_for_the_grace_period(sessions) -> None:  # type: ignore[no-untyped-def]
    add_series(sessions, "full", 40, 40, T0)
    add_series(sessions, "short", 39, 40, T0)
    assert run(sessions, T0) == ["full"]
    assert run(sessions, T0 + dt.timedelta(seconds=60), incomplete_grace_s=300) == []
    assert run(sessions, T0 + dt.timedelta(seconds=300), incomplete_grace_s=300) == ["short"]


def test_count_rule_completes_a_matching_series(sessions) -> None:  # type: ignore[no-untyped-def]
    add_series(sessions, "ct", 32, None, T0, modality="CT", series_description="Head 5mm")
    add_series(sessions, "mr", 32, None, T0, modality="MR")
    rules = (CountRule(match=Match(modality=("CT",), series_description="5mm"), count=32),)
    assert run(sessions, T0, count_rules=rules) == ["ct"]


def test_each_completion_makes_one_job_with_its_own_result_uids(sessions) -> None:  # type: ignore[no-untyped-def]
    add_series(sessions, "1", 5, 5, T0)
    run(sessions, T0)
    with transaction(sessions) as s:
        series = s.scalars(select(Series)).one()
        series.state, series.version = "receiving", 2  # a late instance reopened it
    run(sessions, T0)
    with sessions() as s:
        jobs = s.scalars(select(Job).order_by(Job.version)).all()
        assert [j.version for j in jobs] == [1, 2]
        uids = {u for j in jobs for u in (j.seg_sop_uid, j.sr_sop_uid, j.seg_series_uid, j.sr_series_uid)}
        assert len(uids) == 8
