"""The daemon under a stand-in for systemd: a real ``triage-node serve`` with ``NOTIFY_SOCKET`` pointing at a datagram
socket of the test. READY=1 must come only once the SCP answers, the database is migrated and the models are loaded;
WATCHDOG=1 keeps coming from the main loop; SIGHUP gives RELOADING=1 then READY=1; SIGTERM gives STOPPING=1 and a
clean exit. JSON logging is switched on to check the log set-up in the real process too."""

from __future__ import annotations

import json
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import echoscu, make_daemon

# SQLite only: the subject is the systemd notify protocol, not the database
NO_MODELS = {"TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": [], "mr_swi": [], "mr_dwi": []})}


class FakeSystemd:
    """The receiving end of sd_notify: collects datagrams (one message = several KEY=value lines)."""

    def __init__(self) -> None:
        self.name = f"triage-node-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.name.encode())
        self.messages: list[list[str]] = []

    @property
    def address(self) -> str:
        return "@" + self.name

    def wait_for(self, line: str, timeout: float) -> list[str]:
        """Receive until a message contains ``line``; returns that message."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                msg = self.sock.recv(4096).decode().split("\n")
            except TimeoutError:
                break
            self.messages.append(msg)
            if line in msg:
                return msg
        raise TimeoutError(f"no {line!r} within {timeout:g} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd()
    yield fake
    fake.close()


def test_notify_protocol_through_the_daemon_lifecycle(tmp_path: Path, systemd: FakeSystemd) -> None:
    d = make_daemon(
        tmp_path / "d", **NO_MODELS, NOTIFY_SOCKET=systemd.address, WATCHDOG_USEC="3000000",
        TRIAGE_NODE__LOGGING__FORMAT="json",
    )
    d.start(wait=False)
    try:
        systemd.wait_for("READY=1", timeout=120)
        # Ready means ready: the SCP answers, the schema is there.
        assert echoscu(d.port).returncode == 0
        assert d.sql("select count(*) from jobs") == [(0,)]
        before_ready = [line for msg in systemd.messages[:-1] for line in msg]
        assert "STATUS=migrating database" in before_ready
        assert any(line.startswith("STATUS=loading models") for line in before_ready)

        # The main loop pets the watchdog well within WATCHDOG_USEC (3 s).
        start = time.monotonic()
        systemd.wait_for("WATCHDOG=1", timeout=3)
        systemd.wait_for("WATCHDOG=1", timeout=3)
        assert time.monotonic() - start < 3
        statuses = [line for msg in systemd.messages for line in msg if line.startswith("STATUS=listening on")]
        assert statuses, systemd.messages

        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        reloading = systemd.wait_for("RELOADING=1", timeout=10)
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading)
        systemd.wait_for("READY=1", timeout=10)

        d.proc.send_signal(signal.SIGTERM)
        systemd.wait_for("STOPPING=1", timeout=10)
        assert d.proc.wait(timeout=60) == 0
    finally:
        d.stop()

    records = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
    ready = [r for r in records if " ready: DICOM " in r["message"]]
    assert ready and ready[0]["level"] == "INFO" and ready[0]["logger"] == "triage_node.daemon"
    assert any(r["message"] == "stopped" for r in records)
