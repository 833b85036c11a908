"""Database helpers: writers take the SQLite write lock at BEGIN; a read transaction takes none, sees a snapshot."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import func, select

from triage_node.worklist.db import make_engine, migrate, read_transaction, session_factory, transaction
from triage_node.worklist.models import AuditEntry


@pytest.mark.timeout(20)
def test_a_read_neither_waits_for_nor_blocks_a_writer(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
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


def test_nothing_written_in_a_read_transaction_is_kept(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    sessions = session_factory(engine)
    with read_transaction(sessions) as reader:
        reader.add(AuditEntry(user="a", action="login", at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)))
    with read_transaction(sessions) as reader:
        assert reader.scalar(select(func.count()).select_from(AuditEntry)) == 0
    engine.dispose()


def test_head_revision_is_the_newest_migration_and_a_current_database_needs_no_alembic(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    from triage_node.worklist.db import HEAD_REVISION, MIGRATIONS, at_head

    assert ScriptDirectory(str(MIGRATIONS)).get_current_head() == HEAD_REVISION
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert not at_head(engine)
    migrate(engine)
    assert at_head(engine)
    migrate(engine)  # a no-op at head
    engine.dispose()
