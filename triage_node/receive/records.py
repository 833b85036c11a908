"""The worklist rows of received instances: ``record_instance`` records one in the caller's transaction, and the
``GroupCommitter`` commits the rows of instances arriving on many associations in shared transactions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from sqlalchemy import Connection, Engine, String, Table, any_, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from triage_node.receive.header import Header
from triage_node.receive.precompiled_sql import PrecompiledConnection, pg_compiled
from triage_node.series.completion import complete_series
from triage_node.worklist.models import Instance, Priority, Series, SeriesState, Study, UTCDateTime

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    """What recording one instance did to the worklist."""

    series_id: int
    duplicate: bool  # same SOP Instance UID and same bytes as before: nothing new was stored
    new_version: bool  # same SOP Instance UID with different bytes: the older version is superseded
    reopened: bool  # the series had completed; this instance reopened it as a new version
    complete_by_count: bool  # the series now holds as many instances as it declares


V = TypeVar("V")


class RowIds(Generic[V]):
    """UID -> what the hot path remembers of a study's (or series') row, e.g. its id, so that it skips a lookup per
    instance.

    An entry is only a hint: the caller's UPDATE of the row must touch exactly one row, else the entry is dropped and
    the row looked up again. Bounded: cleared when it grows past ``limit``.
    """

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self._ids: dict[str, V] = {}
        self._lock = threading.Lock()

    def get(self, uid: str) -> V | None:
        return self._ids.get(uid)

    def put(self, uid: str, value: V) -> None:
        with self._lock:
            if len(self._ids) >= self.limit:
                self._ids.clear()
            self._ids[uid] = value

    def drop(self, uid: str) -> None:
        with self._lock:
            self._ids.pop(uid, None)


_instances = cast(Table, Instance.__table__)
_series = cast(Table, Series.__table__)
_studies = cast(Table, Study.__table__)

# Built once: statements with bound parameters compile once and hit SQLAlchemy's cache on every later instance.
_SELECT_VERSIONS = select(_instances.c.id, _instances.c.series_id, _instances.c.sha256).where(
    _instances.c.sop_instance_uid == bindparam("p_sop")
)
_SUPERSEDE = update(_instances).where(_instances.c.id == bindparam("p_id")).values(superseded=True)
_INSERT_INSTANCE = insert(_instances)
_SELECT_STUDY = select(_studies.c.id).where(_studies.c.study_instance_uid == bindparam("p_uid"))
_TOUCH_STUDY = update(_studies).where(_studies.c.id == bindparam("p_id")).values(last_received_at=bindparam("p_now"))
_INSERT_STUDY = insert(_studies)
_SELECT_SERIES = select(
    _series.c.id, _series.c.state, _series.c.expected_instances, _series.c.received_instances
).where(_series.c.series_instance_uid == bindparam("p_uid"))
_INSERT_SERIES = insert(_series)
_UPDATE_SERIES = (
    update(_series)
    .where(_series.c.id == bindparam("p_id"))
    .values(
        last_received_at=bindparam("p_now"),
        received_instances=bindparam("p_received"),
        expected_instances=bindparam("p_expected"),
    )
)
_REOPEN_SERIES = (
    update(_series)
    .where(_series.c.id == bindparam("p_id"))
    .values(
        last_received_at=bindparam("p_now"),
        received_instances=bindparam("p_received"),
        expected_instances=bindparam("p_expected"),
        state=SeriesState.RECEIVING.value,
        version=_series.c.version + 1,
        completed_at=None,
    )
)


# PostgreSQL, where several receive processes write at once: a new study or series row is inserted with ON CONFLICT DO
# NOTHING (another process may insert the same one in the same instant) and the series row is read under a row lock,
# so its counters are never updated from a stale read.
_SELECT_SERIES_LOCKED = _SELECT_SERIES.with_for_update()
_INSERT_STUDY_PG = (
    pg_insert(_studies).on_conflict_do_nothing(index_elements=[_studies.c.study_instance_uid]).returning(_studies.c.id)
)
_INSERT_SERIES_PG = (
    pg_insert(_series).on_conflict_do_nothing(index_elements=[_series.c.series_instance_uid]).returning(_series.c.id)
)

# A whole group at once (PostgreSQL, ``record_group_pg``): study and series rows the process does not know yet are
# upserted, which locks them and returns them whether this transaction inserted them or not (the series finds its
# study's id by a subquery, so both go out in one pipeline), and the group's earlier versions are read in one
# statement under those locks.
_study_row, _series_row = pg_insert(_studies), pg_insert(_series)
_UPSERT_STUDY_PG = _study_row.on_conflict_do_update(
    index_elements=[_studies.c.study_instance_uid],
    set_={"last_received_at": func.greatest(_studies.c.last_received_at, _study_row.excluded.last_received_at)},
).returning(_studies.c.id)
_series_row = _series_row.values(
    study_id=select(_studies.c.id).where(_studies.c.study_instance_uid == bindparam("p_study_uid")).scalar_subquery()
)
_UPSERT_SERIES_PG = _series_row.on_conflict_do_update(
    index_elements=[_series.c.series_instance_uid],
    set_={"last_received_at": func.greatest(_series.c.last_received_at, _series_row.excluded.last_received_at)},
).returning(_series.c.id, _series.c.state, _series.c.expected_instances, _series.c.received_instances)
_SELECT_GROUP_VERSIONS = select(
    _instances.c.id, _instances.c.series_id, _instances.c.sha256, _instances.c.sop_instance_uid
).where(_instances.c.sop_instance_uid == any_(bindparam("p_sops", type_=ARRAY(String))))
_LOCK_SERIES_PG = (
    select(_series.c.id, _series.c.state, _series.c.expected_instances, _series.c.received_instances)
    .where(_series.c.id == bindparam("p_id"))
    .with_for_update(key_share=True)  # FOR NO KEY UPDATE: new instances' foreign keys (KEY SHARE) do not wait on it
)
_COUNT_SERIES_PG = (
    update(_series)
    .where(_series.c.id == bindparam("p_id"))
    .values(
        last_received_at=func.greatest(_series.c.last_received_at, bindparam("p_now", type_=UTCDateTime)),
        received_instances=bindparam("p_received"),
        expected_instances=bindparam("p_expected"),
    )
)
# How often a receive process moves a known study's ``last_received_at`` (it is shown, never decided on): a touch
# locks the study row, which every receive process storing that study's series would otherwise wait on per group.
STUDY_TOUCH_INTERVAL = dt.timedelta(seconds=1)


def _study_values(header: Header, now: dt.datetime) -> dict[str, object]:
    return {
        "study_instance_uid": header.study_uid,
        "patient_name": header.patient_name,
        "patient_id": header.patient_id,
        "patient_birth_date": header.patient_birth_date,
        "patient_sex": header.patient_sex,
        "accession_number": header.accession_number,
        "study_id": header.study_id,
        "study_description": header.study_description,
        "study_date": header.study_date,
        "study_time": header.study_time,
        "referring_physician": header.referring_physician,
        "first_received_at": now,
        "last_received_at": now,
        "priority": Priority.NONE.value,
    }


def _series_values(
    header: Header, study_id: int, calling_ae: str, now: dt.datetime, received: int
) -> dict[str, object]:
    return {
        "study_id": study_id,
        "series_instance_uid": header.series_uid,
        "modality": header.modality,
        "series_number": header.series_number,
        "series_description": header.series_description,
        "body_part": header.body_part,
        "calling_ae": calling_ae,
        "expected_instances": header.expected_instances,
        "received_instances": received,
        "first_received_at": now,
        "last_received_at": now,
        "state": SeriesState.RECEIVING.value,
        "version": 1,
    }


def _instance_values(
    header: Header, series_id: int, rel_path: str, size: int, sha: str, now: dt.datetime
) -> dict[str, object]:
    return {
        "series_id": series_id,
        "sop_instance_uid": header.sop_instance_uid,
        "sop_class_uid": header.sop_class_uid,
        "transfer_syntax_uid": header.transfer_syntax_uid,
        "instance_number": header.instance_number,
        "path": rel_path,
        "size": size,
        "sha256": sha,
        "received_at": now,
        "superseded": False,
    }


def _study_id(conn: PrecompiledConnection, header: Header, now: dt.datetime, cache: RowIds[int] | None) -> int:
    cached = cache.get(header.study_uid) if cache else None
    if cached is not None:
        if conn.execute(_TOUCH_STUDY, {"p_id": cached, "p_now": now}).rowcount == 1:
            return cached
        assert cache is not None
        cache.drop(header.study_uid)
    row_id = conn.execute(_SELECT_STUDY, {"p_uid": header.study_uid}).scalar_one_or_none()
    pg = conn.dialect.name == "postgresql"
    if row_id is None:
        values = _study_values(header, now)
        if pg:
            row_id = conn.execute(_INSERT_STUDY_PG, values).scalar_one_or_none()
            if row_id is None:  # inserted by another receiver meanwhile
                row_id = conn.execute(_SELECT_STUDY, {"p_uid": header.study_uid}).scalar_one()
                conn.execute(_TOUCH_STUDY, {"p_id": row_id, "p_now": now})
        else:
            row_id = conn.execute(_INSERT_STUDY, values).inserted_primary_key[0]
    else:
        conn.execute(_TOUCH_STUDY, {"p_id": row_id, "p_now": now})
    if cache is not None:
        cache.put(header.study_uid, int(row_id))
    return int(row_id)


def record_instance(
    db: Session | Connection,
    header: Header,
    rel_path: str,
    size: int,
    sha: str,
    calling_ae: str,
    now: dt.datetime,
    studies: RowIds[int] | None = None,
) -> Recorded:
    """Insert the instance row and update its study and series, inside the caller's transaction.

    Prebuilt SQLAlchemy Core statements on the session's connection, not ORM objects: this runs once per received
    instance, and the ORM's unit of work cost more CPU than the rest of the receive path; on SQLite they run on the
    DBAPI cursor (``precompiled_sql``). ``studies`` caches study row ids between calls.
    """
    conn = PrecompiledConnection(db if isinstance(db, Connection) else db.connection())
    existing = conn.execute(_SELECT_VERSIONS, {"p_sop": header.sop_instance_uid}).all()
    for row in existing:
        if row.sha256 == sha:
            return Recorded(row.series_id, duplicate=True, new_version=False, reopened=False, complete_by_count=False)

    study_id = _study_id(conn, header, now, studies)
    pg = conn.dialect.name == "postgresql"
    found = conn.execute(_SELECT_SERIES_LOCKED if pg else _SELECT_SERIES, {"p_uid": header.series_uid}).one_or_none()
    inserted: int | None = None
    if found is None:
        values = _series_values(header, study_id, calling_ae, now, received=0 if existing else 1)
        if pg:
            inserted = conn.execute(_INSERT_SERIES_PG, values).scalar_one_or_none()
            if inserted is None:  # another receiver inserted it meanwhile: continue as an existing series
                found = conn.execute(_SELECT_SERIES_LOCKED, {"p_uid": header.series_uid}).one()
        else:
            inserted = conn.execute(_INSERT_SERIES, values).inserted_primary_key[0]
    if pg and found is not None:
        # Under the series lock: another receiver may have stored this very instance since the first look.
        existing = conn.execute(_SELECT_VERSIONS, {"p_sop": header.sop_instance_uid}).all()
        for row in existing:
            if row.sha256 == sha:
                return Recorded(
                    row.series_id, duplicate=True, new_version=False, reopened=False, complete_by_count=False
                )
    reopened = False
    increment = 0 if existing else 1
    if found is None:
        assert inserted is not None
        series_id = int(inserted)
        expected, received = header.expected_instances, increment
    else:
        series_id = int(found.id)
        expected = found.expected_instances or header.expected_instances
        received = found.received_instances + increment
        reopened = found.state == SeriesState.COMPLETE.value
        conn.execute(
            _REOPEN_SERIES if reopened else _UPDATE_SERIES,
            {"p_id": series_id, "p_now": now, "p_received": received, "p_expected": expected},
        )

    if existing:
        conn.execute(_SUPERSEDE, [{"p_id": r.id} for r in existing])
    conn.execute(_INSERT_INSTANCE, _instance_values(header, series_id, rel_path, size, sha, now))
    complete = bool(expected) and received >= (expected or 0)
    return Recorded(
        series_id, duplicate=False, new_version=bool(existing), reopened=reopened, complete_by_count=complete
    )


class RowByRow(Exception):
    """``record_group_pg`` cannot record this group in one pass; record it instance by instance instead."""


@dataclass
class _SeriesRow:
    id: int
    state: str
    expected: int | None
    received: int
    changed: bool = False
    reopened: bool = False


def record_group_pg(
    conn: Connection,
    group: Sequence[Pending],
    now: dt.datetime,
    studies: RowIds[tuple[int, dt.datetime]],
    series_ids: RowIds[int],
) -> None:
    """Record every instance of ``group`` in the caller's transaction in two round trips to the server (and the
    commit's), whatever its size, and set each item's ``result`` as ``record_instance`` one after the other would
    (duplicates, new versions, a completed series reopened, the declared size reached).

    On PostgreSQL each statement is a round trip to a server that the other receive processes share, and
    ``record_instance`` takes eight per instance. Here they go out in two psycopg pipelines. The first locks the
    group's series rows (inserting the study and series rows that ``studies`` and ``series_ids`` do not know yet) and
    reads the earlier versions of its instances; the second writes the superseded versions, the new rows and one
    update per series. The series row stays locked from the first pipeline to the commit, so no other receiver
    counts the same instances or completes the series in between; a known study's ``last_received_at`` moves at most
    every ``STUDY_TOUCH_INTERVAL``. Rows are locked in one global order (studies, then series, each by UID), so two
    receivers never deadlock.

    Raises ``RowByRow`` (the caller's transaction is then rolled back) for what it does not handle: one SOP Instance
    UID twice in the group, a series that reaches its declared size before the group's last instance of it, or a
    remembered row that is gone.
    """
    import psycopg

    sops = [p.header.sop_instance_uid for p in group]
    if len(set(sops)) != len(sops):
        raise RowByRow("one SOP Instance UID twice in the group")
    first: dict[str, Pending] = {}
    for p in group:
        first.setdefault(p.header.series_uid, p)
    dialect = conn.dialect

    def run(
        cursor: psycopg.Cursor[Any], stmt: Any, values: dict[str, Any], keys: Sequence[str] = (), prepare: bool = True
    ) -> None:
        sql = pg_compiled(stmt, dialect, keys)
        cursor.execute(sql.sql, sql.params(values), prepare=None if prepare else False)

    raw = cast("psycopg.Connection[Any]", conn.connection.driver_connection)
    try:
        with raw.pipeline():
            new_studies = {}
            for p in sorted({p.header.study_uid: p for p in group}.values(), key=lambda p: p.header.study_uid):
                known = studies.get(p.header.study_uid)
                if known is None:  # reading the attributes of a new row costs more CPU than the rest of the group
                    values = _study_values(p.header, now)
                    new_studies[p.header.study_uid] = cursor = raw.cursor()
                    run(cursor, _UPSERT_STUDY_PG, values, list(values))
                elif now - known[1] >= STUDY_TOUCH_INTERVAL:
                    run(raw.cursor(), _TOUCH_STUDY, {"p_id": known[0], "p_now": now})
                    studies.put(p.header.study_uid, (known[0], now))
            series_cursors = {}
            for uid in sorted(first):
                p = first[uid]
                series_cursors[uid] = cursor = raw.cursor()
                known_id = series_ids.get(uid)
                if known_id is None:
                    values = _series_values(p.header, 0, p.calling_ae, now, received=0)
                    del values["study_id"]  # the subquery finds the study inserted or touched just before
                    run(cursor, _UPSERT_SERIES_PG, {**values, "p_study_uid": p.header.study_uid}, list(values))
                else:
                    run(cursor, _LOCK_SERIES_PG, {"p_id": known_id})
            versions_cursor = raw.cursor()
            # Planned for its values each time, never prepared: a prepared statement's generic plan, made while the
            # table was small, scans the whole table even once it holds thousands of rows (until the next ANALYZE).
            run(versions_cursor, _SELECT_GROUP_VERSIONS, {"p_sops": sops}, prepare=False)

            for uid, cursor in new_studies.items():  # the first fetch sends the pipeline and waits for it
                studies.put(uid, (int(cast(tuple[Any, ...], cursor.fetchone())[0]), now))
            series: dict[str, _SeriesRow] = {}
            for uid, cursor in series_cursors.items():
                found = cursor.fetchone()
                if found is None:
                    series_ids.drop(uid)
                    raise RowByRow("a remembered series row is gone")
                row_id, state, expected, received = found
                series[uid] = _SeriesRow(int(row_id), state, expected, received)
                series_ids.put(uid, int(row_id))
            versions: dict[str, list[tuple[int, int, str]]] = {}
            for row_id, series_id, sha, sop in versions_cursor.fetchall():
                versions.setdefault(sop, []).append((int(row_id), int(series_id), sha))
            stored, superseded, completing = _apply_group(group, series, versions)

            cursor = raw.cursor()
            if superseded:
                sql = pg_compiled(_SUPERSEDE, dialect)
                cursor.executemany(sql.sql, [sql.params({"p_id": i}) for i in superseded])
            if stored:
                rows = [
                    _instance_values(p.header, cast(Recorded, p.result).series_id, p.rel, p.size, p.sha, now)
                    for p in stored
                ]
                sql = pg_compiled(_INSERT_INSTANCE, dialect, list(rows[0]))
                cursor.executemany(sql.sql, [sql.params(r) for r in rows])
            for uid in sorted(series):
                s = series[uid]
                if s.changed:
                    values = {"p_id": s.id, "p_now": now, "p_received": s.received, "p_expected": s.expected}
                    run(cursor, _REOPEN_SERIES if s.reopened else _COUNT_SERIES_PG, values)
        # Leaving the pipeline sent the rest and waited for it.
    except psycopg.Error as exc:  # as SQLAlchemy would raise it, so the caller sees one family of errors
        raise DBAPIError.instance(None, None, exc, psycopg.Error, dialect=dialect) from exc
    for p in completing:
        _complete_by_count(conn, cast(Recorded, p.result).series_id, now)


def _apply_group(
    group: Sequence[Pending], series: dict[str, _SeriesRow], versions: dict[str, list[tuple[int, int, str]]]
) -> tuple[list[Pending], list[int], list[Pending]]:
    """What ``record_instance`` would do to each item of ``group`` in turn, given its series' rows and its earlier
    versions: sets each ``result`` and the series' new counts. -> (items to insert, versions they supersede, items
    whose series reaches its declared size)."""
    stored: list[Pending] = []
    for p in group:
        old = versions.get(p.header.sop_instance_uid, [])
        same = next((series_id for _, series_id, sha in old if sha == p.sha), None)
        if same is not None:
            p.result = Recorded(same, duplicate=True, new_version=False, reopened=False, complete_by_count=False)
        else:
            stored.append(p)
    last_of_series = {p.header.series_uid: p for p in stored}
    superseded: list[int] = []
    completing: list[Pending] = []
    for p in stored:
        s = series[p.header.series_uid]
        old = versions.get(p.header.sop_instance_uid, [])
        reopened = s.state == SeriesState.COMPLETE.value
        if reopened:
            s.state, s.reopened = SeriesState.RECEIVING.value, True
        s.changed = True
        s.received += 0 if old else 1
        s.expected = s.expected or p.header.expected_instances
        complete = bool(s.expected) and s.received >= (s.expected or 0)
        if complete:
            if last_of_series[p.header.series_uid] is not p:
                raise RowByRow("a series reaches its declared size before the group's last instance of it")
            completing.append(p)
        superseded.extend(version_id for version_id, _, _ in old)
        p.result = Recorded(s.id, duplicate=False, new_version=bool(old), reopened=reopened, complete_by_count=complete)
    return stored, superseded, completing


def _complete_by_count(conn: Connection, series_id: int, now: dt.datetime) -> None:
    # A session inside the caller's transaction: its commit releases its own savepoint.
    with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
        series = session.get(Series, series_id)
        assert series is not None
        complete_series(session, series, now, "declared size reached")
        session.commit()


@dataclass(eq=False)
class Pending:
    """One instance whose file and folder entry are durable, waiting for its row's commit."""

    header: Header
    rel: str
    size: int
    sha: str
    calling_ae: str
    done: threading.Event = field(default_factory=threading.Event)
    result: Recorded | None = None
    error: BaseException | None = None


