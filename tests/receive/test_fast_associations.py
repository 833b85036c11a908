"""The fast transport's event-driven associations (receive/fast/associations.py) against real peers: every way an
association can end, TLS, many associations one after another and at once, and no CPU spent while an association is
idle."""

from __future__ import annotations

import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pynetdicom
import pytest
from peers import echoscu, find_tool, free_port, storescu, wait_for
from pydicom import dcmread
from pynetdicom import AE
from sqlalchemy import func, select

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head
from triage_node.config import SCP, TLS
from triage_node.receive.fast.associations import EventAssociation, encode_store_response
from triage_node.receive.scp import ReceiveHooks, StorageSCP
from triage_node.receive.spool import Spool
from triage_node.worklist.db import make_engine, migrate, session_factory
from triage_node.worklist.models import Instance

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    hu, spacing = phantom_head(12, 32)
    return write_series(tmp_path / "series", hu, spacing, seed=21)


def _scp(tmp_path: Path, **cfg: object) -> tuple[StorageSCP, object]:
    # SQLite only: the subject is the fast transport's associations; its rows go through the SQLite fast SQL path
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    scp = StorageSCP(
        SCP(host="127.0.0.1", port=free_port(), **cfg),  # type: ignore[arg-type]
        Spool(tmp_path / "spool"),
        session_factory(engine),
        ReceiveHooks(),
    )
    scp.start()
    return scp, engine


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[StorageSCP]:
    server, engine = _scp(tmp_path)
    try:
        yield server
    finally:
        server.stop()
        engine.dispose()  # type: ignore[attr-defined]


def _stored(scp: StorageSCP) -> int:
    with scp.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Instance)) or 0)


