"""Fixtures for the web tests: a seeded worklist, a config with one user, a settable clock, the app and a client."""

from __future__ import annotations

import datetime as dt
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from web_fixtures import PASSWORD, T0, USER, Clock, Seeded, login, reopen, seed  # noqa: E402

from triage_node.config import Config  # noqa: E402
from triage_node.web import WebContext, create_app  # noqa: E402


@pytest.fixture(scope="session")
def password_hash() -> str:
    """A deliberately cheap argon2 hash so that logging in does not dominate the test time."""
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrating and seeding once; each test gets a copy (every path inside is relative to the folder)."""
    folder = tmp_path_factory.mktemp("seeded")
    data = seed(folder)
    data.sessions.kw["bind"].dispose()
    return folder


@pytest.fixture
def seeded(seeded_template: Path, tmp_path: Path) -> Iterator[Seeded]:
    folder = tmp_path / "copy"
    shutil.copytree(seeded_template, folder)
    data = reopen(folder)
    yield data
    data.sessions.kw["bind"].dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock(T0 + dt.timedelta(minutes=10))


@pytest.fixture
def config(password_hash: str) -> Config:
    return Config(
        web={
            "users": [{"name": USER, "password_hash": password_hash}],
            "secret_key": "test-secret",
            "session_timeout_min": 15,
            "poll_interval_s": 1,
        }
    )


@pytest.fixture
def app(seeded: Seeded, config: Config, clock: Clock) -> FastAPI:
    return create_app(WebContext(config=config, sessions=seeded.sessions, spool_dir=seeded.spool_dir, clock=clock))


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app, follow_redirects=False) as c:
        yield c


@pytest.fixture
def csrf(client: TestClient) -> str:
    return login(client)
