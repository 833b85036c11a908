from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage_node.ops.retention import purge_spool
from triage_node.worklist.db import transaction
from triage_node.worklist.models import Instance, JobState, SeriesState

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
OLD = NOW - dt.timedelta(days=40)
RECENT = NOW - dt.timedelta(days=5)


def files_of(sessions: sessionmaker[Session], series_id: int) -> list[tuple[str, dt.datetime | None]]:
    with sessions() as s:
        return [(i.path, i.deleted_at) for i in s.scalars(select(Instance).where(Instance.series_id == series_id))]


def test_only_done_series_past_retention_lose_their_files(
    tmp_path: Path, sessions: sessionmaker[Session], rows: Any
) -> None:
    spool = tmp_path / "spool"
    with transaction(sessions) as s:
        cases: dict[str, int] = {}

        def series_with(name: str, job_state: JobState | None, at: dt.datetime, **kw: Any) -> None:
            sr = rows.series(s, at, **kw)
            for _ in range(3):
                rows.instance(s, sr, spool, at)
            if job_state is not None:
                rows.job(s, sr, job_state, at)
            cases[name] = sr.id

        series_with("delivered_old", JobState.DELIVERED, OLD)
        series_with("rejected_old", JobState.REJECTED, OLD)
        series_with("skipped_old", JobState.SKIPPED, OLD)
        series_with("delivered_recent", JobState.DELIVERED, RECENT)
        series_with("dead_letter_old", JobState.DEAD_LETTER, OLD)
        series_with("failed_old", JobState.FAILED, OLD)
        series_with("results_ready_old", JobState.RESULTS_READY, OLD)
        series_with("no_job_old", None, OLD)
        # A late instance reopened this series: the old job is delivered, but the series is receiving again.
        series_with("reopened", JobState.DELIVERED, OLD, state=SeriesState.RECEIVING)
        # Two versions: the old one delivered, the newest still processing.
        sr = rows.series(s, OLD)
        rows.instance(s, sr, spool, OLD)
        rows.job(s, sr, JobState.DELIVERED, OLD, version=1)
        rows.job(s, sr, JobState.PROCESSING, OLD, version=2)
        cases["newer_version_busy"] = sr.id

    assert purge_spool(sessions, spool, retention_days=30, now=NOW) == 9

    for name, series_id in cases.items():
        files = files_of(sessions, series_id)
        gone = name in ("delivered_old", "rejected_old", "skipped_old")
        assert all((d is not None) == gone for _, d in files), name
        assert all((spool / p).exists() != gone for p, _ in files), name
        if gone:
            assert all(d == NOW for _, d in files)
            # the series folder went with its files; the spool itself stays
            assert not (spool / files[0][0]).parent.exists()
    assert spool.is_dir()
    # A second run finds nothing more to do.
    assert purge_spool(sessions, spool, retention_days=30, now=NOW) == 0


def test_files_already_missing_are_marked_deleted(tmp_path: Path, sessions: sessionmaker[Session], rows: Any) -> None:
    spool = tmp_path / "spool"
    with transaction(sessions) as s:
        sr = rows.series(s, OLD)
        rows.instance(s, sr, spool, OLD, write=False)
        rows.instance(s, sr, spool, OLD)
        rows.job(s, sr, JobState.DELIVERED, OLD)
        series_id = sr.id
    assert purge_spool(sessions, spool, retention_days=30, now=NOW) == 2
    assert all(d == NOW for _, d in files_of(sessions, series_id))


def test_a_path_outside_the_spool_is_never_deleted(tmp_path: Path, sessions: sessionmaker[Session], rows: Any) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    precious = tmp_path / "precious.dcm"
    precious.write_bytes(b"keep")
    with transaction(sessions) as s:
        sr = rows.series(s, OLD)
        inst = rows.instance(s, sr, spool, OLD, write=False)
        inst.path = "../precious.dcm"
        rows.job(s, sr, JobState.DELIVERED, OLD)
    assert purge_spool(sessions, spool, retention_days=30, now=NOW) == 0
    assert precious.read_bytes() == b"keep"


def test_retention_disabled_and_naive_now(tmp_path: Path, sessions: sessionmaker[Session]) -> None:
    assert purge_spool(sessions, tmp_path, retention_days=None, now=NOW) == 0
    with pytest.raises(ValueError, match="timezone-aware now"):
        purge_spool(sessions, tmp_path, retention_days=30, now=NOW.replace(tzinfo=None))
