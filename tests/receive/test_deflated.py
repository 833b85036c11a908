"""Deflated Explicit VR Little Endian (1.2.840.10008.1.2.1.99) as a PACS sends it: the files are deflated already,
the sender proposes only that transfer syntax and sends their bytes. Both receive transports (fast and stock) must
store the instances and the pipeline must decode them: the pixel-length check measures the inflated data set, never
the compressed stream. Rejected associations log the called AE title and one reason."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from peers import echoscu, find_tool, free_port, storescu
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head
from triage_node.config import SCP, Caller
from triage_node.pipeline import _read
from triage_node.receive.scp import ReceiveHooks, StorageSCP
from triage_node.receive.spool import Spool
from triage_node.series.geometry import pixels, plan
from triage_node.worklist.db import make_engine, migrate, session_factory
from triage_node.worklist.models import Instance, Series

CT = "1.2.840.10008.5.1.4.1.1.2"

# A storescu profile that proposes CT Image Storage in Deflated Explicit VR Little Endian and nothing else.
DEFLATED_ONLY_PROFILE = """\
[[TransferSyntaxes]]
[Deflated]
TransferSyntax1 = DeflatedLittleEndianExplicit
[[PresentationContexts]]
[CTDeflated]
PresentationContext1 = CTImageStorage\\Deflated
[[Profiles]]
[DeflatedOnly]
PresentationContexts = CTDeflated
"""


@dataclass
class Receiver:
    scp: StorageSCP
    sessions: sessionmaker[Session]
    spool: Spool


def _receiver(tmp_path: Path, **scp: object) -> Iterator[Receiver]:
    # SQLite only: the subject is the transports' receive path (the fast SQL path is SQLite's), not the database
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    sessions = session_factory(engine)
    spool = Spool(tmp_path / "spool")
    server = StorageSCP(SCP(host="127.0.0.1", port=free_port(), **scp), spool, sessions, ReceiveHooks())  # type: ignore[arg-type]
    server.start()
    try:
        yield Receiver(server, sessions, spool)
    finally:
        server.stop()
        engine.dispose()


@pytest.fixture
def receiver(tmp_path: Path, transport: str) -> Iterator[Receiver]:
    yield from _receiver(tmp_path, transport=transport)


@pytest.fixture
def deflated(tmp_path: Path) -> tuple[list[Path], np.ndarray]:
    """Four 256x256 CT slices, deflated on disk by DCMTK (dcmconv +td): Pixel Data of 131072 bytes each (above the
    parser's deferred-read size, as in a real series), in a deflated stream far shorter than that."""
    hu, spacing = phantom_head(4, 256)
    hu = np.clip(hu, -1024, 3000)
    src = write_series(tmp_path / "src", hu, spacing, seed=21, unsigned=True, extra={"BitsStored": 12, "HighBit": 11})
    exe = find_tool("dcmconv")
    out = []
    for i, path in enumerate(src):
        dst = tmp_path / f"deflated{i}.dcm"
        subprocess.run([exe, "+td", str(path), str(dst)], check=True, capture_output=True)
        out.append(dst)
    assert dcmread(out[0], stop_before_pixels=True).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert all(p.stat().st_size < 256 * 256 * 2 // 2 for p in out)
    return out, hu


def _check_stored_and_decoded(r: Receiver, hu: np.ndarray, n: int) -> None:
    with r.sessions() as s:
        rows = s.scalars(select(Instance)).all()
        assert len(rows) == n
        assert {row.transfer_syntax_uid for row in rows} == {DeflatedExplicitVRLittleEndian}
        assert s.scalars(select(Series)).one().received_instances == n
        paths = [r.spool.root / row.path for row in rows]
    # what the pipeline does with them: headers first, then pixels slice by slice
    datasets = _read(paths)
    planes = np.stack([pixels(sl) for sl in plan(datasets)])
    np.testing.assert_array_equal(planes, hu[: len(planes)].astype(np.float32))


def test_storescu_proposing_only_deflated_is_stored_and_decoded(receiver, deflated, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    files, hu = deflated
    profile = tmp_path / "deflated.cfg"
    profile.write_text(DEFLATED_ONLY_PROFILE)
    with caplog.at_level(logging.WARNING):
        proc = storescu(receiver.scp.port, files, extra=["-xf", str(profile), "DeflatedOnly", "-v", "+v"], check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "=DeflatedLittleEndianExplicit" in proc.stderr  # the one transfer syntax proposed
    assert not [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    _check_stored_and_decoded(receiver, hu, len(files))


def test_the_files_own_deflated_bytes_are_stored_byte_for_byte(receiver, deflated) -> None:  # type: ignore[no-untyped-def]
    """pynetdicom sends a file given by path as it is on disk (no decoding, no re-deflating)."""
    files, hu = deflated
    ae = AE("PACS")
    ae.add_requested_context(CT, DeflatedExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", receiver.scp.port, ae_title="TRIAGE_NODE")
    assert assoc.is_established
    try:
        statuses = [int(assoc.send_c_store(path).Status) for path in files]
    finally:
        assoc.release()
    assert statuses == [0] * len(files)
    _check_stored_and_decoded(receiver, hu, len(files))
    with receiver.sessions() as s:
        stored = {row.sop_instance_uid: receiver.spool.root / row.path for row in s.scalars(select(Instance))}
    for path in files:
        body = path.read_bytes()
        uid = dcmread(path, stop_before_pixels=True).SOPInstanceUID
        kept = stored[uid].read_bytes()
        # the data set after the file meta is the sender's own deflated stream (padded to an even length)
        assert kept.rstrip(b"\x00").endswith(body.rstrip(b"\x00")[-512:])


def test_a_rejected_association_logs_the_called_title_and_the_one_reason(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    gen = _receiver(tmp_path, allowed_callers=(Caller(ae_title="PACS"), Caller(ae_title="CT1", host="10.9.9.9")))
    r = next(gen)
    try:
        with caplog.at_level(logging.WARNING, logger="triage_node.receive.scp"):
            assert echoscu(r.scp.port, calling="PACS", called="TRIAGE").returncode != 0
            assert echoscu(r.scp.port, calling="STRANGER", called="TRIAGE_NODE").returncode != 0
            assert echoscu(r.scp.port, calling="CT1", called="TRIAGE_NODE").returncode != 0
        lines = [rec.getMessage() for rec in caplog.records if "association rejected" in rec.getMessage()]
    finally:
        next(gen, None)
    assert len(lines) == 3, lines
    assert "calling AE 'PACS'" in lines[0] and "called AE 'TRIAGE'" in lines[0]
    assert lines[0].endswith("called AE title 'TRIAGE' is not ours ('TRIAGE_NODE')")
    assert "called AE 'TRIAGE_NODE'" in lines[1]
    assert lines[1].endswith("calling AE title 'STRANGER' is not in scp.allowed_callers")
    assert lines[2].endswith("calling AE title 'CT1' is not in scp.allowed_callers for address 127.0.0.1")
    assert all("DEFAULT" not in line and " or " not in line for line in lines)


def test_a_rejection_for_the_association_limit_says_so(tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    gen = _receiver(tmp_path, max_associations=1)
    r = next(gen)
    try:
        ae = AE("HOLDER")
        ae.add_requested_context("1.2.840.10008.1.1")
        held = ae.associate("127.0.0.1", r.scp.port, ae_title="TRIAGE_NODE")
        assert held.is_established
        try:
            with caplog.at_level(logging.WARNING, logger="triage_node.receive.scp"):
                assert echoscu(r.scp.port, calling="SECOND").returncode != 0
        finally:
            held.release()
        lines = [rec.getMessage() for rec in caplog.records if "association rejected" in rec.getMessage()]
    finally:
        next(gen, None)
    assert lines == [
        "association rejected: calling AE 'SECOND' from 127.0.0.1, called AE 'TRIAGE_NODE': "
        "association limit reached (scp.max_associations 1)"
    ]
