"""The fast transport's storage phase (receive/fast/storage_phase.py) against real peers and raw PDUs: it serves
storage associations, answers every protocol error with an A-ABORT and one log line while the SCP goes on serving,
leaves no partial file behind, and stays out of associations it does not cover."""

from __future__ import annotations

import errno
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import echoscu, free_port, storescu, wait_for
from pydicom import dcmread
from pynetdicom import AE

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head
from triage_node.config import SCP
from triage_node.receive.fast import storage_phase
from triage_node.receive.fast.associations import SelectDUL
from triage_node.receive.fast.storage_phase import C_STORE_RQ, encode_response, p_data_pdus, parse_command
from triage_node.receive.scp import ReceiveHooks, StorageSCP
from triage_node.receive.spool import Incoming, Spool
from triage_node.worklist.db import make_engine, migrate, session_factory

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
COMMITMENT = "1.2.840.10008.1.20.1"
EXPLICIT = "1.2.840.10008.1.2.1"


@pytest.fixture
def series(tmp_path: Path) -> list[Path]:
    hu, spacing = phantom_head(6, 32)
    return write_series(tmp_path / "series", hu, spacing, seed=33)


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[StorageSCP]:
    # SQLite only: the subject is the fast storage phase, whose rows go through the SQLite fast SQL path
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    server = StorageSCP(
        SCP(host="127.0.0.1", port=free_port()), Spool(tmp_path / "spool"), session_factory(engine), ReceiveHooks()
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()
        engine.dispose()


def _command(field: int, data_set_type: int, sop_class: str, sop_instance: str) -> bytes:
    """A DIMSE request's command set (Implicit VR Little Endian), Message ID 1."""
    out = bytearray()
    for elem, text in ((0x0002, sop_class), (0x1000, sop_instance)):
        value = text.encode()
        if value:
            value += b"\0" * (len(value) % 2)
            out += struct.pack("<HHI", 0, elem, len(value)) + value
    for elem, number in ((0x0100, field), (0x0110, 1), (0x0700, 0), (0x0800, data_set_type)):
        out += struct.pack("<HHIH", 0, elem, 2, number)
    return bytes(out)


def _associate(port: int, contexts: tuple[str, ...] = (CT, VERIFICATION)):  # type: ignore[no-untyped-def]
    ae = AE("LANETEST")
    for uid in contexts:
        ae.add_requested_context(uid, EXPLICIT)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE_NODE")
    assert assoc.is_established
    return assoc


def _phase_of(scp: StorageSCP) -> storage_phase.StoragePhase | None:
    (acceptor,) = scp.ae.active_associations
    wait_for(lambda: cast_dul(acceptor)._phase_checked, timeout=5, interval=0.005, what="the data-transfer phase")
    return cast_dul(acceptor).phase


def cast_dul(acceptor) -> SelectDUL:  # type: ignore[no-untyped-def]
    dul = acceptor.dul
    assert isinstance(dul, SelectDUL)
    return dul


def _stored_files(scp: StorageSCP) -> list[Path]:
    return [p for p in scp.spool.root.rglob("*") if p.is_file()]


def test_storage_associations_run_on_the_storage_phase_and_store_all(scp: StorageSCP, series: list[Path]) -> None:
    assoc = _associate(scp.port)
    phase = _phase_of(scp)
    assert phase is not None
    assert int(assoc.send_c_echo().Status) == 0
    for path in series[:3]:
        assert int(assoc.send_c_store(dcmread(path)).Status) == 0
    assoc.release()
    assert assoc.is_released and phase.instances == 3
    storescu(scp.port, series[0].parent)  # DCMTK too, and its resend of the first three stores nothing new
    wait_for(lambda: not scp.ae.active_associations, timeout=10, interval=0.01, what="associations to end")
    assert len([p for p in _stored_files(scp) if p.suffix == ".dcm"]) == len(series)
    assert not list((scp.spool.root / ".incoming").iterdir())


def test_an_association_with_a_context_the_storage_phase_does_not_serve_stays_on_pynetdicom(tmp_path: Path) -> None:
    from triage_node.send.commitment import add_commitment_context

    # SQLite only: which transport serves the association is the subject, not the database
    engine = make_engine(f"sqlite:///{tmp_path / 'c.sqlite'}")
    migrate(engine)
    server = StorageSCP(
        SCP(host="127.0.0.1", port=free_port()), Spool(tmp_path / "c"), session_factory(engine), ReceiveHooks()
    )
    add_commitment_context(server.ae)  # as the daemon does when a destination asks for storage commitment
    server.start()
    try:
        assoc = _associate(server.port, contexts=(CT, COMMITMENT, VERIFICATION))
        assert _phase_of(server) is None
        assert int(assoc.send_c_echo().Status) == 0
        assoc.release()
        wait_for(lambda: not server.ae.active_associations, timeout=10, interval=0.01, what="the association to end")
        assoc = _associate(server.port, contexts=(CT,))  # the same SCP, a storage-only association: the phase
        assert _phase_of(server) is not None
        assoc.release()
    finally:
        server.stop()
        engine.dispose()


@pytest.mark.parametrize(
    ("name", "pdu"),
    [
        ("an A-ASSOCIATE-RQ during data transfer", struct.pack(">BBI", 1, 0, 4) + b"\0\0\0\0"),
        ("an unknown PDU type", struct.pack(">BBI", 9, 0, 2) + b"\0\0"),
        ("a PDV on a context that was not accepted", p_data_pdus(77, b"\0" * 8, 0)[0]),
        ("a data set before its command", struct.pack(">BBIIBB", 4, 0, 8, 4, 1, 0x02) + b"\0\0"),
        ("a PDV item longer than its PDU", struct.pack(">BBIIBB", 4, 0, 6, 400, 1, 0x03)),
        ("an A-RELEASE-RQ claiming 2 GB", struct.pack(">BBI", 5, 0, 2**31) + b"\0\0\0\0"),
        ("a C-FIND-RQ", p_data_pdus(1, _command(0x0020, 0x0101, CT, ""), 0)[0]),
    ],
)
def test_protocol_errors_abort_the_association_with_one_log_line(
    scp: StorageSCP, series: list[Path], caplog: pytest.LogCaptureFixture, name: str, pdu: bytes
) -> None:
    assoc = _associate(scp.port)
    assert _phase_of(scp) is not None
    with caplog.at_level(logging.WARNING, logger="triage_node.receive.fast.storage_phase"):
        assoc.dul.socket.socket.sendall(pdu)
        wait_for(lambda: assoc.is_aborted, timeout=10, interval=0.01, what=f"an A-ABORT for {name}")
    lines = [r for r in caplog.records if "aborted by this node" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in caplog.records]
    assoc.kill()
    wait_for(lambda: not scp.ae.active_associations, timeout=10, interval=0.01, what="the association to end")
    assert echoscu(scp.port).returncode == 0  # and the SCP goes on serving
    assert storescu(scp.port, series[0]).returncode == 0


def test_a_connection_dropped_in_the_middle_of_an_instance_leaves_nothing(scp: StorageSCP, series: list[Path]) -> None:
    assoc = _associate(scp.port)
    assert _phase_of(scp) is not None
    command = _command(C_STORE_RQ, 0x0000, CT, str(dcmread(series[0]).SOPInstanceUID))
    sock = assoc.dul.socket.socket
    sock.sendall(p_data_pdus(1, command, 0)[0])
    sock.sendall(struct.pack(">BBIIBB", 4, 0, 6 + 1000, 2 + 1000, 1, 0x00) + b"\0" * 1000)  # part of a data set
    incoming = scp.spool.root / ".incoming"
    wait_for(lambda: incoming.is_dir() and any(incoming.iterdir()), timeout=5, interval=0.01, what="the file to start")
    sock.close()
    assoc.kill()
    wait_for(lambda: not scp.ae.active_associations, timeout=10, interval=0.01, what="the association to end")
    assert not [p for p in _stored_files(scp) if p.suffix == ".dcm" or p.name.endswith(".tmp")]


def test_a_write_error_while_receiving_gives_out_of_resources_and_no_partial_file(
    scp: StorageSCP, series: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    assoc = _associate(scp.port)
    real_write = os.write

    def full_disk(fd: int, data: bytes) -> int:
        if ".incoming" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    announced = []
    real_keep = Incoming.keep

    def keep(self: Incoming, rel: str) -> Path:
        announced.append(scp.committer._arriving)
        return real_keep(self, rel)

    monkeypatch.setattr(Incoming, "keep", keep)
    assert int(assoc.send_c_store(dcmread(series[0])).Status) == 0xA700
    assert announced == [1] and scp.committer._arriving == 0  # announced to the committer, then withdrawn
    monkeypatch.undo()
    assert int(assoc.send_c_store(dcmread(series[1])).Status) == 0
    assoc.release()
    assert [p.name.split(".")[0] for p in _stored_files(scp) if p.suffix == ".dcm"] == [
        str(dcmread(series[1]).SOPInstanceUID).split(".")[0]
    ]
    assert not list((scp.spool.root / ".incoming").iterdir())


def test_a_uid_with_path_characters_is_stored_under_a_safe_name(scp: StorageSCP, series: list[Path]) -> None:
    assoc = _associate(scp.port)
    ds = dcmread(series[0])
    ds.SOPInstanceUID = "1.2.3/../../evil"
    assert int(assoc.send_c_store(ds).Status) == 0  # as pynetdicom's path answers: stored, never outside the spool
    assoc.release()
    (stored,) = [p for p in _stored_files(scp) if p.suffix == ".dcm"]
    assert stored.name.startswith("1.2.3.....") and scp.spool.root in stored.parents


def test_command_and_response_encoding() -> None:
    rsp = encode_response(0x8001, 5, 0xA700, CT, "1.2.3")
    parsed = parse_command(rsp)
    assert (parsed.field, parsed.sop_class_uid, parsed.sop_instance_uid) == (0x8001, CT, "1.2.3")
    pdus = p_data_pdus(3, rsp, 64)  # a peer with a tiny maximum PDU gets fragments, the last one flagged
    assert len(pdus) > 1 and all(len(p) - 6 <= 64 for p in pdus)
    controls = [p[11] for p in pdus]
    assert controls[:-1] == [0x01] * (len(pdus) - 1) and controls[-1] == 0x03
    assert b"".join(p[12:] for p in pdus) == rsp
    with pytest.raises(storage_phase.ProtocolError):
        parse_command(b"\x00\x00\x00\x01\x04\x00\x00\x00")  # a value running past the end
