"""Real peers for tests: DCMTK tools and the triage-node daemon itself, started as subprocesses on loopback.

A missing peer skips the test on a developer's machine and fails it in CI (``CI=true``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent  # tests/support: the helpers and the stand-in analyzers
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(condition: bool, why: str) -> None:
    """Skip (or fail in CI) when a real peer or data set is missing."""
    if not condition:
        if IN_CI:
            pytest.fail(f"required peer missing in CI: {why}")
        pytest.skip(why)


def find_tool(name: str) -> str:
    path = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/bin") / name, Path("/usr/sbin") / name) if p.exists()), None
    )
    require(path is not None, f"{name} is not installed (see README: make test installs it)")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what or predicate}")


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(
    port: int,
    paths: Sequence[Path] | Path,
    *,
    calling: str = "STORESCU",
    called: str = "TRIAGE_NODE",
    extra: Sequence[str] = (),
    check: bool = True,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Send with DCMTK storescu (``+sd`` scans a folder); raises on failure when ``check``."""
    exe = find_tool("storescu")
    targets = [str(paths)] if isinstance(paths, Path) else [str(p) for p in paths]
    cmd = [exe, "-aet", calling, "-aec", called, *extra]
    if isinstance(paths, Path) and paths.is_dir():
        cmd.append("+sd")
    cmd += ["127.0.0.1", str(port), *targets]
    proc = subprocess.run(cmd, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"storescu failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def echoscu(port: int, *, calling: str = "ECHOSCU", called: str = "TRIAGE_NODE") -> subprocess.CompletedProcess[str]:
    exe = find_tool("echoscu")
    return subprocess.run(
        [exe, "-aet", calling, "-aec", called, "127.0.0.1", str(port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


@dataclass
class Daemon:
    """A ``triage-node serve`` subprocess with its own database, spool and ports."""

    workdir: Path
    env: dict[str, str]
    port: int
    web_port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: object = field(default=None, repr=False)
    _log_offset: int = 0
    args: tuple[str, ...] = ()  # more `serve` arguments, e.g. ("--roles", "work")

    @property
    def database_url(self) -> str:
        return self.env["TRIAGE_NODE__STORAGE__DATABASE_URL"]

    @property
    def spool(self) -> Path:
        return Path(self.env["TRIAGE_NODE__STORAGE__SPOOL_DIR"])

    def start(self, wait: bool = True, timeout: float = 120) -> Daemon:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "triage_node.cli", "serve", "--config", str(ROOT / "config.yaml"), *self.args],
            cwd=self.workdir,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            wait_for(self._ready, timeout=timeout, interval=0.1, what="the daemon to report ready")
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
        return " ready: DICOM " in self.log()[self._log_offset :]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
        return rc

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> Daemon:
        self.stop()
        with open(self.log_path, "ab") as fh:
            fh.write(b"\n---- restart ----\n")
        return self.start()

    def sql(self, query: str) -> list[tuple[object, ...]]:
        from sqlalchemy import create_engine, text

        engine = create_engine(self.database_url)
        try:
            with engine.connect() as conn:
                return [tuple(r) for r in conn.execute(text(query)).all()]
        finally:
            engine.dispose()


def make_daemon(workdir: Path, **overrides: str) -> Daemon:
    """A daemon configured by environment overrides on top of the top-level config.yaml; on SQLite in ``workdir``
    unless ``TRIAGE_NODE__STORAGE__DATABASE_URL`` is given (a test taking ``db_url`` passes it, to run on both)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port, web_port = free_port(), free_port()
    env = {
        **os.environ,
        "TRIAGE_NODE__SCP__PORT": str(port),
        "TRIAGE_NODE__SCP__HOST": "127.0.0.1",
        "TRIAGE_NODE__WEB__PORT": str(web_port),
        "TRIAGE_NODE__WEB__HOST": "127.0.0.1",
        "TRIAGE_NODE__STORAGE__DATABASE_URL": f"sqlite:///{workdir / 'triage.db'}",
        "TRIAGE_NODE__STORAGE__SPOOL_DIR": str(workdir / "spool"),
        "TRIAGE_NODE__STORAGE__MIN_FREE_MB": "10",
        "TRIAGE_NODE__MODELS__DIR": str(ROOT / "models"),
        "TRIAGE_NODE__MODELS__THREADS": "1",
        "TRIAGE_NODE__SERIES__QUIET_PERIOD_S": "2",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("NOTIFY_SOCKET", None)
    env.update(overrides)
    return Daemon(workdir=workdir, env=env, port=port, web_port=web_port, log_path=workdir / "daemon.log")


@contextlib.contextmanager
def running_daemon(workdir: Path, **overrides: str) -> Iterator[Daemon]:
    d = make_daemon(workdir, **overrides).start()
    try:
        yield d
    finally:
        d.stop()
