"""Database helpers: writers take the SQLite write lock at BEGIN; a read transaction takes none, sees a snapshot."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from triage_node.worklist.db import make_engine, migrate, read_transaction, session_factory, transaction
from triage_node.worklist.models import AuditEntry


@pytest.mark.timeout(20)
def test_a_read_neither_waits_for_nor_blocks_a_writer(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with transaction(sessions) as s:
        s.add(AuditEntry(user="a", action="login", at=now))
    with transaction(sessions) as writer:  # holds the write lock until the block ends
        writer.add(AuditEntry(user="b", action="login", at=now))
        writer.flush()
        # With BEGIN IMMEDIATE this read would wait out the 30 s busy timeout; deferred, it reads the last commit.
        with read_transaction(sessions) as reader:
            assert reader.scalar(select(func.count()).select_from(AuditEntry)) == 1
    with read_transaction(sessions) as reader:
        assert reader.scalar(select(func.count()).select_from(AuditEntry)) == 2
        with transaction(sessions) as s:  # and a writer is not held up by an open read
            s.add(AuditEntry(user="c", action="login", at=now))
    engine.dispose()


def test_nothing_written_in_a_read_transaction_is_kept(db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    with read_transaction(sessions) as reader:
        reader.add(AuditEntry(user="a", action="login", at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)))
    with read_transaction(sessions) as reader:
        assert reader.scalar(select(func.count()).select_from(AuditEntry)) == 0
    engine.dispose()


def test_head_revision_is_the_newest_migration_and_a_current_database_needs_no_alembic(empty_db_url: str) -> None:
    from alembic.script import ScriptDirectory

    from triage_node.worklist.db import HEAD_REVISION, MIGRATIONS, at_head

    assert ScriptDirectory(str(MIGRATIONS)).get_current_head() == HEAD_REVISION
    engine = make_engine(empty_db_url)
    assert not at_head(engine)
    migrate(engine)
    assert at_head(engine)
    migrate(engine)  # a no-op at head
    engine.dispose()


def test_every_migration_goes_down_and_up_again(empty_db_url: str) -> None:
    """Alembic's whole history on both backends: upgrade to head, downgrade to nothing, upgrade again."""
    from alembic import command
    from alembic.config import Config as AlembicConfig
    from sqlalchemy import inspect

    from triage_node.worklist.db import MIGRATIONS, at_head

    engine = make_engine(empty_db_url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    for target, method in (("head", command.upgrade), ("base", command.downgrade), ("head", command.upgrade)):
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            method(cfg, target)
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
        assert ("jobs" in tables) == (target == "head"), target
    assert at_head(engine)
    engine.dispose()


def test_nodes_migrating_at_once_leave_one_schema(empty_db_url: str) -> None:
    """Several nodes start on one empty database at the same moment: one migrates, the others find it done."""
    import threading

    from triage_node.worklist.db import at_head

    engines = [make_engine(empty_db_url) for _ in range(3)]
    errors: list[BaseException] = []

    def run(engine):  # type: ignore[no-untyped-def]
        try:
            migrate(engine)
        except BaseException as exc:  # reported below
            errors.append(exc)

    if engines[0].dialect.name == "sqlite":
        engines = engines[:1]  # one file, one writer at a time: nothing to race
    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    assert all(at_head(e) for e in engines)
    for e in engines:
        e.dispose()


def test_the_migrated_schema_is_the_models_schema(empty_db_url: str) -> None:
    """Alembic's autogenerate comparison finds nothing to change between the migrations and the models (tables,
    columns, indexes, unique constraints) on both backends: a model edited without its migration fails here."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from triage_node.worklist.models import Base

    engine = make_engine(empty_db_url)
    migrate(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    engine.dispose()
    assert diff == []
