from __future__ import annotations

import faulthandler
import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from triage_node.config import Logging
from triage_node.ops.logs import QUIET_LOGGERS, setup_logging, stream_is_journal


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in QUIET_LOGGERS}
    faults = faulthandler.is_enabled()
    yield
    if faults:  # setup_logging pointed faulthandler at the test's stream, which is closed now
        faulthandler.enable(file=sys.__stderr__)
    else:
        faulthandler.disable()
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    for name, lvl in quiet.items():
        logging.getLogger(name).setLevel(lvl)


def test_text_lines_are_level_logger_message() -> None:
    out = io.StringIO()
    setup_logging(Logging(level="INFO", format="text"), out, timestamps=False)
    logging.getLogger("triage_node.pipeline").info("job %d: %s", 7, "delivered")
    logging.getLogger("triage_node.pipeline").debug("not shown")
    assert out.getvalue() == "INFO triage_node.pipeline: job 7: delivered\n"


def test_text_with_timestamps_outside_the_journal() -> None:
    out = io.StringIO()
    setup_logging(Logging(), out, env={})
    logging.getLogger("x").warning("low disk")
    line = out.getvalue().strip()
    assert line.endswith(" WARNING x: low disk")
    assert line[:4].isdigit() and "T" in line.split(" ")[0]


def test_json_lines_carry_extra_ids_and_exceptions() -> None:
    out = io.StringIO()
    setup_logging(Logging(level="INFO", format="json"), out)
    log = logging.getLogger("triage_node.send.outbox")
    log.info("sent %s", "seg", extra={"job_id": 12, "series_id": 3})
    try:
        raise ConnectionRefusedError("peer down")
    except ConnectionRefusedError:
        log.exception("delivery failed", extra={"job_id": 12})
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["level"] == "INFO" and first["logger"] == "triage_node.send.outbox"
    assert first["message"] == "sent seg" and first["job_id"] == 12 and first["series_id"] == 3
    assert first["ts"].endswith("+00:00")
    assert second["level"] == "ERROR" and "ConnectionRefusedError: peer down" in second["exc"]


def test_pynetdicom_is_held_at_warning_unless_debug() -> None:
    out = io.StringIO()
    setup_logging(Logging(level="INFO"), out, timestamps=False)
    logging.getLogger("pynetdicom.dsutils").info("(0010,0010) PN [DOE^JANE]")
    logging.getLogger("pynetdicom.assoc").warning("association aborted")
    assert "DOE" not in out.getvalue()
    assert "association aborted" in out.getvalue()
    setup_logging(Logging(level="DEBUG"), out, timestamps=False)
    assert logging.getLogger("pynetdicom").getEffectiveLevel() == logging.DEBUG


def test_setup_twice_replaces_the_handler() -> None:
    out = io.StringIO()
    setup_logging(Logging(), out, timestamps=False)
    setup_logging(Logging(), out, timestamps=False)
    logging.getLogger("x").error("once")
    assert out.getvalue().count("once") == 1


def test_journal_stream_gets_syslog_priorities_and_no_timestamps(tmp_path: Path) -> None:
    # systemd connects stderr to the journal and names the socket's device:inode in JOURNAL_STREAM; a file whose
    # device:inode we put there stands in for it.
    with open(tmp_path / "journal", "w+", encoding="utf-8") as stream:
        st = os.fstat(stream.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert stream_is_journal(stream, env)
        setup_logging(Logging(), stream, env=env)
        try:
            raise ValueError("bad")
        except ValueError:
            logging.getLogger("triage_node.daemon").exception("job 4 failed")
        logging.getLogger("triage_node.daemon").info("ready")
        stream.flush()
        lines = (tmp_path / "journal").read_text().splitlines()
    assert lines[0] == "<3>ERROR triage_node.daemon: job 4 failed"
    assert all(line.startswith("<3>") for line in lines[1:-1])  # the traceback keeps the record's priority
    assert lines[-1] == "<6>INFO triage_node.daemon: ready"


def test_other_streams_are_not_the_journal(tmp_path: Path) -> None:
    assert not stream_is_journal(io.StringIO(), {"JOURNAL_STREAM": "1:2"})
    with open(tmp_path / "f", "w", encoding="utf-8") as f:
        assert not stream_is_journal(f, {"JOURNAL_STREAM": "1:2"})
        assert not stream_is_journal(f, {"JOURNAL_STREAM": "garbage"})
        assert not stream_is_journal(f, {})


def test_sigabrt_from_the_watchdog_dumps_every_thread(tmp_path: Path) -> None:
    # systemd's watchdog kills a hung daemon with SIGABRT; the stacks must reach the journal (stderr).
    script = (
        "import os, signal, threading, time\n"
        "from triage_node.config import Logging\n"
        "from triage_node.ops.logs import setup_logging\n"
        "setup_logging(Logging())\n"
        "threading.Thread(target=time.sleep, args=(60,), name='job-worker', daemon=True).start()\n"
        "os.kill(os.getpid(), signal.SIGABRT)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == -signal.SIGABRT
    assert "Fatal Python error: Aborted" in proc.stderr
    assert proc.stderr.lower().count("thread 0x") >= 2  # the main thread and the worker
