"""Group commit of received instances' rows (``triage_node.receive.records``).

On PostgreSQL a group goes to the server in two pipelines (``record_group_pg``) instead of ``record_instance`` once
per instance. Whatever the path, the worklist must end as if each instance had been recorded alone, one after the
other: these tests replay the same groups through the ``GroupCommitter`` on each backend and through
``record_instance`` alone on a fresh SQLite file, and compare what they recorded.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head
from triage_node.receive import records
from triage_node.receive.header import Header, parse_header
from triage_node.receive.records import GroupCommitter, Pending, RowIds, record_instance
from triage_node.receive.spool import sha256
from triage_node.worklist.db import make_engine, migrate, session_factory, transaction
from triage_node.worklist.models import Instance, Job, Series, Study

CT = "1.2.840.10008.5.1.4.1.1.2"
NOW = dt.datetime(2026, 1, 1, 8, 0, tzinfo=dt.UTC)

Item = tuple[Header, str]  # a header and the sha256 of "its" bytes
Between = Callable[[Any, int], None]  # run before each group: (sessions, group number)
Recorded = tuple[list[Any], dict[str, Any]]  # each instance's outcome, and the worklist's state at the end


@pytest.fixture(scope="module")
def headers(tmp_path_factory: pytest.TempPathFactory) -> list[Header]:
    """A 4-slice series (it declares 4 instances) and a fifth instance of it beyond the declared size."""
    hu, spacing = phantom_head(4, 32)
    paths = write_series(tmp_path_factory.mktemp("records") / "s", hu, spacing, seed=31)
    found = [parse_header(p.read_bytes(), CT, None) for p in paths]
    return [*found, dataclasses.replace(found[0], sop_instance_uid=found[0].sop_instance_uid[:-4] + ".999")]


def _sessions(url: str) -> sessionmaker[Session]:
    engine = make_engine(url)
    migrate(engine)
    return session_factory(engine)


def _state(sessions: sessionmaker[Session]) -> dict[str, Any]:
    """What the worklist holds, without row ids."""
    with sessions() as s:
        return {
            "studies": s.scalar(select(func.count()).select_from(Study)),
            "series": [
                (x.received_instances, x.expected_instances, x.state, x.version)
                for x in s.scalars(select(Series).order_by(Series.series_instance_uid))
            ],
            "instances": sorted(
                (i.sop_instance_uid, i.sha256, i.superseded, i.path) for i in s.scalars(select(Instance))
            ),
            "jobs": sorted((j.version, j.instances) for j in s.scalars(select(Job))),
        }


def _pending(item: Item) -> Pending:
    header, sha = item
    return Pending(header, f"spool/{sha[:8]}", 100, sha, "AE")


def _outcome(p: Pending) -> tuple[bool, bool, bool, bool] | str:
    if p.error is not None:
        return type(p.error).__name__
    assert p.result is not None
    r = p.result
    return (r.duplicate, r.new_version, r.reopened, r.complete_by_count)


def _one_by_one(tmp_path: Path, groups: list[list[Item]], between: Between) -> Recorded:
    """The reference: each instance recorded alone, in its own transaction, by ``record_instance``."""
    sessions = _sessions(f"sqlite:///{tmp_path / 'ref' / 'ref.sqlite'}")
    outcomes = []
    for n, group in enumerate(groups):
        between(sessions, n)
        for item in group:
            p = _pending(item)
            with transaction(sessions) as s:
                r = record_instance(s, p.header, p.rel, p.size, p.sha, "AE", NOW, RowIds())
                if r.complete_by_count:
                    from triage_node.series.completion import complete_series

                    series = s.get(Series, r.series_id)
                    assert series is not None
                    complete_series(s, series, NOW, "declared size reached")
            p.result = r
            outcomes.append(_outcome(p))
    return outcomes, _state(sessions)


def _grouped(url: str, groups: list[list[Item]], between: Between) -> Recorded:
    sessions = _sessions(url)
    committer = GroupCommitter(sessions, lambda: NOW)
    committer.start()
    outcomes = []
    for n, group in enumerate(groups):
        between(sessions, n)
        pending = [_pending(item) for item in group]
        committer._commit_group(list(pending))
        outcomes += [_outcome(p) for p in pending]
    committer.stop()
    return outcomes, _state(sessions)


def _complete_the_series_before(group: int) -> Between:
    def between(sessions: Any, n: int) -> None:
        if n == group:
            with transaction(sessions) as s:
                for series in s.scalars(select(Series)):
                    series.state = "complete"

    return between


def _nothing(sessions: Any, n: int) -> None:
    pass


SCENARIOS: dict[str, tuple[list[list[tuple[int, str]]], Between]] = {
    # (slice index, bytes label) per instance; groups in order
    "two groups reach the declared size": ([[(0, "a"), (1, "a")], [(2, "a"), (3, "a")]], _nothing),
    "one group holds the whole series": ([[(0, "a"), (1, "a"), (2, "a"), (3, "a")]], _nothing),
    "the same bytes again are a duplicate": ([[(0, "a")], [(0, "a"), (1, "a")]], _nothing),
    "other bytes are a new version": ([[(0, "a"), (1, "a")], [(1, "b"), (2, "a")]], _nothing),
    "an older version sent again is a duplicate": ([[(0, "a")], [(0, "b")], [(0, "a")]], _nothing),
    "one SOP twice in one group": ([[(0, "a"), (0, "b"), (1, "a")]], _nothing),
    "a late instance reopens a completed series": (
        [[(0, "a"), (1, "a")], [(1, "c"), (2, "a")]],
        _complete_the_series_before(1),
    ),
    "the declared size is reached before the group's end": ([[(0, "a"), (1, "a"), (2, "a"), (3, "a"), (4, "a")]],
                                                            _nothing),
}


# What PostgreSQL's group path leaves to ``record_instance``, one instance at a time.
ROW_BY_ROW = {"one SOP twice in one group", "the declared size is reached before the group's end"}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_group_is_recorded_as_its_instances_one_by_one(db_url, tmp_path, headers, scenario, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    spec, between = SCENARIOS[scenario]
    groups = [[(headers[i], sha256(f"{i}{label}".encode())) for i, label in g] for g in spec]
    expected_outcomes, expected_state = _one_by_one(tmp_path, groups, between)
    calls: list[str] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(scenario)
        return record_instance(*args, **kwargs)

    monkeypatch.setattr(records, "record_instance", counted)
    outcomes, state = _grouped(db_url, groups, between)
    assert outcomes == expected_outcomes
    assert state == expected_state
    if db_url.startswith("postgresql"):
        assert bool(calls) == (scenario in ROW_BY_ROW)


def test_a_remembered_series_row_that_is_gone_is_looked_up_again(postgres, headers) -> None:  # type: ignore[no-untyped-def]
    with postgres.database() as url:
        sessions = _sessions(url)
        committer = GroupCommitter(sessions, lambda: NOW)
        committer.start()
        committer.series_ids.put(headers[0].series_uid, 999)  # no such row
        group = [_pending((headers[0], "a" * 64)), _pending((headers[1], "b" * 64))]
        committer._commit_group(group)
        assert [p.error for p in group] == [None, None]
        with sessions() as s:
            series_id = s.scalars(select(Series.id)).one()
            assert s.scalar(select(Series.received_instances)) == 2
        committer._commit_group([_pending((headers[2], "c" * 64))])
        assert committer.series_ids.get(headers[0].series_uid) == series_id
        committer.stop()


def test_a_bad_row_fails_alone_and_the_rest_of_its_group_is_stored(postgres, headers) -> None:  # type: ignore[no-untyped-def]
    """PostgreSQL refuses a value longer than its column; the group is then recorded row by row."""
    bad = dataclasses.replace(headers[1], sop_class_uid="1." * 40)
    with postgres.database() as url:
        sessions = _sessions(url)
        committer = GroupCommitter(sessions, lambda: NOW)
        committer.start()
        group = [_pending((headers[0], "a" * 64)), _pending((bad, "b" * 64)), _pending((headers[2], "c" * 64))]
        committer._commit_group(group)
        assert [p.error is None for p in group] == [True, False, True]
        assert "DataError" in type(group[1].error).__name__
        with sessions() as s:
            assert s.scalar(select(Series.received_instances)) == 2
            assert s.scalar(select(func.count()).select_from(Instance)) == 2
        committer.stop()


def test_a_known_study_is_touched_at_most_once_a_second(postgres, headers) -> None:  # type: ignore[no-untyped-def]
    clock = [NOW]
    with postgres.database() as url:
        sessions = _sessions(url)
        committer = GroupCommitter(sessions, lambda: clock[0])
        committer.start()

        def store(i: int, at: float) -> tuple[dt.datetime, dt.datetime]:
            clock[0] = NOW + dt.timedelta(seconds=at)
            committer._commit_group([_pending((headers[i], f"{i}".encode().hex() * 32))])
            with sessions() as s:
                study, series = s.scalars(select(Study)).one(), s.scalars(select(Series)).one()
                return study.last_received_at, series.last_received_at

        assert store(0, 0) == (NOW, NOW)
        assert store(1, 0.5) == (NOW, NOW + dt.timedelta(seconds=0.5))  # the series row moves with every group
        assert store(2, 1.5) == (NOW + dt.timedelta(seconds=1.5),) * 2
        committer.stop()


def test_two_receivers_store_one_series_at_once_and_count_each_instance_once(postgres, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Two committers (two receive processes) on one database, each with two senders, get the 24 instances of one
    series spread over them, and 6 of them twice."""
    hu, spacing = phantom_head(24, 32)
    data = [p.read_bytes() for p in write_series(tmp_path / "s", hu, spacing, seed=32)]
    items = [(parse_header(d, CT, None), sha256(d)) for d in data]
    with postgres.database() as url:
        committers = [GroupCommitter(_sessions(url), dt.datetime.now) for _ in range(2)]
        for c in committers:
            c.clock = lambda: dt.datetime.now(dt.UTC)
            c.start()
        shares = [items[k::4] + items[(k + 1) % 4:6:4] for k in range(4)]  # every item, and 6 of them twice
        errors: list[BaseException] = []

        def send(k: int) -> None:
            for item in shares[k]:
                try:
                    committers[k % 2].commit(_pending(item))
                except BaseException as exc:  # collected for the assertion below
                    errors.append(exc)

        threads = [threading.Thread(target=send, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors
        sessions = committers[0].sessions
        with sessions() as s:
            assert s.scalar(select(func.count()).select_from(Instance)) == 24
            assert s.scalars(select(Series.received_instances)).one() == 24
            assert s.scalars(select(Series.state)).one() == "complete"
            assert s.scalars(select(Job.instances)).all() == [24]
        for c in committers:
            c.stop()


def test_a_single_instance_with_a_remembered_series_row_that_is_gone_is_stored(postgres, headers) -> None:  # type: ignore[no-untyped-def]
    with postgres.database() as url:
        committer = GroupCommitter(_sessions(url), lambda: NOW)
        committer.start()
        committer.series_ids.put(headers[0].series_uid, 999)  # no such row
        item = _pending((headers[0], "a" * 64))
        committer._commit_group([item])
        assert item.error is None and item.result is not None and not item.result.duplicate
        committer.stop()


def _leader(committer: GroupCommitter, item: Pending) -> threading.Thread:
    """A thread that hands ``item`` in and so leads the next group; returned once it waits for joiners."""
    import time

    leader = threading.Thread(target=committer.commit, args=(item,))
    leader.start()
    deadline = time.monotonic() + 30
    while not committer._joining and leader.is_alive() and time.monotonic() < deadline:
        time.sleep(0.001)
    return leader


def _waits_long(committer: GroupCommitter) -> None:
    # The wait then ends by what the test does, never by its bound.
    committer.JOIN_WAIT_MAX_S = committer._commit_s = 60.0


def test_on_postgresql_an_instance_being_made_durable_joins_the_group_that_starts_meanwhile(postgres, headers) -> None:  # type: ignore[no-untyped-def]
    with postgres.database() as url:
        committer = GroupCommitter(_sessions(url), lambda: NOW)
        committer.start()
        _waits_long(committer)
        committer.announce()  # another association is fsyncing its file
        leader = _leader(committer, _pending((headers[0], "a" * 64)))
        assert committer._joining and leader.is_alive()  # the leader waits for it
        joiner = _pending((headers[1], "b" * 64))
        committer.commit(joiner, announced=True)
        leader.join(timeout=30)
        assert not leader.is_alive() and joiner.error is None
        assert (committer.groups, committer.committed) == (1, 2)  # one commit for both
        committer.stop()


def test_a_withdrawn_instance_releases_the_waiting_leader(postgres, headers) -> None:  # type: ignore[no-untyped-def]
    with postgres.database() as url:
        committer = GroupCommitter(_sessions(url), lambda: NOW)
        committer.start()
        _waits_long(committer)
        committer.announce()
        leader = _leader(committer, _pending((headers[0], "a" * 64)))
        assert committer._joining
        committer.withdraw()  # its file could not be written
        leader.join(timeout=30)
        assert not leader.is_alive() and (committer.groups, committer.committed) == (1, 1)
        committer.stop()


def test_on_sqlite_the_leader_commits_at_once(tmp_path, headers) -> None:  # type: ignore[no-untyped-def]
    committer = GroupCommitter(_sessions(f"sqlite:///{tmp_path / 'db.sqlite'}"), lambda: NOW)
    committer.start()
    _waits_long(committer)
    committer.announce()
    item = _pending((headers[0], "a" * 64))
    thread = threading.Thread(target=committer.commit, args=(item,))
    thread.start()
    thread.join(timeout=20)  # far below the 60 s the leader would wait if it waited
    assert not thread.is_alive() and not committer.join_arrivals
    assert item.error is None and committer.groups == 1
    committer.withdraw()
    committer.stop()
