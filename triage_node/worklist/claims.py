"""Several nodes on one database: claims with leases and a heartbeat, fencing, wake-ups, the shared spool's identity.

A node (one ``triage-node serve`` process) claims a queued job in one short transaction: on PostgreSQL the row is
picked with ``SELECT ... FOR UPDATE SKIP LOCKED`` (two nodes never wait on, or take, the same row), on SQLite the
write lock taken at ``BEGIN IMMEDIATE`` serializes claimers. The claim writes the node's name, a lease
(``lease_until``) and a new claim number (``claim_token``). While the job runs, the node's ``Heartbeat`` thread extends
the lease; when the node dies the lease runs out and another node's claim takes the job over. Every commit the
pipeline makes for the job first checks, under a row lock, that the job is still ``processing`` under this node's
claim number (``fence``): a node that lost its claim (it stalled past its lease and the job was taken over) commits
nothing and drops its work. The result UIDs are the job's own, so whichever node builds the SEG/SR, the PACS receives
the same objects.

Outbox rows are claimed the same way (``send/outbox.py``): ``sending`` with a lease; past it, another sender takes them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select, text, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from triage_node.worklist.db import is_postgres, transaction
from triage_node.worklist.models import ClusterSetting, Job, JobState, OutboxItem, OutboxState

log = logging.getLogger(__name__)

JOBS_CHANNEL = "triage_node_jobs"
OUTBOX_CHANNEL = "triage_node_outbox"
DEFAULT_LEASE_S = 30.0


def new_node_name() -> str:
    """This process's name in ``claimed_by``: host, pid and a random part (a pid is reused after a restart)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class ClaimLost(RuntimeError):
    """The job is no longer this node's: its lease ran out and another node took it over (or an operator moved it)."""


@dataclass(frozen=True)
class Claim:
    job_id: int
    node: str
    token: int


def claim_job(session: Session, now: dt.datetime, node: str, lease_s: float) -> Job | None:
    """Claim the oldest due job: queued (``complete`` whose retry time has come) or ``processing`` under a lease that
    has run out (its node died). The row is taken with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL."""
    due = (
        (Job.state == JobState.COMPLETE.value)
        & ((Job.next_attempt_at.is_(None)) | (Job.next_attempt_at <= now))
    ) | ((Job.state == JobState.PROCESSING.value) & (Job.lease_until.is_not(None)) & (Job.lease_until < now))
    stmt = select(Job).where(due).order_by(Job.id).limit(1)
    if is_postgres(session):
        stmt = stmt.with_for_update(skip_locked=True)
    job = session.scalars(stmt).first()
    if job is None:
        return None
    if job.state == JobState.PROCESSING.value:
        log.warning("job %d: taken over from %s, whose lease ran out", job.id, job.claimed_by)
    job.state = JobState.PROCESSING.value
    job.started_at = job.updated_at = now
    job.attempts += 1
    job.claimed_by = node
    job.lease_until = now + dt.timedelta(seconds=lease_s)
    job.claim_token = (job.claim_token or 0) + 1
    session.flush()
    return job


def fence(session: Session, claim: Claim) -> None:
    """Raise ClaimLost unless ``claim`` still holds its job; on PostgreSQL the row stays locked until the caller's
    transaction ends, so no takeover can slip in between this check and the commit."""
    stmt = select(Job.state, Job.claimed_by, Job.claim_token).where(Job.id == claim.job_id)
    if is_postgres(session):
        stmt = stmt.with_for_update()
    row = session.execute(stmt).one_or_none()
    if row is None or row.state != JobState.PROCESSING.value or (row.claimed_by, row.claim_token) != (
        claim.node,
        claim.token,
    ):
        holder = "nobody" if row is None else f"{row.claimed_by} (claim {row.claim_token}, {row.state})"
        raise ClaimLost(f"job {claim.job_id}: claim {claim.token} of {claim.node} lost; now held by {holder}")


def notify(session: Session, channel: str) -> None:
    """Wake the nodes listening on ``channel`` when the caller's transaction commits (PostgreSQL NOTIFY; on SQLite
    nothing: the nodes' short poll finds the work)."""
    if is_postgres(session):
        session.execute(text(f"NOTIFY {channel}"))


