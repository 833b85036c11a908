"""Local peers for the notification tests: an HTTP receiver and an SMTP sink on 127.0.0.1, and a flagged job."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import threading
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope
from aiosmtpd.smtp import Session as SMTPSession
from sqlalchemy.orm import Session

from triage_node.worklist.models import FindingRow, Job, Series, Study

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)
PATIENT_NAME = "NOTIFY^PATIENT"
PATIENT_ID = "PHI-55123"
ACCESSION = "ACC-NOTE-9"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class Receiver:
    """Answers with ``statuses`` in turn (the last one repeats) and records every request."""

    statuses: list[int] = field(default_factory=lambda: [200])
    requests: list[Received] = field(default_factory=list)
    port: int = 0

    def url(self, path: str = "/hook/T000/B000/s3cr3t") -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def start_receiver(receiver: Receiver) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # http.server's name
            length = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(length)
            receiver.requests.append(Received(self.path, dict(self.headers.items()), json.loads(raw or b"null")))
            status = receiver.statuses[min(len(receiver.requests), len(receiver.statuses)) - 1]
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, args=(0.05,), name="webhook-receiver", daemon=True).start()
    return server


class Sink:
    """aiosmtpd handler that keeps every message."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []
        self.port = 0

    async def handle_DATA(self, server: SMTP, session: SMTPSession, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        self.messages.append((list(envelope.rcpt_tos), message_from_bytes(content)))
        await asyncio.sleep(0)
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_smtp(sink: Sink) -> Controller:
    # aiosmtpd's readiness probe connects to the given port, so it cannot be 0; take a free one.
    sink.port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink.port, ready_timeout=10)
    controller.start()
    return controller


def add_flagged_job(session: Session, *, priority: str = "critical", uid_suffix: str = "1") -> tuple[Job, Study]:
    study = Study(
        study_instance_uid=f"1.2.826.0.1.3680043.10.77.{uid_suffix}",
        patient_name=PATIENT_NAME,
        patient_id=PATIENT_ID,
        accession_number=ACCESSION,
        study_description="CT HEAD",
        study_date="20260301",
        priority=priority,
        flagged_at=T0,
    )
    series = Series(series_instance_uid=f"{study.study_instance_uid}.1", modality="CT", state="complete")
    study.series.append(series)
    job = Job(
        version=1,
        state="results_ready",
        pipeline="ct_head",
        priority=priority,
        flagged_at=T0,
        seg_series_uid="1.1",
        seg_sop_uid="1.2",
        sr_series_uid="1.3",
        sr_sop_uid="1.4",
        map_series_uid="1.5",
        map_sop_uid="1.6",
    )
    job.findings.append(
        FindingRow(
            label="any_hemorrhage",
            present=True,
            probability=0.97,
            volume_ml=4.25,
            location="right frontal lobe",
            model="ich",
            model_version="1.0",
        )
    )
    job.findings.append(FindingRow(label="subdural", present=True, probability=0.61, model="ich", model_version="1.0"))
    job.findings.append(FindingRow(label="epidural", present=False, probability=0.02, model="ich", model_version="1.0"))
    series.jobs.append(job)
    session.add(study)
    session.flush()
    return job, study
