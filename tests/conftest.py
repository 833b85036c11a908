"""Shared fixtures. Peers and data sets that are missing skip a test locally and fail it in CI (CI=true)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from peers import require

from triage_node.config import SCP
from triage_node.receive.scp import ReceiveHooks, StorageSCP
from triage_node.receive.spool import Spool
from triage_node.worklist.db import make_engine, migrate, session_factory


@pytest.fixture(scope="session")
def postgres() -> Iterator[object]:
    """One real PostgreSQL server for the whole session (tests/support/pgserver.py); skipped locally, failed with
    CI=true, when PostgreSQL is not installed."""
    from pgserver import start_server

    server = start_server()
    if isinstance(server, str):
        require(False, server)
    try:
        yield server
    finally:
        if not isinstance(server, str):
            server.stop("immediate")
            shutil.rmtree(server.folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL, once per backend: a fresh SQLite file, and a fresh database on the session's PostgreSQL
    (copied from a migrated template). The tests that take it run on both."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'triage.sqlite'}"
        return
    server = request.getfixturevalue("postgres")
    with server.database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Like ``db_url`` but not migrated: an empty database on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'db' / 'empty.sqlite'}"
        return
    server = request.getfixturevalue("postgres")
    with server.database(migrated=False) as url:
        yield url


@pytest.fixture(scope="session")
def head_ct():  # type: ignore[no-untyped-def]
    """The real head CT from Debian's invesalius-examples (HU int16, 108 x 256 x 256)."""
    from triage_lab.synth.headct import HeadCTUnavailable, load_head_ct

    try:
        return load_head_ct()
    except HeadCTUnavailable as exc:
        require(False, str(exc))


@pytest.fixture(scope="session")
def ct_series_100(tmp_path_factory: pytest.TempPathFactory, head_ct) -> list[Path]:  # type: ignore[no-untyped-def]
    """A 100-slice synthetic head CT series (real anatomy, synthetic identity), written once per session."""
    from triage_lab.synth.dicom import resample_slices, write_ct_series

    hu, spacing = resample_slices(head_ct.hu.astype(np.float32), head_ct.spacing, 100)
    return write_ct_series(tmp_path_factory.mktemp("ct100"), hu, spacing, seed=100)


@dataclass
class SCPEnv:
    scp: StorageSCP
    sessions: object
    spool: Spool
    engine: object

    @property
    def port(self) -> int:
        return self.scp.port


@pytest.fixture
def transport() -> str:
    """The receive transport (``scp.transport``) of the SCPs tests start; tests/receive and tests/reliability run
    their tests on both."""
    return "fast"


@pytest.fixture
def scp_backend() -> str:
    """The database of the SCP ``scp_env`` starts: SQLite, where the receive path's fast SQL path runs (SQLite's by
    design, receive/precompiled_sql.py; tests/receive/test_store.py records on both). A test parametrized with
    ``@pytest.mark.parametrize("scp_backend", ["sqlite", "postgresql"])`` runs on both."""
    return "sqlite"


@pytest.fixture
def scp_env(tmp_path: Path, transport: str, scp_backend: str, request: pytest.FixtureRequest) -> Iterator[SCPEnv]:
    """An in-process Storage SCP on a free loopback port with its own database (``scp_backend``) and spool."""
    with contextlib.ExitStack() as stack:
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
        if scp_backend == "postgresql":
            url = stack.enter_context(request.getfixturevalue("postgres").database())
        engine = make_engine(url)
        migrate(engine)
        sessions = session_factory(engine)
        spool = Spool(tmp_path / "spool")
        scp = StorageSCP(SCP(host="127.0.0.1", port=_free_port(), transport=transport), spool, sessions,
                         ReceiveHooks())
        scp.start()
        try:
            yield SCPEnv(scp, sessions, spool, engine)
        finally:
            scp.stop()
            engine.dispose()


def _free_port() -> int:
    from peers import free_port

    return free_port()
