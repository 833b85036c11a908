"""Fixtures for the ops tests: a migrated database on each backend and builders for the rows they need."""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from triage_node.worklist.db import make_engine, migrate, session_factory
from triage_node.worklist.models import Instance, Job, JobState, OutboxItem, OutboxState, Series, SeriesState, Study

_counter = itertools.count(1)


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    """A migrated database on each backend (``db_url``): the tests that take it run on both."""
    engine = make_engine(db_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def uid() -> str:
    return f"1.2.826.0.1.3680043.10.999.{next(_counter)}"


def add_series(
    session: Session, at: dt.datetime, *, state: SeriesState = SeriesState.COMPLETE, study: Study | None = None
) -> Series:
    if study is None:
        study = Study(study_instance_uid=uid(), first_received_at=at)
        session.add(study)
    series = Series(
        study=study, series_instance_uid=uid(), modality="CT", first_received_at=at, last_received_at=at,
        state=state.value,
    )
    session.add(series)
    session.flush()
    return series


def add_job(
    session: Session, series: Series, state: JobState, at: dt.datetime, *, version: int = 1
) -> Job:
    job = Job(
        series=series, version=version, state=state.value, created_at=at, updated_at=at, finished_at=at,
        seg_series_uid=uid(), seg_sop_uid=uid(), sr_series_uid=uid(), sr_sop_uid=uid(), map_series_uid=uid(),
        map_sop_uid=uid(),
    )
    session.add(job)
    session.flush()
    return job


def add_instance(session: Session, series: Series, spool: Path, at: dt.datetime, *, write: bool = True) -> Instance:
    sop = uid()
    rel = Path(series.study.study_instance_uid) / series.series_instance_uid / f"{sop}.dcm"
    if write:
        (spool / rel).parent.mkdir(parents=True, exist_ok=True)
        (spool / rel).write_bytes(b"\0" * 132)
    inst = Instance(
        series=series, sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1", path=str(rel), size=132, sha256=sop, received_at=at,
    )
    session.add(inst)
    session.flush()
    return inst


def add_outbox(session: Session, job: Job, kind: str, state: OutboxState, created: dt.datetime) -> OutboxItem:
    item = OutboxItem(
        job=job, destination="pacs", kind=kind, sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4", sop_instance_uid=uid(),
        path=f"results/{kind}.dcm", state=state.value, created_at=created, updated_at=created, next_attempt_at=created,
    )
    session.add(item)
    session.flush()
    return item


class Rows:
    """Row builders (each flushes, so ids are set); the test owns the transaction."""

    series = staticmethod(add_series)
    job = staticmethod(add_job)
    instance = staticmethod(add_instance)
    outbox = staticmethod(add_outbox)


@pytest.fixture
def rows() -> Rows:
    return Rows()
