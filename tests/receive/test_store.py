"""The receive hot path in process: header parsing, the Core row recording with its study-id cache, group commit."""

from __future__ import annotations

import datetime as dt
from io import BytesIO
from pathlib import Path

import pytest
from peers import storescu
from pydicom import dcmread
from sqlalchemy import func, select

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head
from triage_node.receive.header import Refused, parse_header
from triage_node.receive.records import GroupCommitter, Pending, RowIds, record_instance
from triage_node.receive.spool import Spool, sha256
from triage_node.worklist.db import make_engine, migrate, session_factory, transaction
from triage_node.worklist.models import Instance, Job, Series, Study

CT = "1.2.840.10008.5.1.4.1.1.2"
NOW = dt.datetime(2026, 1, 1, 8, 0, tzinfo=dt.UTC)


@pytest.fixture
def series4(tmp_path: Path) -> list[bytes]:
    hu, spacing = phantom_head(4, 32)
    return [p.read_bytes() for p in write_series(tmp_path / "s", hu, spacing, seed=21)]


@pytest.fixture
def sessions(db_url: str):  # type: ignore[no-untyped-def]
    engine = make_engine(db_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def test_header_fields_match_pydicom_and_descriptive_ones_are_read_on_demand(series4) -> None:  # type: ignore[no-untyped-def]
    header = parse_header(series4[1], CT, None)
    ds = dcmread(BytesIO(series4[1]))
    assert (header.sop_instance_uid, header.study_uid, header.series_uid) == (
        ds.SOPInstanceUID,
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
    )
    assert (header.instance_number, header.expected_instances) == (2, 4)
    assert "patient_name" not in vars(header)  # not converted yet
    assert header.patient_name == str(ds.PatientName)
    assert (header.modality, header.body_part, header.series_number) == ("CT", "HEAD", 2)


def test_pixel_bytes_cut_short_in_the_stream_are_refused(series4) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(Refused, match="PixelData holds") as info:
        parse_header(series4[0][:-100], CT, None)
    assert info.value.status == 0xA900


def test_record_instance_counts_dedups_versions_and_reopens(sessions, series4) -> None:  # type: ignore[no-untyped-def]
    cache = RowIds()
    headers = [parse_header(d, CT, None) for d in series4]

    def record(i: int, sha: str | None = None):  # type: ignore[no-untyped-def]
        with transaction(sessions) as s:
            return record_instance(s, headers[i], f"p{i}", len(series4[i]), sha or sha256(series4[i]), "AE", NOW, cache)

    assert [record(i).complete_by_count for i in range(4)] == [False, False, False, True]
    assert record(0).duplicate
    changed = record(1, sha="f" * 64)
    assert changed.new_version and not changed.duplicate
    with transaction(sessions) as s:
        series = s.scalars(select(Series)).one()
        assert (series.received_instances, series.expected_instances) == (4, 4)
        series.state = "complete"
    reopened = record(2, sha="e" * 64)
    assert reopened.reopened
    with sessions() as s:
        series = s.scalars(select(Series)).one()
        assert (series.state, series.version, series.received_instances) == ("receiving", 2, 4)
        assert s.scalar(select(func.count()).select_from(Instance).where(Instance.superseded)) == 2
        assert s.scalar(select(func.count()).select_from(Study)) == 1


def test_a_stale_study_id_in_the_cache_is_looked_up_again(sessions, series4) -> None:  # type: ignore[no-untyped-def]
    header = parse_header(series4[0], CT, None)
    cache = RowIds()
    cache.put(header.study_uid, 999)  # no such row
    with transaction(sessions) as s:
        record_instance(s, header, "p0", 1, "a" * 64, "AE", NOW, cache)
    with sessions() as s:
        study_id = s.scalars(select(Study.id)).one()
    assert cache.get(header.study_uid) == study_id


def test_group_commit_records_a_group_in_one_transaction(tmp_path, sessions, series4) -> None:  # type: ignore[no-untyped-def]
    spool = Spool(tmp_path / "spool")
    committer = GroupCommitter(sessions, lambda: NOW)
    group = []
    for data in series4:
        header = parse_header(data, CT, None)
        incoming = spool.incoming()
        incoming.add(data)
        digest = incoming.hexdigest()
        assert digest == sha256(data)
        rel = spool.relative_path(header, digest)
        incoming.keep(rel)
        group.append(Pending(header, rel, len(data), digest, "AE"))
    committer._commit_group(group)
    assert (committer.groups, committer.committed) == (1, 4)
    assert all(p.done.is_set() and p.error is None for p in group)
    assert group[-1].result is not None and group[-1].result.complete_by_count
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 4
        assert s.scalars(select(Job.state)).one() == "complete"


def test_a_failed_folder_fsync_refuses_the_instance_and_records_nothing(scp_env, series4, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import triage_node.receive.spool as spool

    def failing(path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(spool, "_fsync_dir", failing)
    data = memoryview(series4[0])
    meta_end = 144 + int.from_bytes(series4[0][140:144], "little")
    status = scp_env.scp.store("AE", CT, "", CT, "1.2.840.10008.1.2.1", data, meta_end)
    assert status == 0xA700
    with scp_env.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 0
    assert not [p for p in scp_env.spool.root.rglob("*") if p.is_file() and p.name.endswith(".tmp")]


def test_four_parallel_senders_are_all_stored_once(scp_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import threading

    hu, spacing = phantom_head(24, 64)
    paths = write_series(tmp_path / "par", hu, spacing, seed=22)
    errors: list[BaseException] = []

    def send(part: list[Path]) -> None:
        try:
            storescu(scp_env.port, part)
        except AssertionError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(paths[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    with scp_env.sessions() as s:
        assert s.scalar(select(func.count(func.distinct(Instance.sop_instance_uid)))) == 24
        assert s.scalars(select(Series.received_instances)).one() == 24
        assert s.scalars(select(Job.state)).one() == "complete"
    committer = scp_env.scp.committer
    assert committer.committed == 24 and 1 <= committer.groups <= 24


@pytest.mark.parametrize("ts", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70"])
@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498.1234567890123456789"])
def test_file_meta_prefix_is_byte_for_byte_what_pynetdicom_writes(ts: str, sop_instance: str) -> None:
    from pynetdicom.dsutils import create_file_meta, encode_file_meta

    from triage_node.receive.header import file_meta_prefix

    meta = create_file_meta(sop_class_uid=CT, sop_instance_uid=sop_instance, transfer_syntax=ts)
    assert file_meta_prefix(CT, sop_instance, ts) == b"\x00" * 128 + b"DICM" + encode_file_meta(meta)


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR_small_implicit.dcm", "MR_small.dcm"])
def test_image_attributes_are_read_raw_in_every_byte_order(name: str) -> None:
    from pydicom.data import get_testdata_file

    from triage_node.receive.header import _raw_us

    found = get_testdata_file(name, download=False)
    assert found, f"pydicom's bundled test file {name} is missing"
    ds = dcmread(str(found), defer_size=1024)
    assert (_raw_us(ds, "Rows"), _raw_us(ds, "Columns"), _raw_us(ds, "BitsAllocated")) == (64, 64, 16)
