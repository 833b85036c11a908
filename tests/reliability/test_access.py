"""Access control: the AE allow-list and called AE title, DICOM TLS with certificates the test makes with openssl,
and the web worklist (no patient data without login, CSRF enforced)."""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from peers import echoscu, find_tool, wait_for
from pydicom import dcmread
from reliability_support import NO_MODELS, Figures, echo, job_rows, new_daemon, phantom_series, send_files

# SQLite only: fault injection, doubled by transport already; PostgreSQL's is test_multinode.py
pytestmark = pytest.mark.reliability


def test_unknown_calling_ae_and_wrong_called_ae_are_rejected(tmp_path: Path, figures: Figures, transport: str) -> None:
    callers = [{"ae_title": "PACS"}, {"ae_title": "CT1", "host": "127.0.0.2"}]
    env = {**NO_MODELS, "TRIAGE_NODE__WEB__ENABLED": "false", "TRIAGE_NODE__SCP__ALLOWED_CALLERS": json.dumps(callers),
           "TRIAGE_NODE__SCP__TRANSPORT": transport}
    d = new_daemon(figures, tmp_path / "d", **env).start()
    try:
        assert echoscu(d.port, calling="PACS").returncode == 0
        intruder = echoscu(d.port, calling="INTRUDER")
        assert intruder.returncode != 0 and "Association Rejected" in intruder.stderr + intruder.stdout
        assert echoscu(d.port, calling="CT1").returncode != 0  # allowed only from another host
        wrong = echoscu(d.port, calling="PACS", called="NOT_US")
        assert wrong.returncode != 0 and "Association Rejected" in wrong.stderr + wrong.stdout
        assert not send_files(d.port, phantom_series(tmp_path / "s", 9300, slices=2), calling="INTRUDER").statuses
        assert d.sql("select count(*) from instances") == [(0,)]
        wait_for(lambda: "association rejected: calling AE 'INTRUDER'" in d.log(), timeout=10)
        assert echoscu(d.port, calling="PACS").returncode == 0  # still serving
        figures.access.update({"unknown calling AE": "A-ASSOCIATE-RJ", "wrong called AE": "A-ASSOCIATE-RJ",
                               "allowed AE from a foreign host": "A-ASSOCIATE-RJ"})
    finally:
        d.stop()


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([find_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _pki(folder: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1, a client certificate it signed, and a self-signed rogue client."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=test CA",
             cwd=folder)
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", *ext, cwd=folder)
    _openssl("req", "-x509", *key, "-keyout", "rogue.key", "-out", "rogue.pem", "-days", "2", "-subj", "/CN=rogue",
             cwd=folder)
    return folder


def _client(pki: Path, cert: str | None) -> tuple[ssl.SSLContext, str]:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
    if cert is not None:
        ctx.load_cert_chain(str(pki / f"{cert}.pem"), str(pki / f"{cert}.key"))
    return ctx, "127.0.0.1"


def test_dicom_tls_needs_a_client_certificate_signed_by_the_ca(
    tmp_path: Path, figures: Figures, transport: str
) -> None:
    pki = _pki(tmp_path / "pki")
    env = {**NO_MODELS, "TRIAGE_NODE__WEB__ENABLED": "false", "TRIAGE_NODE__SCP__ACSE_TIMEOUT_S": "5",
           "TRIAGE_NODE__SCP__TRANSPORT": transport,
           "TRIAGE_NODE__SCP__TLS__ENABLED": "true",
           "TRIAGE_NODE__SCP__TLS__CERT_FILE": str(pki / "server.pem"),
           "TRIAGE_NODE__SCP__TLS__KEY_FILE": str(pki / "server.key"),
           "TRIAGE_NODE__SCP__TLS__CA_FILE": str(pki / "ca.pem"),
           "TRIAGE_NODE__SCP__TLS__REQUIRE_CLIENT_CERT": "true"}
    d = new_daemon(figures, tmp_path / "d", **env).start()
    try:
        assert echo(d.port, tls=_client(pki, "client"))
        paths = phantom_series(tmp_path / "s", 9310, slices=4)
        sent = send_files(d.port, paths, tls=_client(pki, "client"))
        assert sorted(sent.statuses.values()) == [0] * 4, sent.statuses
        assert not echo(d.port, tls=_client(pki, None)), "a client without a certificate was let in"
        assert not echo(d.port, tls=_client(pki, "rogue")), "a certificate the CA did not sign was let in"
        assert echoscu(d.port).returncode != 0, "a plain connection was accepted on the TLS port"
        # a peer that connects and never speaks must not hold up everyone else's handshake
        with socket.create_connection(("127.0.0.1", d.port)):
            assert echo(d.port, tls=_client(pki, "client"))
        assert d.sql("select count(*) from instances") == [(4,)]
        figures.access.update({"TLS with a CA-signed client certificate": "accepted",
                               "TLS without a client certificate": "refused",
                               "TLS with a rogue client certificate": "refused",
                               "plain DICOM on the TLS port": "refused",
                               "silent TCP peer on the TLS port": "does not block others"})
    finally:
        d.stop()


PHI = ("SYNTH^PATIENT09320", "SYN0009320", "SYNTH PATIENT09320")


def test_web_shows_no_patient_data_without_login_and_enforces_csrf(tmp_path: Path, figures: Figures) -> None:
    pw = "correct horse battery staple"
    users = [{"name": "rad", "password_hash": PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(pw)}]
    env = {**NO_MODELS, "TRIAGE_NODE__WEB__USERS": json.dumps(users), "TRIAGE_NODE__WEB__SECRET_KEY": "k" * 32}
    d = new_daemon(figures, tmp_path / "d", **env).start()
    try:
        paths = phantom_series(tmp_path / "s", 9320, slices=6)
        assert len(send_files(d.port, paths).acked) == 6
        wait_for(lambda: [r[3] for r in job_rows(d)] == ["delivered"], timeout=60)
        study = str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)
        base = f"http://127.0.0.1:{d.web_port}"
        with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as anon:
            for path in ("/", "/api/worklist", f"/studies/{study}", f"/api/studies/{study}", "/partials/worklist",
                         "/api/session", "/healthz", "/login", "/openapi.json"):
                r = anon.get(path)
                assert not any(p in r.text for p in PHI), f"{path} leaked patient data without login"
                if path not in ("/healthz", "/login", "/openapi.json"):
                    assert r.status_code in (401, 303), f"{path} answered {r.status_code} without login"
            assert anon.post(f"/api/studies/{study}/ack").status_code == 401
            form = anon.get("/login")
            assert anon.post("/login", data={"username": "rad", "password": pw, "csrf_token": "forged"}).status_code \
                == 403
        with httpx.Client(base_url=base, follow_redirects=False, timeout=30) as web:
            form = web.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
            assert token is not None
            r = web.post("/login", data={"username": "rad", "password": pw, "csrf_token": token.group(1), "next": "/"})
            assert r.status_code == 303, r.text
            assert "SYNTH" in web.get("/api/worklist").text  # logged in, the same data is there
            csrf = web.get("/api/session").json()["csrf_token"]
            assert web.post(f"/api/studies/{study}/ack").status_code == 403
            forged = ("y" if csrf[0] == "x" else "x") + csrf[1:]  # differs from the real token in one character
            assert web.post(f"/api/studies/{study}/ack", headers={"X-CSRF-Token": forged}).status_code == 403
            assert d.sql("select acknowledged_by from studies") == [(None,)]
            assert web.post(f"/api/studies/{study}/ack", headers={"X-CSRF-Token": csrf}).status_code == 200
            assert d.sql("select acknowledged_by from studies") == [("rad",)]
        figures.access.update({"web without login": "401 / redirect, no patient data",
                               "POST without or with a wrong CSRF token": "403"})
    finally:
        d.stop()
