"""HL7 v2.5 ORU^R01 over MLLP and FHIR R4 (DiagnosticReport + Flag) through the notification outbox, against real
listeners on 127.0.0.1: an MLLP socket server that parses every message with hl7apy and ACKs it, and an HTTP server
that validates every Bundle with fhir.resources. PHI only where configured; failures retry with backoff."""

from __future__ import annotations

import datetime as dt
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.flag import Flag
from hl7apy.core import Message
from hl7apy.parser import parse_message
from notify_fixtures import ACCESSION, PATIENT_ID, T0, add_flagged_job
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage_node.config import Notifications
from triage_node.notify import Backoff, notify_due, queue_for_job
from triage_node.worklist.db import transaction
from triage_node.worklist.models import Notification

VT, FS_CR = b"\x0b", b"\x1c\x0d"


@dataclass
class MLLPListener:
    """Answers each framed message with an ACK whose MSA-1 is the next of ``codes`` (the last repeats)."""

    codes: list[str] = field(default_factory=lambda: ["AA"])
    messages: list[Message] = field(default_factory=list)
    port: int = 0

    def serve(self, server: socket.socket) -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while FS_CR not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                er7 = data.strip(VT + FS_CR).decode("latin-1")
                msg = parse_message(er7, find_groups=True)
                msg.validate()
                self.messages.append(msg)
                code = self.codes[min(len(self.messages), len(self.codes)) - 1]
                ack = Message("ACK", version="2.5")
                ack.msh.msh_9 = "ACK^R01^ACK"
                ack.msh.msh_10 = "ACK" + msg.msh.msh_10.value
                ack.msh.msh_11 = "P"
                ack.msa.msa_1 = code
                ack.msa.msa_2 = msg.msh.msh_10.value
                conn.sendall(VT + ack.to_er7().encode() + FS_CR)


@pytest.fixture
def mllp() -> Iterator[MLLPListener]:
    listener = MLLPListener()
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    listener.port = server.getsockname()[1]
    threading.Thread(target=listener.serve, args=(server,), daemon=True).start()
    yield listener
    server.close()


@dataclass
class FHIRServer:
    statuses: list[int] = field(default_factory=lambda: [200])
    bundles: list[Bundle] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"


@pytest.fixture
def fhir() -> Iterator[FHIRServer]:
    state = FHIRServer()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            body: dict[str, Any] = json.loads(raw)
            bundle = Bundle.model_validate(body)  # the same library validates what arrives
            DiagnosticReport.model_validate(body["entry"][0]["resource"])
            Flag.model_validate(body["entry"][1]["resource"])
            state.bundles.append(bundle)
            state.headers.append(dict(self.headers.items()))
            status = state.statuses[min(len(state.bundles), len(state.statuses)) - 1]
            self.send_response(status)
            self.send_header("Content-Type", "application/fhir+json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield state
    server.shutdown()
    server.server_close()


def _queue(sessions: sessionmaker[Session], cfg: Notifications, suffix: str = "1") -> None:
    with transaction(sessions) as s:
        job, study = add_flagged_job(s, priority="critical", uid_suffix=suffix)
        queue_for_job(s, job, study, cfg, now=T0)


def _states(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    with transaction(sessions) as s:
        return [(n.channel.split(":")[0], n.state) for n in s.scalars(select(Notification).order_by(Notification.id))]


def test_oru_r01_over_mllp_without_phi(sessions: sessionmaker[Session], mllp: MLLPListener) -> None:
    cfg = Notifications(hl7=[{"host": "127.0.0.1", "port": mllp.port, "receiving_application": "RIS_X"}])
    _queue(sessions, cfg)
    assert notify_due(sessions, cfg, T0) == 1
    assert _states(sessions) == [("hl7", "sent")]
    (msg,) = mllp.messages
    assert msg.msh.msh_9.value == "ORU^R01^ORU_R01" and msg.msh.msh_12.value == "2.5"
    assert msg.msh.msh_5.value == "RIS_X"
    er7 = msg.to_er7()
    assert "TQ1|||||||||S^Stat^HL70485" in er7 and "OBR|1||REF" in er7
    assert "any hemorrhage: 97%" in er7
    assert PATIENT_ID not in er7 and ACCESSION not in er7 and "NOTIFY" not in er7
    assert "\rPID|" not in er7


def test_oru_r01_carries_the_accession_with_phi_and_retries_a_rejecting_ris(
    sessions: sessionmaker[Session], mllp: MLLPListener
) -> None:
    mllp.codes = ["AE", "AA"]
    cfg = Notifications(hl7=[{"host": "127.0.0.1", "port": mllp.port, "include_phi": True}])
    _queue(sessions, cfg)
    backoff = Backoff(initial_s=1, max_s=1)
    assert notify_due(sessions, cfg, T0, backoff=backoff) == 0
    assert _states(sessions) == [("hl7", "pending")]
    with transaction(sessions) as s:
        assert "MSA-1 AE" in (s.scalars(select(Notification)).one().last_error or "")
    assert notify_due(sessions, cfg, T0 + dt.timedelta(seconds=2), backoff=backoff) == 1
    assert len(mllp.messages) == 2
    er7 = mllp.messages[1].to_er7()
    assert f"ORC|RE||{ACCESSION}" in er7 and f"PID|||{PATIENT_ID}" in er7
    assert mllp.messages[0].msh.msh_10.value == mllp.messages[1].msh.msh_10.value  # same control ID on a retry


def test_fhir_bundle_without_phi_then_with(sessions: sessionmaker[Session], fhir: FHIRServer) -> None:
    cfg = Notifications(fhir=[{"url": fhir.url, "token": "t0ken-for-the-fhir-server"}])
    _queue(sessions, cfg)
    assert notify_due(sessions, cfg, T0) == 1
    (bundle,) = fhir.bundles
    assert bundle.type == "transaction"
    report, flag = (e.resource for e in bundle.entry)
    assert report.get_resource_type() == "DiagnosticReport" and report.status == "preliminary"
    assert "CRITICAL: any hemorrhage: 97%" in report.conclusion
    assert flag.get_resource_type() == "Flag" and flag.status == "active"
    assert flag.code.coding[0].code == "critical"
    assert [e.request.method for e in bundle.entry] == ["PUT", "PUT"]
    raw = bundle.model_dump_json()
    assert PATIENT_ID not in raw and ACCESSION not in raw
    assert fhir.headers[0]["Authorization"] == "Bearer t0ken-for-the-fhir-server"

    cfg_phi = Notifications(fhir=[{"url": fhir.url, "include_phi": True}])
    _queue(sessions, cfg_phi, suffix="2")
    notify_due(sessions, cfg_phi, T0 + dt.timedelta(seconds=1))
    report = fhir.bundles[-1].entry[0].resource
    assert ACCESSION in [i.value for i in report.identifier]
    assert report.subject.identifier.value == PATIENT_ID


def test_fhir_server_error_retries(sessions: sessionmaker[Session], fhir: FHIRServer) -> None:
    fhir.statuses = [503, 201]
    cfg = Notifications(fhir=[{"url": fhir.url}])
    _queue(sessions, cfg)
    backoff = Backoff(initial_s=1, max_s=1)
    assert notify_due(sessions, cfg, T0, backoff=backoff) == 0
    assert notify_due(sessions, cfg, T0 + dt.timedelta(seconds=2), backoff=backoff) == 1
    assert _states(sessions) == [("fhir", "sent")]
    assert fhir.bundles[0].entry[0].resource.id == fhir.bundles[1].entry[0].resource.id  # a retry updates, PUT