class GroupCommitter:
    """Commits received instances' rows in groups, with no thread of its own (leader-based group commit).

    The association thread whose instance arrives while nothing is being committed commits it itself, at once (on
    PostgreSQL after a short wait for instances other associations are about to hand in, see ``JOIN_WAIT_MAX_S``):
    on one association no instance ever crosses to another thread. Instances that arrive while a commit is running
    wait; when it ends, one of their threads becomes the next leader and commits all of them together: all rows go
    into one transaction (a savepoint each, so one bad row fails alone), and then every sender in the group is
    released. Files and folder entries are made durable before, by each association's thread in parallel
    (``Incoming.keep``), so each sender gets its status only after its file, its folder entry and its row are on
    disk; the commit, the one serial step, holds no other flush.
    """

    MAX_GROUP = 64
    # On PostgreSQL a leader waits for the instances whose files other associations are making durable at that
    # moment (``announce``), so they join its group instead of forming the next one: each commit is a round trip
    # to a server the other receive processes share, and an instance that missed the group would wait for that
    # whole commit and then make its own. It waits at most as long as a commit has been taking (a running average),
    # and never longer than this. (On SQLite, where a commit is a local fsync, it measured no better: not done.)
    JOIN_WAIT_MAX_S = 0.01

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], dt.datetime]):
        self.sessions = sessions
        self.clock = clock
        self._conn: Connection | None = None
        self.studies: RowIds[int] = RowIds()
        # PostgreSQL's group path only: study UID -> (row id, last touched), series UID -> row id
        self.pg_studies: RowIds[tuple[int, dt.datetime]] = RowIds()
        self.series_ids: RowIds[int] = RowIds()
        lock = threading.RLock()
        self._cond = threading.Condition(lock)
        self._joined = threading.Condition(lock)  # only a leader waiting for joiners waits on it
        self._pending: list[Pending] = []
        self._leading = False
        self._arriving = 0  # instances between their file's fsync and commit()
        self._joining = False  # a leader waits for them
        self._commit_s = 0.0  # how long a group's commit takes, a running average
        self._running = False
        self.groups = 0  # how many commits, for the bench and tests
        self.committed = 0

    def start(self) -> None:
        with self._cond:
            self._running = True

    def stop(self, timeout_s: float = 30.0) -> None:
        """Refuse new instances, then wait for the group being committed (if any) and the ones queued behind it."""
        with self._cond:
            self._running = False
            self._cond.wait_for(lambda: not self._leading and not self._pending, timeout=timeout_s)
            self._drop_connection()

    def announce(self) -> None:
        """One instance's file is being made durable and its ``commit`` follows (or ``withdraw`` if that fails): a
        leader that starts a group meanwhile waits for it (see ``JOIN_WAIT_MAX_S``)."""
        with self._cond:
            self._arriving += 1

    def withdraw(self) -> None:
        with self._cond:
            self._arriving -= 1
            if self._joining:
                self._joined.notify()

    def commit(self, item: Pending, announced: bool = False) -> Recorded:
        """Make ``item`` durable (leading a group or waiting in one); raises what recording it raised."""
        with self._cond:
            if announced:
                self._arriving -= 1
                if self._joining:
                    self._joined.notify()
            if not self._running:
                raise OSError("the receive committer is not running")
            self._pending.append(item)
            while not item.done.is_set():
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                try:
                    self._wait_for_joiners()
                    group = self._pending[: self.MAX_GROUP]
                    del self._pending[: self.MAX_GROUP]
                    self._cond.release()
                    try:
                        started = time.monotonic()
                        self._commit_group(group)
                        self._commit_s += (time.monotonic() - started - self._commit_s) / 8
                    finally:
                        self._cond.acquire()
                finally:
                    self._leading = self._joining = False
                    self._cond.notify_all()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

    @functools.cached_property
    def join_arrivals(self) -> bool:
        """Whether a leader waits for announced instances: on PostgreSQL only."""
        return cast(Engine, self.sessions.kw["bind"]).dialect.name == "postgresql"

    def _wait_for_joiners(self) -> None:
        """The leader, holding the lock: wait for announced instances (PostgreSQL), at most ``_commit_s`` and never
        longer than ``JOIN_WAIT_MAX_S``."""
        if not (self._arriving and self.join_arrivals):
            return
        self._joining = True
        deadline = time.monotonic() + min(self._commit_s, self.JOIN_WAIT_MAX_S)
        while self._arriving and len(self._pending) < self.MAX_GROUP:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._joined.wait(left)
        self._joining = False

    def _forget(self) -> None:
        """Drop the remembered row ids: a rolled-back transaction may have inserted some of them."""
        self.studies, self.pg_studies, self.series_ids = RowIds(), RowIds(), RowIds()

    def _connection(self) -> Connection:
        """The committer's own connection, kept between groups: a session and a pooled connection per group cost
        more CPU than recording the rows. Only the leader uses it, so one at a time."""
        if self._conn is None or self._conn.closed or self._conn.invalidated:
            self._conn = cast(Engine, self.sessions.kw["bind"]).connect()
        return self._conn

    def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError):
                self._conn.close()
        self._conn = None

    def _commit_group(self, group: list[Pending]) -> None:
        try:
            now = self.clock()
            alone = len(group) == 1  # no savepoint needed: if its row fails, the whole transaction is its own
            conn = self._connection()
            if conn.dialect.name == "postgresql":
                # Other receive processes write the same tables: rows are locked in one global order (study, series)
                # so two groups never deadlock; a conflict that still happens (deadlock, a row another process
                # inserted) rolls the group back and it is recorded again, up to three times.
                group.sort(key=lambda p: (p.header.study_uid, p.header.series_uid))
                for attempt in range(3):
                    try:
                        self._record_group_at_once(conn, group, now, alone)
                        break
                    except DBAPIError as exc:
                        if attempt == 2 or getattr(exc.orig, "sqlstate", None) not in RETRY_SQLSTATES:
                            raise
                        self._forget()
                        for p in group:
                            p.result, p.error = None, None
                        log.info("receive group of %d rolled back (%s), recording it again", len(group),
                                 getattr(exc.orig, "sqlstate", None))
            else:
                self._record_group(conn, group, now, alone)
            self.groups += 1
            self.committed += sum(1 for p in group if p.error is None)
        except (OSError, SQLAlchemyError, ValueError, TypeError, KeyError) as exc:  # nobody in the group is stored
            self._forget()
            if isinstance(exc, SQLAlchemyError):
                self._drop_connection()  # a broken connection must not serve the next group
            for p in group:
                p.result, p.error = None, exc
        except Exception as exc:
            self._forget()
            self._drop_connection()
            for p in group:
                p.result, p.error = None, exc
        finally:
            for p in group:
                p.done.set()

    def _record_group_at_once(self, conn: Connection, group: list[Pending], now: dt.datetime, alone: bool) -> None:
        """PostgreSQL: the group in a fixed number of round trips (``record_group_pg``). When that cannot take it,
        or one of its rows fails for a reason a retry would not cure, instance by instance with a savepoint each,
        so a bad row fails alone."""
        try:
            with conn.begin():
                record_group_pg(conn, group, now, self.pg_studies, self.series_ids)
            return
        except RowByRow as exc:
            self._forget()
            log.debug("receive group of %d recorded row by row: %s", len(group), exc)
        except (SQLAlchemyError, ValueError, TypeError, KeyError) as exc:
            self._forget()
            if _retryable(exc) or isinstance(exc, OperationalError) or alone:
                raise
            log.info("receive group of %d failed at once (%s); recording it row by row", len(group),
                     type(exc).__name__)
        for p in group:
            p.result, p.error = None, None
        self._record_group(conn, group, now, alone)

    def _record_group(self, conn: Connection, group: list[Pending], now: dt.datetime, alone: bool) -> None:
        with conn.begin():  # BEGIN IMMEDIATE on SQLite (worklist.db); committed at the end of the block
            for p in group:
                try:
                    with contextlib.nullcontext() if alone else conn.begin_nested():
                        p.result = record_instance(
                            conn, p.header, p.rel, p.size, p.sha, p.calling_ae, now, self.studies
                        )
                        if p.result.complete_by_count:
                            _complete_by_count(conn, p.result.series_id, now)
                except (SQLAlchemyError, ValueError, TypeError, KeyError) as exc:
                    self._forget()  # a rolled-back insert may have left a cached id behind
                    if alone or _retryable(exc):
                        raise  # rolls the transaction back; the caller retries it or reports it
                    p.result, p.error = None, exc


# PostgreSQL: deadlock detected, serialization failure, unique violation (a row another receiver inserted first).
RETRY_SQLSTATES = frozenset({"40P01", "40001", "23505"})


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in RETRY_SQLSTATES
