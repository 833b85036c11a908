"""Fixtures for the notification tests: a migrated database on each backend, an HTTP receiver, an SMTP sink."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from notify_fixtures import Receiver, Sink, start_receiver, start_smtp
from sqlalchemy.orm import Session, sessionmaker

from triage_node.worklist.db import make_engine, migrate, session_factory


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    """A migrated database on each backend (``db_url``): the notification tests run on both."""
    engine = make_engine(db_url)
    migrate(engine)
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