class Heartbeat:
    """Extends the leases of the claims this node holds, every ``lease_s / 6`` seconds, in a thread of its own; a
    beat that finds a job no longer held marks it lost (``lost``). A beat that cannot reach the database is retried at
    the next one: an outage shorter than the lease loses nothing."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        node: str,
        lease_s: float,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ):
        self.sessions, self.node, self.lease_s, self.clock = sessions, node, lease_s, clock
        self._jobs: dict[int, Claim] = {}
        self._outbox: set[int] = set()
        self._lost: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="lease-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def hold_job(self, claim: Claim) -> None:
        with self._lock:
            self._jobs[claim.job_id] = claim
            self._lost.discard(claim.job_id)

    def release_job(self, job_id: int) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def lost(self, job_id: int) -> bool:
        with self._lock:
            return job_id in self._lost

    def hold_outbox(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._outbox.update(ids)

    def release_outbox(self, ids: Iterable[int]) -> None:
        with self._lock:
            self._outbox.difference_update(ids)

    def _run(self) -> None:
        interval = max(0.2, self.lease_s / 6)
        while not self._stop.wait(interval):
            try:
                self.beat()
            except SQLAlchemyError as exc:
                log.warning("lease heartbeat failed (retried in %.1f s): %s", interval, type(exc).__name__)

    def beat(self) -> None:
        with self._lock:
            jobs, outbox = list(self._jobs.values()), sorted(self._outbox)
        if not jobs and not outbox:
            return
        until = self.clock() + dt.timedelta(seconds=self.lease_s)
        lost = []
        with transaction(self.sessions) as s:
            for c in jobs:
                res = s.execute(
                    update(Job)
                    # No state condition: a job this node has just committed (results_ready) is still its own
                    # until released; only another node's claim (a new token) means the claim was lost.
                    .where(Job.id == c.job_id, Job.claimed_by == c.node, Job.claim_token == c.token)
                    .values(lease_until=until)
                    .execution_options(synchronize_session=False)
                )
                if res.rowcount == 0:  # type: ignore[attr-defined]
                    lost.append(c.job_id)
            if outbox:
                s.execute(
                    update(OutboxItem)
                    .where(
                        OutboxItem.id.in_(outbox),
                        OutboxItem.state == OutboxState.SENDING.value,
                        OutboxItem.claimed_by == self.node,
                    )
                    .values(lease_until=until)
                    .execution_options(synchronize_session=False)
                )
        self.beats += 1
        if lost:
            with self._lock:
                self._lost.update(lost)
            log.warning("lost the claim on job(s) %s: taken over by another node", lost)


class Listener:
    """LISTEN on PostgreSQL channels in a thread; each notification calls its channel's callback (a wake-up). The
    nodes poll as well, so a lost connection only delays work until the next poll; it reconnects."""

    def __init__(self, engine: Engine, callbacks: dict[str, Callable[[], None]]):
        self.conninfo = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self.callbacks = callbacks
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pg-listen", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, connect_timeout=5) as conn:
                    for channel in self.callbacks:
                        conn.execute(f"LISTEN {channel}")
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=1.0):
                            cb = self.callbacks.get(n.channel)
                            if cb is not None:
                                cb()
            except psycopg.Error as exc:
                log.debug("LISTEN connection lost (%s); polling until it is back", type(exc).__name__)
                self._stop.wait(2.0)


SPOOL_MARK = ".triage-node-spool-id"


class SpoolMismatch(RuntimeError):
    pass


def check_spool(sessions: sessionmaker[Session], spool_dir: Path) -> str:
    """The spool's identity, checked against the database's. The first node on an empty database (or one made
    before identities existed) writes a marker file into the spool and the same value into ``cluster_settings``; every
    later node must find that marker in its ``storage.spool_dir``, else SpoolMismatch says why (a node whose spool is
    a local folder, not the shared mount, would store files the others cannot read, or miss theirs)."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    marker = spool_dir / SPOOL_MARK
    for attempt in range(3):
        try:
            with transaction(sessions) as s:
                row = s.get(ClusterSetting, "spool_id")
                found = _read_marker(marker)
                if row is None:
                    value = found or _write_marker(marker)
                    s.add(ClusterSetting(key="spool_id", value=value))
                    log.info("spool %s registered with the database (spool id %s)", spool_dir, value)
                    return value
                if found == row.value:
                    return found
                what = f"it holds spool id {found}" if found else f"it has no {SPOOL_MARK} file"
                raise SpoolMismatch(
                    f"storage.spool_dir {spool_dir} is not the spool this database was created with: the database "
                    f"expects spool id {row.value}, {what}. Every node must mount the one shared spool there "
                    "(docs/operations.md, 'Multi-node deployment')"
                )
        except IntegrityError:  # another node registered at the same moment: read its value
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _read_marker(marker: Path) -> str | None:
    with contextlib.suppress(FileNotFoundError):
        return marker.read_text().strip() or None
    return None


def _write_marker(marker: Path) -> str:
    """Create the marker atomically (link fails if another node made one first; then theirs wins)."""
    value = uuid.uuid4().hex
    tmp = marker.with_name(f".{SPOOL_MARK}.{os.getpid()}.{value[:8]}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, (value + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, marker)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    dfd = os.open(marker.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    found = _read_marker(marker)
    assert found is not None
    return found
