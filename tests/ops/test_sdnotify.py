from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from triage_node.ops.sdnotify import SdNotifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield sock, str(path)
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_without_notify_socket_everything_is_a_no_op() -> None:
    n = SdNotifier({})
    assert not n.enabled
    assert n.ready() is False
    assert n.watchdog() is False
    assert n.status("x") is False
    assert n.stopping() is False
    assert n.watchdog_interval_s() is None


def test_lifecycle_messages_reach_the_socket(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = SdNotifier({"NOTIFY_SOCKET": path})
    assert n.ready(status="listening on 11112")
    assert received(sock) == ["READY=1", "STATUS=listening on 11112"]
    assert n.status("3 jobs queued\noutbox 0")
    assert received(sock) == ["STATUS=3 jobs queued outbox 0"]
    assert n.watchdog()
    assert received(sock) == ["WATCHDOG=1"]
    assert n.reloading()
    lines = received(sock)
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert n.extend_timeout(90)
    assert received(sock) == ["EXTEND_TIMEOUT_USEC=90000000"]
    assert n.stopping()
    assert received(sock) == ["STOPPING=1"]
    n.close()


def test_abstract_socket_address() -> None:
    name = f"triage-node-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    try:
        n = SdNotifier({"NOTIFY_SOCKET": "@" + name})
        assert n.ready()
        assert received(sock) == ["READY=1"]
    finally:
        sock.close()


def test_watchdog_interval_from_environment() -> None:
    pid = os.getpid()
    assert SdNotifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval_s() == 30.0
    assert SdNotifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}).watchdog_interval_s() == 30.0
    # A watchdog meant for another process is not ours to feed.
    assert SdNotifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid + 1)}).watchdog_interval_s() is None


def test_watchdog_if_due_pings_at_half_the_interval(notify_socket: tuple[socket.socket, str]) -> None:
    sock, path = notify_socket
    n = SdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}, clock=lambda: 0.0)
    assert n.watchdog_if_due(now=100.0)
    assert received(sock) == ["WATCHDOG=1"]
    assert not n.watchdog_if_due(now=104.9)
    assert n.watchdog_if_due(now=105.0)
    assert received(sock) == ["WATCHDOG=1"]


def test_malformed_environment_disables_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    n = SdNotifier({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not n.enabled
    assert "must be an absolute path" in caplog.text
    assert SdNotifier({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "soon"}).watchdog_interval_s() is None


def test_vanished_socket_is_logged_once_and_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    n = SdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.ready() is False
    assert n.watchdog() is False
    assert caplog.text.count("sd_notify to") == 1


def test_extend_timeout_rejects_non_positive() -> None:
    with pytest.raises(ValueError, match="seconds must be positive, got 0"):
        SdNotifier({}).extend_timeout(0)
