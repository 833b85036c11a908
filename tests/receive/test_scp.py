"""The Storage SCP against real senders: DCMTK storescu/echoscu for normal traffic, pynetdicom for crafted bad input."""

from __future__ import annotations

import subprocess
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from peers import echoscu, find_tool, storescu
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid
from pynetdicom import AE
from sqlalchemy import func, select

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head
from triage_node.config import SCP, Caller
from triage_node.receive.scp import ReceiveHooks, StorageSCP
from triage_node.receive.spool import Spool
from triage_node.series.geometry import pixels, plan
from triage_node.worklist.models import Instance, Job, Series

CT = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture
def small_series(tmp_path: Path) -> list[Path]:
    hu, spacing = phantom_head(8, 64)
    return write_series(tmp_path / "small", hu, spacing, seed=7, unsigned=True)


def count(sessions, model) -> int:  # type: ignore[no-untyped-def]
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)))


def send_dataset(port: int, ds: Dataset, ts: str = ExplicitVRLittleEndian, sop_class: str = CT) -> int:
    """Send one dataset with pynetdicom (lets a test craft what DCMTK would refuse to send); returns the status."""
    ae = AE("BADSENDER")
    ae.add_requested_context(sop_class, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE_NODE")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status)
    finally:
        assoc.release()


def test_echoscu_succeeds(scp_env) -> None:  # type: ignore[no-untyped-def]
    proc = echoscu(scp_env.port)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("scp_backend", ["sqlite", "postgresql"])  # counts, dedup, versions
def test_storescu_series_is_stored_durably_and_completes_by_declared_size(scp_env, small_series) -> None:  # type: ignore[no-untyped-def]
    storescu(scp_env.port, small_series[0].parent)
    with scp_env.sessions() as s:
        rows = s.scalars(select(Instance)).all()
        assert len(rows) == len(small_series)
        for row in rows:
            stored = scp_env.spool.root / row.path
            assert stored.stat().st_size == row.size
            assert dcmread(stored).SOPInstanceUID == row.sop_instance_uid
        series = s.scalars(select(Series)).one()
        assert (series.state, series.received_instances, series.expected_instances) == ("complete", 8, 8)
        assert s.scalars(select(Job)).one().state == "complete"
    assert not list(scp_env.spool.root.rglob("*.tmp"))


@pytest.mark.parametrize("scp_backend", ["sqlite", "postgresql"])  # counts, dedup, versions
def test_same_instance_twice_is_idempotent_and_changed_bytes_make_a_new_version(
    scp_env, small_series, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    storescu(scp_env.port, small_series[:1])
    storescu(scp_env.port, small_series[:1])
    assert count(scp_env.sessions, Instance) == 1
    assert len(list(scp_env.spool.root.rglob("*.dcm"))) == 1

    ds = dcmread(small_series[0])
    arr = ds.pixel_array.copy()
    arr[0, 0] += 1
    ds.PixelData = arr.tobytes()
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed)
    storescu(scp_env.port, [changed])
    with scp_env.sessions() as s:
        rows = s.scalars(select(Instance).order_by(Instance.id)).all()
        assert [r.superseded for r in rows] == [True, False]
        assert s.scalars(select(Series)).one().received_instances == 1


def test_unlisted_calling_ae_is_rejected(tmp_path, small_series, transport) -> None:  # type: ignore[no-untyped-def]
    from peers import free_port

    from triage_node.worklist.db import make_engine, migrate, session_factory

    # SQLite only: the calling AE policy is the subject; nothing reaches the database
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    callers = (Caller(ae_title="PACS"), Caller(ae_title="CT1", host="10.9.9.9"))
    cfg = SCP(port=free_port(), allowed_callers=callers, transport=transport)
    scp = StorageSCP(cfg, Spool(tmp_path / "spool"), session_factory(engine), ReceiveHooks())
    scp.start()
    try:
        assert echoscu(scp.port, calling="PACS").returncode == 0
        rejected = echoscu(scp.port, calling="STRANGER")
        assert rejected.returncode != 0
        assert "Calling AE Title Not Recognized" in rejected.stderr or "Association Rejected" in rejected.stderr
        # listed title, but pinned to another host
        assert echoscu(scp.port, calling="CT1").returncode != 0
        # wrong called AE title
        assert echoscu(scp.port, calling="PACS", called="SOMEONE_ELSE").returncode != 0
    finally:
        scp.stop()
        engine.dispose()


def _compress(tool: str, flags: list[str], src: Path, dst: Path) -> Path:
    exe = find_tool(tool)
    subprocess.run([exe, *flags, str(src), str(dst)], check=True, capture_output=True)
    return dst


@pytest.mark.parametrize(
    ("tool", "flags", "propose", "lossless"),
    [
        (
            "dcmcjpeg",
            ["+el"],
            None,
            True,
        ),  # JPEG Lossless process 14 (.57): storescu cannot propose it, pynetdicom sends
        ("dcmcjpeg", ["+e1"], "-xs", True),  # JPEG Lossless SV1 (.70)
        ("dcmcjpeg", ["+ee"], "-xx", False),  # JPEG Extended 12-bit (.51)
        ("dcmcjpls", ["+el"], "-xt", True),  # JPEG-LS lossless (.80)
        ("dcmcjpls", ["+en"], "-xu", False),  # JPEG-LS near-lossless (.81)
        ("dcmcrle", [], "-xr", True),  # RLE (.5)
        ("dcmconv", ["+td"], "-xd", True),  # Deflated explicit VR little endian
        ("dcmconv", ["+tb"], "-xb", True),  # Explicit VR big endian
        ("dcmconv", ["+ti"], "-xi", True),  # Implicit VR little endian
    ],
)
def test_compressed_and_other_transfer_syntaxes_are_received_and_decoded(  # type: ignore[no-untyped-def]
    scp_env, tmp_path, tool, flags, propose, lossless
) -> None:
    hu, spacing = phantom_head(4, 64)
    hu = np.clip(hu, -1024, 3000)
    src = write_series(tmp_path / "src", hu, spacing, seed=11, unsigned=True, extra={"BitsStored": 12, "HighBit": 11})
    out = [_compress(tool, flags, p, tmp_path / f"c{i}.dcm") for i, p in enumerate(src)]
    ts = str(dcmread(out[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    if propose is None:
        for path in out:
            assert send_dataset(scp_env.port, dcmread(path), ts=ts) == 0
    else:
        storescu(scp_env.port, out, extra=[propose])
    with scp_env.sessions() as s:
        rows = s.scalars(select(Instance)).all()
        assert len(rows) == 4
        assert {r.transfer_syntax_uid for r in rows} == {ts}
        stored = [dcmread(scp_env.spool.root / r.path) for r in rows]
    planes = np.stack([pixels(sl) for sl in plan(stored)])
    if lossless:
        np.testing.assert_array_equal(planes, hu.astype(np.float32))
    else:
        assert np.abs(planes - hu).mean() < 8


@pytest.mark.parametrize(
    ("name", "propose", "ts"),
    [
        ("MR_small_jp2klossless.dcm", "-xv", "1.2.840.10008.1.2.4.90"),
        ("MR_small_jpeg_ls_lossless.dcm", "-xt", "1.2.840.10008.1.2.4.80"),
        ("MR_small_RLE.dcm", "-xr", "1.2.840.10008.1.2.5"),
        ("MR_small_bigendian.dcm", "-xb", "1.2.840.10008.1.2.2"),
    ],
)
def test_pydicom_compressed_mr_files_are_received(scp_env, name, propose, ts) -> None:  # type: ignore[no-untyped-def]
    from pydicom.data import get_testdata_file

    found = get_testdata_file(name, download=False)
    assert found, f"pydicom's bundled test file {name} is missing"
    storescu(scp_env.port, [Path(str(found))], extra=[propose])
    with scp_env.sessions() as s:
        row = s.scalars(select(Instance)).one()
    assert row.transfer_syntax_uid == ts
    assert dcmread(scp_env.spool.root / row.path).pixel_array.shape == (64, 64)


def test_jpeg2000_lossy_encoded_by_pydicom_is_received(scp_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    hu, spacing = phantom_head(3, 64)
    src = write_series(tmp_path / "src", hu, spacing, seed=12, unsigned=True)
    ds = dcmread(src[0])
    ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    assert send_dataset(scp_env.port, ds, ts=JPEG2000Lossless) == 0
    with scp_env.sessions() as s:
        row = s.scalars(select(Instance)).one()
    np.testing.assert_array_equal(dcmread(scp_env.spool.root / row.path).pixel_array, dcmread(src[0]).pixel_array)


# -- bad input: one status each, nothing stored, the SCP keeps serving --------------------------------------------


def _good(tmp_path: Path) -> Dataset:
    hu, spacing = phantom_head(3, 32)
    return dcmread(write_series(tmp_path / "good", hu, spacing, seed=13)[0])


@pytest.mark.parametrize(
    ("mutate", "status"),
    [
        (lambda ds: delattr(ds, "PixelData"), 0xA900),
        (lambda ds: setattr(ds, "PixelData", ds.PixelData[:100]), 0xA900),
        (lambda ds: delattr(ds, "StudyInstanceUID"), 0xA900),
        (lambda ds: delattr(ds, "SeriesInstanceUID"), 0xA900),
        (lambda ds: setattr(ds, "Rows", 60000), 0xA900),
        (lambda ds: delattr(ds, "Rows"), 0xA900),
        (lambda ds: setattr(ds, "BitsAllocated", 12), 0xA900),
    ],
    ids=[
        "missing-pixeldata",
        "short-pixeldata",
        "missing-study-uid",
        "missing-series-uid",
        "absurd-rows",
        "missing-rows",
        "bits-allocated-12",
    ],
)
def test_bad_dataset_gets_a_failure_status_and_nothing_is_stored(scp_env, tmp_path, mutate, status, caplog) -> None:  # type: ignore[no-untyped-def]
    ds = _good(tmp_path)
    mutate(ds)
    assert send_dataset(scp_env.port, ds) == status
    assert count(scp_env.sessions, Instance) == 0
    assert any("refused with 0x" in r.getMessage() for r in caplog.records)
    assert echoscu(scp_env.port).returncode == 0  # still serving


def test_missing_sop_instance_uid_is_refused(tmp_path) -> None:
    # pynetdicom and storescu both refuse to send such an object, so the parser is tested directly.
    from triage_node.receive.header import Refused, parse_header

    ds = _good(tmp_path)
    ds.SOPInstanceUID = ""
    with pytest.raises(Refused, match="SOPInstanceUID is missing") as info:
        parse_header(_with_meta(ds), CT, None)
    assert info.value.status == 0xA900


def _with_meta(ds: Dataset) -> bytes:
    from pydicom.dataset import FileMetaDataset

    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CT
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_unparsable_bytes_are_cannot_understand() -> None:
    from triage_node.receive.header import Refused, parse_header

    ds = Dataset()
    ds.SOPClassUID = CT
    raw = _with_meta(ds)
    with pytest.raises(Refused) as info:
        parse_header(raw[:-3] + b"\xff\xff\xff" + raw[:200], CT, None)
    assert info.value.status in (0xC210, 0xA900)
    with pytest.raises(Refused) as info:
        parse_header(b"DICM" + b"\x00" * 7, CT, None)
    assert info.value.status == 0xC210


def test_sop_class_that_does_not_match_the_context_is_refused(tmp_path) -> None:
    from triage_node.receive.header import Refused, parse_header

    ds = _good(tmp_path)
    with pytest.raises(Refused, match="does not match the presentation context") as info:
        parse_header(_with_meta(ds), "1.2.840.10008.5.1.4.1.1.4", None)
    assert info.value.status == 0xA900


def test_disk_below_minimum_answers_out_of_resources(tmp_path, small_series, transport) -> None:  # type: ignore[no-untyped-def]
    from peers import free_port

    from triage_node.worklist.db import make_engine, migrate, session_factory

    # SQLite only: the disk guard refuses before any row is written
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    sessions = session_factory(engine)
    cfg = SCP(port=free_port(), transport=transport)
    scp = StorageSCP(cfg, Spool(tmp_path / "spool"), sessions, ReceiveHooks(disk_ok=lambda: False))
    scp.start()
    try:
        proc = storescu(scp.port, small_series[:1], check=False, extra=["-v"])
        assert "Refused: OutOfResources" in proc.stderr
        assert count(sessions, Instance) == 0
    finally:
        scp.stop()
        engine.dispose()


def test_non_image_sop_class_is_not_negotiated(scp_env) -> None:  # type: ignore[no-untyped-def]
    ae = AE("SENDER")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.88.33", ExplicitVRLittleEndian)  # Comprehensive SR
    assoc = ae.associate("127.0.0.1", scp_env.port, ae_title="TRIAGE_NODE")
    try:
        assert not assoc.is_established or not assoc.accepted_contexts
    finally:
        if assoc.is_established:
            assoc.release()


def test_a_peer_that_never_completes_negotiation_does_not_hold_up_the_stop(tmp_path, transport) -> None:  # type: ignore[no-untyped-def]
    """Garbage instead of an A-ASSOCIATE-RQ gets an A-ABORT at once; it and a request cut off halfway leave threads
    that pynetdicom keeps for the ACSE timeout, and the stop must not wait for them (a stop waits only for
    established associations, which can have a C-STORE in flight)."""
    import time

    from peers import free_port
    from reliability_support import garbage_association, half_association

    from triage_node.worklist.db import make_engine, migrate, session_factory

    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    cfg = SCP(port=free_port(), acse_timeout_s=30, transport=transport)
    scp = StorageSCP(cfg, Spool(tmp_path / "spool"), session_factory(engine), ReceiveHooks())
    scp.start()
    try:
        assert garbage_association(scp.port)[:1] == b"\x07"  # A-ABORT
        half_association(scp.port)
        assert echoscu(scp.port).returncode == 0
    finally:
        started = time.monotonic()
        scp.stop()
        stopped_in = time.monotonic() - started
        engine.dispose()
    assert stopped_in < cfg.acse_timeout_s / 3, f"the stop waited {stopped_in:.1f} s"
