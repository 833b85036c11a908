"""The systemd notification protocol (sd_notify(3)) without libsystemd: one datagram per message to ``$NOTIFY_SOCKET``.

``Type=notify`` units wait for ``READY=1``; ``WatchdogSec=`` expects ``WATCHDOG=1`` at least every ``$WATCHDOG_USEC``
microseconds (we ping at half of it). Outside systemd (``NOTIFY_SOCKET`` unset) every method is a no-op returning False,
so the daemon code calls them unconditionally.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


class NotifySocketError(ValueError):
    """``$NOTIFY_SOCKET`` names an address this implementation cannot use."""


def _parse_address(value: str) -> str | bytes:
    """An AF_UNIX address from ``$NOTIFY_SOCKET``: a path, or ``@name`` for the abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # systemd >= 254 may also hand out "vsock:CID:PORT" (for VMs); a daemon on the host never gets one.
    raise NotifySocketError(f"NOTIFY_SOCKET must be an absolute path or start with '@', got {value!r}")


def _one_line(text: str) -> str:
    return " ".join(text.split())


class SdNotifier:
    """Tells systemd about readiness, liveness and status.

    ``env`` defaults to ``os.environ``; ``pid`` (default ``os.getpid()``) is compared with ``$WATCHDOG_PID``;
    ``clock`` (monotonic seconds) drives :meth:`watchdog_if_due`.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        *,
        pid: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET") or None
        self._address: str | bytes | None = None
        self._watchdog_s: float | None = None
        # A malformed variable disables notification with a warning rather than failing the start: under systemd
        # a crash here would only turn into a restart loop.
        try:
            self._address = None if raw is None else _parse_address(raw)
            self._watchdog_s = self._parse_watchdog(env, os.getpid() if pid is None else pid)
        except NotifySocketError as exc:
            log.warning("systemd notification disabled: %s", exc)
        self._clock = clock
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._last_ping: float | None = None
        self._send_failed = False

    @staticmethod
    def _parse_watchdog(env: Mapping[str, str], pid: int) -> float | None:
        usec = env.get("WATCHDOG_USEC")
        if not usec:
            return None
        wd_pid = env.get("WATCHDOG_PID")
        if wd_pid and wd_pid.strip() != str(pid):
            return None  # the watchdog is meant for another process (e.g. our parent)
        try:
            value = int(usec)
        except ValueError as exc:
            raise NotifySocketError(f"WATCHDOG_USEC must be an integer number of microseconds, got {usec!r}") from exc
        if value <= 0:
            raise NotifySocketError(f"WATCHDOG_USEC must be positive, got {value}")
        return value / 1_000_000

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; True when sent. Failures are logged once, never raised:
        losing contact with systemd must not take the daemon down (the watchdog will, if it has to)."""
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode()
        with self._lock:
            try:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(payload, self._address)
            except OSError as exc:
                if not self._send_failed:
                    log.warning("sd_notify to %r failed: %s (further failures are not logged)", self._address, exc)
                self._send_failed = True
                return False
        self._send_failed = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: the SCP listens, the database is migrated and the models are loaded."""
        lines = ["READY=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        return self.notify(*lines)

    def watchdog(self) -> bool:
        """WATCHDOG=1, unconditionally."""
        self._last_ping = self._clock()
        return self.notify("WATCHDOG=1")

    def watchdog_if_due(self, now: float | None = None) -> bool:
        """WATCHDOG=1 when half the watchdog interval has passed since the last ping; call it every loop turn."""
        if self._watchdog_s is None:
            return False
        now = self._clock() if now is None else now
        if self._last_ping is not None and now - self._last_ping < self._watchdog_s / 2:
            return False
        self._last_ping = now
        return self.notify("WATCHDOG=1")

    def status(self, text: str) -> bool:
        """STATUS=: one line shown by ``systemctl status`` (newlines are folded into spaces)."""
        return self.notify(f"STATUS={_one_line(text)}")

    def stopping(self, status: str | None = None) -> bool:
        lines = ["STOPPING=1"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        return self.notify(*lines)

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 (send :meth:`ready` when the reload is done). MONOTONIC_USEC lets systemd >= 253 match
        the reload to this message."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        lines = ["RELOADING=1", f"MONOTONIC_USEC={usec}"]
        if status is not None:
            lines.append(f"STATUS={_one_line(status)}")
        return self.notify(*lines)

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC=: ask for more start-up (or stop) time, e.g. while a large model loads."""
        if seconds <= 0:
            raise ValueError(f"extend_timeout seconds must be positive, got {seconds}")
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog_interval_s(self) -> float | None:
        """The interval systemd expects pings within (``WatchdogSec=``), or None when there is no watchdog for us."""
        return self._watchdog_s

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