def _associate(port: int, contexts: tuple[str, ...] = (CT, VERIFICATION), **kwargs: object) -> pynetdicom.Association:
    ae = AE("REACTORTEST")
    for uid in contexts:
        ae.add_requested_context(uid, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE_NODE", **kwargs)  # type: ignore[arg-type]
    assert assoc.is_established
    return assoc


def _no_associations(scp: StorageSCP) -> bool:
    return not scp.ae.active_associations


@pytest.mark.parametrize("status", [0x0000, 0xA700, 0xA900, 0xC210, 0x0110])
@pytest.mark.parametrize("odd_uid", [False, True])
def test_store_response_bytes_equal_pynetdicoms_encoding(status: int, odd_uid: bool) -> None:
    from pynetdicom.dimse_messages import C_STORE_RSP
    from pynetdicom.dimse_primitives import C_STORE

    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = 7
    rsp.AffectedSOPClassUID = CT
    rsp.AffectedSOPInstanceUID = "1.2.3.45" if odd_uid else "1.2.3.4"
    rsp.Status = status
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    (pdata,) = list(msg.encode_msg(1, 16384))
    assert pdata.presentation_data_value_list == [(1, b"\x03" + encode_store_response(rsp))]


def test_accepted_associations_are_event_driven_and_release_ends_them(scp: StorageSCP, series: list[Path]) -> None:
    assoc = _associate(scp.port)
    kinds = [type(a) for a in scp.ae.active_associations]
    assert kinds == [EventAssociation]
    assert int(assoc.send_c_echo().Status) == 0
    for path in series[:3]:
        assert int(assoc.send_c_store(dcmread(path)).Status) == 0
    assoc.release()
    assert assoc.is_released
    wait_for(lambda: _no_associations(scp), timeout=10, interval=0.01, what="the association thread to end")
    assert _stored(scp) == 3


def test_abort_by_the_peer_ends_the_association_and_the_scp_keeps_serving(scp: StorageSCP, series: list[Path]) -> None:
    assoc = _associate(scp.port)
    assert int(assoc.send_c_store(dcmread(series[0])).Status) == 0
    assoc.abort()
    wait_for(lambda: _no_associations(scp), timeout=10, interval=0.01, what="the aborted association to end")
    assert echoscu(scp.port).returncode == 0
    assert _stored(scp) == 1


def test_a_peer_that_closes_the_connection_without_release_is_cleaned_up(scp: StorageSCP) -> None:
    assoc = _associate(scp.port)
    sock = assoc.dul.socket
    assert sock is not None and sock.socket is not None
    sock.socket.close()  # no A-RELEASE, no A-ABORT: the SCP sees the connection drop (A-P-ABORT)
    wait_for(lambda: _no_associations(scp), timeout=10, interval=0.01, what="the dropped association to end")
    assoc.kill()
    assert echoscu(scp.port).returncode == 0


def test_idle_association_is_aborted_after_the_network_timeout(tmp_path: Path) -> None:
    scp, engine = _scp(tmp_path, network_timeout_s=1)
    try:
        assoc = _associate(scp.port)
        started = time.monotonic()
        wait_for(lambda: assoc.is_aborted, timeout=10, interval=0.01, what="the SCP to abort the idle association")
        waited = time.monotonic() - started
        assert 0.9 <= waited < 3.0, f"aborted after {waited:.2f} s, network_timeout_s is 1"
        wait_for(lambda: _no_associations(scp), timeout=10, interval=0.01, what="the association thread to end")
    finally:
        scp.stop()
        engine.dispose()  # type: ignore[attr-defined]


def _thread_cpu_s(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def test_an_idle_association_spends_no_cpu(scp: StorageSCP) -> None:
    # pynetdicom's own two threads per association poll every 1 ms (about 12 ms of CPU per idle half second here);
    # these block until something happens.
    assoc = _associate(scp.port)
    try:
        assert int(assoc.send_c_echo().Status) == 0
        (acceptor,) = scp.ae.active_associations
        threads = [acceptor, acceptor.dul]
        before = sum(_thread_cpu_s(t) for t in threads)
        time.sleep(0.5)  # a duration to measure, not a condition to wait for
        used = sum(_thread_cpu_s(t) for t in threads) - before
        assert used < 0.003, f"the idle association's threads used {used * 1e3:.1f} ms of CPU in 0.5 s"
    finally:
        assoc.release()


def test_many_sequential_and_parallel_associations(scp: StorageSCP, series: list[Path]) -> None:
    for _ in range(30):
        assoc = _associate(scp.port, contexts=(VERIFICATION,))
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
    errors: list[str] = []

    def send(paths: list[Path]) -> None:
        assoc = _associate(scp.port)
        try:
            for p in paths:
                status = int(assoc.send_c_store(dcmread(p)).Status)
                if status != 0:
                    errors.append(f"{p.name}: 0x{status:04X}")
        finally:
            assoc.release()

    threads = [threading.Thread(target=send, args=(series[i::6],)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert _stored(scp) == len(series)
    storescu(scp.port, series[0].parent)  # and DCMTK afterwards: identical resend stores nothing new
    assert _stored(scp) == len(series)
    wait_for(lambda: _no_associations(scp), timeout=10, interval=0.01, what="every association to end")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([find_tool("openssl"), *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def test_tls_echo_and_store(tmp_path: Path, series: list[Path]) -> None:
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "server.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-subj",
        "/CN=127.0.0.1",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        cwd=pki,
    )
    tls = TLS(enabled=True, cert_file=pki / "server.pem", key_file=pki / "server.key")
    scp, engine = _scp(tmp_path, tls=tls)
    try:
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "server.pem"))
        assoc = _associate(scp.port, tls_args=(client, "127.0.0.1"))
        assert int(assoc.send_c_echo().Status) == 0
        for path in series:  # several PDUs per instance through the TLS buffer
            assert int(assoc.send_c_store(dcmread(path)).Status) == 0
        assoc.release()
        assert _stored(scp) == len(series)
        started = time.monotonic()
        assert echoscu(scp.port).returncode != 0  # plain DICOM on the TLS port is refused...
        assert time.monotonic() - started < 10  # ...at once, not after the 30 s ACSE timeout
        wait_for(lambda: _no_associations(scp), timeout=10, interval=0.01, what="the refused connection to end")
    finally:
        scp.stop()
        engine.dispose()  # type: ignore[attr-defined]
