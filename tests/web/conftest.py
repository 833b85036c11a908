"""Fixtures for the web tests: a seeded worklist, a config with one user, a settable clock, the app and a client;
for the browser tests the app under uvicorn and Debian's Chromium (Playwright)."""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from peers import require, wait_for
from web_fixtures import PASSWORD, T0, USER, Clock, Seeded, login, reopen, seed

from triage_node.config import Config
from triage_node.web import WebContext, create_app


@pytest.fixture(scope="session")
def password_hash() -> str:
    """A deliberately cheap argon2 hash so that logging in does not dominate the test time."""
    return PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(PASSWORD)


SEEDED_DB = "web_seeded"  # the seeded PostgreSQL database each test's database is copied from


@pytest.fixture(params=["sqlite", "postgresql"])
def web_backend(request: pytest.FixtureRequest) -> str:
    """The database the seeded worklist lives in: the web tests run on both (a module may override this)."""
    return str(request.param)


@pytest.fixture(scope="session")
def seeded_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrating and seeding once; each test gets a copy of the folder, its SQLite file included (every path inside
    is relative to the folder)."""
    folder = tmp_path_factory.mktemp("seeded")
    data = seed(folder)
    data.sessions.kw["bind"].dispose()
    return folder


@pytest.fixture(scope="session")
def seeded_postgresql(tmp_path_factory: pytest.TempPathFactory, postgres: Any) -> Path:
    """The same, seeded once into a PostgreSQL database that each test's database is copied from (TEMPLATE)."""
    folder = tmp_path_factory.mktemp("seeded-pg")
    data = seed(folder, postgres.create_database(SEEDED_DB))
    data.sessions.kw["bind"].dispose()
    return folder


@pytest.fixture
def seeded(web_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Seeded]:
    template = request.getfixturevalue(f"seeded_{web_backend}")
    folder = tmp_path / "copy"
    shutil.copytree(template, folder)
    with contextlib.ExitStack() as stack:
        url = None
        if web_backend == "postgresql":
            url = stack.enter_context(request.getfixturevalue("postgres").database(template=SEEDED_DB))
        data = reopen(folder, url)
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


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def base_url(app: FastAPI) -> Iterator[str]:
    """The app under uvicorn in a thread, on a free loopback port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn-test", daemon=True)
    thread.start()
    wait_for(lambda: server.started, timeout=20, what="uvicorn to start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=20)
    sock.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    require(CHROMIUM.exists(), f"{CHROMIUM} is not installed (apt install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "python playwright is not installed")
        raise
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
