"""Logging to stderr in a form journald and log shippers read well.

Text: ``WARNING triage_node.receive.scp: message``. When stderr is connected to the journal (systemd sets
``$JOURNAL_STREAM`` to its device:inode) each line carries a ``<N>`` syslog priority prefix, which journald strips and
records, so ``journalctl -u triage-node -p warning`` works; timestamps are left to journald then. JSON: one object per
line with ``ts``, ``level``, ``logger``, ``message``, ``extra={...}`` fields (``job_id``, ``series_id``) and ``exc``.

``faulthandler`` writes every thread's stack to the same stream on SIGABRT, SIGSEGV and friends: when systemd's watchdog
kills a hung daemon (SIGABRT) the journal shows where each thread was stuck.

Our code logs study/series/job ids, never patient names or ids, at INFO and above. Third-party libraries that dump whole
datasets or requests at INFO/DEBUG (pynetdicom logs identifiers at DEBUG) are held at WARNING unless the level is DEBUG.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import faulthandler
import io
import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from triage_node.config import Logging

# Loggers that are noisy or print identifiers below WARNING; raised to WARNING unless the configured level is DEBUG.
QUIET_LOGGERS = ("pynetdicom", "apscheduler", "httpx", "httpcore", "uvicorn.access", "multipart", "PIL", "matplotlib")

# syslog priorities for journald's "<N>" prefix (SyslogLevelPrefix=yes is the default).
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

# Attributes every LogRecord has; anything else on a record came from ``extra=`` and goes into the JSON object.
_STANDARD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _priority(levelno: int) -> int:
    for level in sorted(_SYSLOG_PRIORITY, reverse=True):
        if levelno >= level:
            return _SYSLOG_PRIORITY[level]
    return 7


def stream_is_journal(stream: TextIO, env: Mapping[str, str] | None = None) -> bool:
    """True when ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM`` = ``device:inode``)."""
    env = os.environ if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep:
        return False
    try:
        st = os.fstat(stream.fileno())
        return st.st_dev == int(dev) and st.st_ino == int(ino)
    except (OSError, ValueError, AttributeError):
        # io.StringIO (tests) raises UnsupportedOperation, an OSError; a malformed variable, ValueError.
        return False


class TextFormatter(logging.Formatter):
    """``LEVEL logger: message``, optionally with a UTC timestamp in front and/or a journald ``<N>`` prefix."""

    def __init__(self, *, timestamps: bool, syslog_prefix: bool) -> None:
        super().__init__()
        self.timestamps = timestamps
        self.syslog_prefix = syslog_prefix

    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        if self.timestamps:
            ts = dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")
            text = f"{ts} {text}"
        if self.syslog_prefix:
            # journald splits on newlines; each line of a traceback gets the priority of the record.
            prefix = f"<{_priority(record.levelno)}>"
            text = "\n".join(prefix + line for line in text.split("\n"))
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in obj:
                obj[key] = value if isinstance(value, str | int | float | bool | type(None)) else repr(value)
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, ensure_ascii=False)


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler setup_logging installed, so that calling it again (SIGHUP, tests) replaces it."""


def setup_logging(
    config: Logging,
    stream: TextIO | None = None,
    *,
    timestamps: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> logging.Handler:
    """Configure the root logger from ``config`` (``logging`` section) and return the installed handler.

    ``timestamps`` None means: include them unless ``stream`` is the journal. Idempotent: a second call replaces the
    handler of the first.
    """
    stream = sys.stderr if stream is None else stream
    journal = stream_is_journal(stream, env)
    formatter: logging.Formatter
    if config.format == "json":
        formatter = JsonFormatter()
    else:
        formatter = TextFormatter(timestamps=(not journal) if timestamps is None else timestamps, syslog_prefix=journal)
    handler = _OurHandler(stream)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _OurHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    level = logging.getLevelName(config.level)
    root.setLevel(level)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if config.level == "DEBUG" else logging.WARNING)
    logging.captureWarnings(True)
    # A stream without a file descriptor (a test's StringIO) leaves faulthandler nothing to write to.
    with contextlib.suppress(io.UnsupportedOperation, AttributeError, ValueError):
        faulthandler.enable(file=stream, all_threads=True)
    return handler
