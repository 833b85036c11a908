"""Engine creation (SQLite in WAL mode with a busy timeout by default), sessions, and Alembic migrations."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit is on disk when it returns; the C-STORE success status depends on that.
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; for SQLite the parent folder is created and WAL, FULL sync and a busy timeout are set."""
    parsed = make_url(url)
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        # pysqlite's own BEGIN handling defers locks; take the write lock at BEGIN so two writers never deadlock
        # on a lock upgrade (SQLAlchemy's documented recipe).
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _connect(dbapi_conn: Any, record: Any) -> None:
            dbapi_conn.isolation_level = None
            _sqlite_pragmas(dbapi_conn, record)

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # A read-only unit of work (read_transaction) begins DEFERRED: in WAL mode it reads a snapshot and
            # never waits for, or holds up, the receive path's commits.
            conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

        return engine
    if parsed.get_backend_name() == "postgresql":
        # psycopg 3 whatever the URL names (postgresql://, postgresql+psycopg://); READ COMMITTED, PostgreSQL's own
        # default: claims lock their rows (FOR UPDATE SKIP LOCKED), counters are updated under a row lock.
        return create_engine(
            parsed.set(drivername="postgresql+psycopg"),
            pool_pre_ping=True,
            pool_size=8,
            max_overflow=16,
            connect_args={"connect_timeout": 10},
        )
    return create_engine(url, pool_pre_ping=True)


def is_postgres(bind: Any) -> bool:
    """True for a PostgreSQL engine, connection or session (the shared, multi-node database)."""
    dialect = getattr(bind, "dialect", None) or bind.get_bind().dialect
    return bool(dialect.name == "postgresql")


# The newest Alembic revision in migrations/versions (a test holds the two equal). A database already at it needs no
# Alembic at all, which keeps the operator commands (worklist, resend, user) quick to start.
HEAD_REVISION = "0006"


def at_head(engine: Engine) -> bool:
    """True when the schema is at HEAD_REVISION (read from alembic_version without importing Alembic)."""
    with engine.connect().execution_options(**{READ_ONLY: True}) as conn:
        if not inspect(conn).has_table("alembic_version"):
            return False
        return set(conn.execute(text("SELECT version_num FROM alembic_version")).scalars()) == {HEAD_REVISION}


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (creates it on an empty database)."""
    if at_head(engine):
        return
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Several nodes may start at once on one database: one migrates, the others wait here and find it done.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


MIGRATION_LOCK = 0x7472_6961  # "tria": the advisory lock key the nodes' migrations take on PostgreSQL


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    with factory() as session, session.begin():
        yield session


READ_ONLY = "triage_node_read_only"


@contextmanager
def read_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A consistent read (one snapshot) that takes no write lock on SQLite, for the web pages and the API: a page
    polled every few seconds must not queue behind, or delay, the commits that C-STORE success statuses wait for.
    Nothing written in it is committed."""
    with factory() as session:
        session.connection(execution_options={READ_ONLY: True})
        try:
            yield session
        finally:
            session.rollback()
