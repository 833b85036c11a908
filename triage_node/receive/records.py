"""The worklist rows of received instances: ``record_instance`` records one in the caller's transaction, and the
``GroupCommitter`` commits the rows of instances arriving on many associations in shared transactions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from sqlalchemy import Connection, Engine, Table, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from triage_node.receive.header import Header
from triage_node.receive.precompiled_sql import PrecompiledConnection
from triage_node.series.completion import complete_series
from triage_node.worklist.models import Instance, Priority, Series, SeriesState, Study

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recorded:
    """What recording one instance did to the worklist."""

    series_id: int
    duplicate: bool  # same SOP Instance UID and same bytes as before: nothing new was stored
    new_version: bool  # same SOP Instance UID with different bytes: the older version is superseded
    reopened: bool  # the series had completed; this instance reopened it as a new version
    complete_by_count: bool  # the series now holds as many instances as it declares


class StudyIds:
    """Study UID -> row id, remembered across instances so the hot path skips a lookup per instance.

    An entry is only a hint: the caller's UPDATE of the row must touch exactly one row, else the entry is dropped and
    the study looked up again. Bounded: cleared when it grows past ``limit``.
    """

    def __init__(self, limit: int = 4096):
        self.limit = limit
        self._ids: dict[str, int] = {}
        self._lock = threading.Lock()

    def get(self, uid: str) -> int | None:
        return self._ids.get(uid)

    def put(self, uid: str, row_id: int) -> None:
        with self._lock:
            if len(self._ids) >= self.limit:
                self._ids.clear()
            self._ids[uid] = row_id

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


def _study_id(conn: PrecompiledConnection, header: Header, now: dt.datetime, cache: StudyIds | None) -> int:
    cached = cache.get(header.study_uid) if cache else None
    if cached is not None:
        if conn.execute(_TOUCH_STUDY, {"p_id": cached, "p_now": now}).rowcount == 1:
            return cached
        assert cache is not None
        cache.drop(header.study_uid)
    row_id = conn.execute(_SELECT_STUDY, {"p_uid": header.study_uid}).scalar_one_or_none()
    pg = conn.dialect.name == "postgresql"
    if row_id is None:
        values = {
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
    studies: StudyIds | None = None,
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
        values = {
            "study_id": study_id,
            "series_instance_uid": header.series_uid,
            "modality": header.modality,
            "series_number": header.series_number,
            "series_description": header.series_description,
            "body_part": header.body_part,
            "calling_ae": calling_ae,
            "expected_instances": header.expected_instances,
            "received_instances": 0 if existing else 1,
            "first_received_at": now,
            "last_received_at": now,
            "state": SeriesState.RECEIVING.value,
            "version": 1,
        }
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
    conn.execute(
        _INSERT_INSTANCE,
        {
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
        },
    )
    complete = bool(expected) and received >= (expected or 0)
    return Recorded(
        series_id, duplicate=False, new_version=bool(existing), reopened=reopened, complete_by_count=complete
    )


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

    The association thread whose instance arrives while nothing is being committed commits it itself, at once: on
    one association no instance ever crosses to another thread. Instances that arrive while a commit is running
    wait; when it ends, one of their threads becomes the next leader and commits all of them together: all rows go
    into one transaction (a savepoint each, so one bad row fails alone), and then every sender in the group is
    released. Files and folder entries are made durable before, by each association's thread in parallel
    (``Incoming.keep``), so each sender gets its status only after its file, its folder entry and its row are on
    disk; the commit, the one serial step, holds no other flush.
    """

    MAX_GROUP = 64

    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], dt.datetime]):
        self.sessions = sessions
        self.clock = clock
        self._conn: Connection | None = None
        self.studies = StudyIds()
        self._cond = threading.Condition()
        self._pending: list[Pending] = []
        self._leading = False
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

    def commit(self, item: Pending) -> Recorded:
        """Make ``item`` durable (leading a group or waiting in one); raises what recording it raised."""
        with self._cond:
            if not self._running:
                raise OSError("the receive committer is not running")
            self._pending.append(item)
            while not item.done.is_set():
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                group = self._pending[: self.MAX_GROUP]
                del self._pending[: self.MAX_GROUP]
                self._cond.release()
                try:
                    self._commit_group(group)
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._cond.notify_all()
        if item.error is not None:
            raise item.error
        assert item.result is not None
        return item.result

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
                        self._record_group(conn, group, now, alone)
                        break
                    except DBAPIError as exc:
                        if attempt == 2 or getattr(exc.orig, "sqlstate", None) not in RETRY_SQLSTATES:
                            raise
                        self.studies = StudyIds()
                        for p in group:
                            p.result, p.error = None, None
                        log.info("receive group of %d rolled back (%s), recording it again", len(group),
                                 getattr(exc.orig, "sqlstate", None))
            else:
                self._record_group(conn, group, now, alone)
            self.groups += 1
            self.committed += sum(1 for p in group if p.error is None)
        except (OSError, SQLAlchemyError, ValueError, TypeError, KeyError) as exc:  # nobody in the group is stored
            self.studies = StudyIds()
            if isinstance(exc, SQLAlchemyError):
                self._drop_connection()  # a broken connection must not serve the next group
            for p in group:
                p.result, p.error = None, exc
        except Exception as exc:
            self._drop_connection()
            for p in group:
                p.result, p.error = None, exc
        finally:
            for p in group:
                p.done.set()

    def _record_group(self, conn: Connection, group: list[Pending], now: dt.datetime, alone: bool) -> None:
        with conn.begin():  # BEGIN IMMEDIATE on SQLite (worklist.db); committed at the end of the block
            for p in group:
                try:
                    with contextlib.nullcontext() if alone else conn.begin_nested():
                        p.result = record_instance(
                            conn, p.header, p.rel, p.size, p.sha, p.calling_ae, now, self.studies
                        )
                        if p.result.complete_by_count:
                            # A session inside this transaction: its commit releases its own savepoint.
                            with Session(bind=conn, join_transaction_mode="create_savepoint") as session:
                                series = session.get(Series, p.result.series_id)
                                assert series is not None
                                complete_series(session, series, now, "declared size reached")
                                session.commit()
                except (SQLAlchemyError, ValueError, TypeError, KeyError) as exc:
                    self.studies = StudyIds()  # a rolled-back insert may have left a cached id behind
                    if alone or _retryable(exc):
                        raise  # rolls the transaction back; the caller retries it or reports it
                    p.result, p.error = None, exc


# PostgreSQL: deadlock detected, serialization failure, unique violation (a row another receiver inserted first).
RETRY_SQLSTATES = frozenset({"40P01", "40001", "23505"})


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) in RETRY_SQLSTATES
