"""Fixtures for the notification tests: a migrated database (copied per test), an HTTP receiver, an SMTP sink."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from notify_fixtures import Receiver, Sink, start_receiver, start_smtp
from sqlalchemy.orm import Session, sessionmaker

from triage_node.worklist.db import make_engine, migrate, session_factory


@pytest.fixture(scope="session")
def empty_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("notify-db") / "empty.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    engine.dispose()
    return path


@pytest.fixture
def sessions(empty_db: Path, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    path = tmp_path / "notify.db"
    shutil.copy(empty_db, path)
    engine = make_engine(f"sqlite:///{path}")
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    server = start_receiver(rec)
    yield rec
    server.shutdown()
    server.server_close()


@pytest.fixture
def smtp() -> Iterator[Sink]:
    sink = Sink()
    controller = start_smtp(sink)
    yield sink
    controller.stop()
