"""A real, throwaway PostgreSQL server for the tests: Debian's ``postgresql`` package, one cluster per test session in a
temporary folder, on a free port on 127.0.0.1 (and a Unix socket in the same folder). PostgreSQL refuses to run as
root, so as root the cluster belongs to the ``postgres`` user and its tools run through ``runuser``.

``database()`` hands each test a fresh database copied from a migrated template (``CREATE DATABASE ... TEMPLATE``),
which costs milliseconds instead of a migration. Missing PostgreSQL skips locally and fails with ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from peers import free_port

TEMPLATE = "triage_template"


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin folder (``/usr/lib/postgresql/N/bin``), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    if found:
        return found[-1].parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


@dataclass
class PostgresServer:
    bindir: Path
    folder: Path
    port: int = field(default_factory=free_port)
    _template_ready: bool = False

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        return self.folder / "postgres.log"

    def _as_owner(self, *args: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *args]
        return list(args)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def init(self) -> PostgresServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        subprocess.run(
            self._as_owner(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                           "-E", "UTF8", "--locale=C.UTF-8", "--no-sync"),
            check=True, capture_output=True, text=True,
        )
        return self

    def start(self, timeout: float = 60) -> PostgresServer:
        opts = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c max_connections=200 "
                "-c shared_buffers=64MB")
        subprocess.run(
            self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-o", opts,
                           "-w", "-t", str(int(timeout)), "start"),
            check=True, capture_output=True, text=True,
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        subprocess.run(
            self._as_owner(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"),
            capture_output=True, text=True,
        )

    def sql(self, statement: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database,
                             autocommit=True) as conn:
            conn.execute(statement)  # type: ignore[arg-type]

    def template(self) -> None:
        """A migrated database that ``database()`` copies."""
        if self._template_ready:
            return
        from sqlalchemy import create_engine

        from triage_node.worklist.db import migrate

        self.sql(f"CREATE DATABASE {TEMPLATE}")
        engine = create_engine(self.url(TEMPLATE))
        try:
            migrate(engine)
        finally:
            engine.dispose()
        self._template_ready = True

    def create_database(self, name: str) -> str:
        """A migrated database that stays for the session, e.g. a seeded template that ``database(template=name)``
        copies for each test (no connection may be open on it while it is copied). Returns its URL."""
        self.template()
        self.sql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        return self.url(name)

    @contextlib.contextmanager
    def database(self, migrated: bool = True, template: str | None = None) -> Iterator[str]:
        """A fresh database for one test (migrated, empty, or a copy of ``template``); dropped afterwards. Yields its
        URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        if template is not None:
            self.sql(f"CREATE DATABASE {name} TEMPLATE {template}")
        elif migrated:
            self.template()
            self.sql(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
        else:
            self.sql(f"CREATE DATABASE {name}")
        try:
            yield self.url(name)
        finally:
            with contextlib.suppress(Exception):
                self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = subprocess.run([str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                               capture_output=True)
            if r.returncode == 0:
                return
            time.sleep(0.1)
        raise TimeoutError("PostgreSQL did not come back")


def start_server() -> PostgresServer | str:
    """A started server, or why there is none."""
    bindir = pg_bindir()
    if bindir is None:
        return "PostgreSQL is not installed (apt install postgresql; `make test` installs it)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user to own the test cluster"
    folder = Path(tempfile.mkdtemp(prefix="triage-pg-"))
    os.chmod(folder, 0o755)
    server = PostgresServer(bindir, folder)
    try:
        server.init().start()
    except subprocess.CalledProcessError as exc:
        return f"PostgreSQL test cluster did not start: {exc.stderr or exc.stdout}"
    return server
