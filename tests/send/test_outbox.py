"""The outbox against a real PACS (Orthanc started by the test): delivery into the source study, retry while the PACS
is down and exactly-once delivery when it is back, crash recovery, dead letters, resend."""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import phantom
import pydicom
import pytest
from peers import free_port
from peers_orthanc import Modality, Orthanc, start_orthanc
from scripted_scp import ScriptedSCP
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage_node.config import Destination
from triage_node.results.build import ResultFile
from triage_node.send.outbox import backoff, deliver_due, enqueue, resend
from triage_node.send.scu import Outgoing, SendResult
from triage_node.worklist import states
from triage_node.worklist.db import transaction
from triage_node.worklist.models import Job, JobState, OutboxItem, OutboxState

NOW = dt.datetime(2026, 1, 1, 9, 0, 0, tzinfo=dt.UTC)
CALLING = "TRIAGE_NODE"


@pytest.fixture
def orthanc(tmp_path: Path, case: phantom.Case) -> Iterator[Orthanc]:
    """Orthanc holding the phantom source series (uploaded through its REST API)."""
    pacs = start_orthanc(tmp_path / "orthanc", modalities={"triage": Modality(CALLING)})
    try:
        for p in case.paths:
            httpx.post(f"{pacs.url}/instances", content=p.read_bytes(), timeout=30).raise_for_status()
        yield pacs
    finally:
        pacs.stop(graceful=False)


def _pacs(port: int, **kw: object) -> Destination:
    return Destination(name="pacs", ae_title=str(kw.pop("ae_title", "ORTHANC")), host="127.0.0.1", port=port, **kw)


def _queue(sessions: sessionmaker[Session], job_id: int, files: list[ResultFile], *dests: Destination) -> None:
    """What the pipeline does: enqueue while processing, then results_ready."""
    with transaction(sessions) as s:
        job = s.get(Job, job_id)
        assert job is not None
        enqueue(s, job, files, dests, NOW)
        s.flush()
        states.transition(s, job, JobState.RESULTS_READY, now=NOW)


def _rows(sessions: sessionmaker[Session]) -> list[OutboxItem]:
    with sessions() as s:
        return list(s.scalars(select(OutboxItem).order_by(OutboxItem.id)))


def _job_state(sessions: sessionmaker[Session], job_id: int) -> str:
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.state


def test_enqueue_is_idempotent_per_job_destination_and_kind(
    sessions: sessionmaker[Session], new_job: Callable[..., int], files: list[ResultFile]
) -> None:
    job_id = new_job()
    a, b = _pacs(1), Destination(name="archive", ae_title="ARCHIVE", host="127.0.0.1", port=2)
    for _ in range(2):
        with transaction(sessions) as s:
            job = s.get(Job, job_id)
            assert job is not None
            enqueue(s, job, files, [a, b], NOW)
    rows = _rows(sessions)
    assert sorted((r.destination, r.kind) for r in rows) == sorted(
        (d, k) for d in ("pacs", "archive") for k in ("seg", "map", "sr")
    )
    assert {r.state for r in rows} == {OutboxState.PENDING.value}


def test_seg_map_and_sr_arrive_in_the_source_study(
    sessions: sessionmaker[Session], new_job: Callable[..., int], files: list[ResultFile], orthanc: Orthanc,
    case: phantom.Case,
) -> None:
    job_id = new_job()
    _queue(sessions, job_id, files, _pacs(orthanc.dicom_port))
    assert deliver_due(sessions, [_pacs(orthanc.dicom_port)], CALLING, NOW) == 3

    assert orthanc.instance_count() == len(case.paths) + 3
    (study_id,) = orthanc.get("/studies")
    by_kind = {f.kind: f for f in files}
    for f in files:
        instance = orthanc.find_instance(f.sop_instance_uid)
        assert instance is not None, f"{f.kind} not stored"
        assert orthanc.get(f"/instances/{instance}/study")["ID"] == study_id
    series = orthanc.get(f"/studies/{study_id}")["Series"]
    modalities = {orthanc.get(f"/series/{s}")["MainDicomTags"]["Modality"] for s in series}
    assert modalities == {"CT", "SEG", "SR"}
    # The SEG as Orthanc stored it references source instances Orthanc holds, in the slices of the mask.
    seg_id = orthanc.find_instance(by_kind["seg"].sop_instance_uid)
    assert seg_id is not None
    seg = pydicom.dcmread(io.BytesIO(orthanc.file(seg_id)))
    refs = [fg.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for fg in seg.PerFrameFunctionalGroupsSequence]
    mask_slices = [z for z in range(len(case.sources)) if phantom.hemorrhage_mask()[z].any()]
    assert sorted(refs) == sorted(str(case.sources[z].SOPInstanceUID) for z in mask_slices)
    for uid in refs:
        assert orthanc.find_instance(uid) is not None

    rows = _rows(sessions)
    assert {(r.state, r.attempts, r.last_status) for r in rows} == {(OutboxState.DELIVERED.value, 1, 0)}
    assert all(r.delivered_at == NOW for r in rows)
    assert _job_state(sessions, job_id) == JobState.DELIVERED.value


def test_pacs_down_items_wait_and_retry_then_arrive_exactly_once(
    sessions: sessionmaker[Session], new_job: Callable[..., int], files: list[ResultFile], orthanc: Orthanc,
    case: phantom.Case,
) -> None:
    dest = _pacs(orthanc.dicom_port, backoff_initial_s=5, backoff_max_s=60)
    job_id = new_job()
    _queue(sessions, job_id, files, dest)
    orthanc.stop(graceful=False)  # the PACS crashes

    assert deliver_due(sessions, [dest], CALLING, NOW) == 0
    rows = _rows(sessions)
    assert {(r.state, r.attempts) for r in rows} == {(OutboxState.PENDING.value, 1)}
    assert {r.next_attempt_at for r in rows} == {NOW + dt.timedelta(seconds=5)}
    assert all((r.last_error or "").startswith("no association") for r in rows)
    # Not due yet: nothing is tried.
    assert deliver_due(sessions, [dest], CALLING, NOW + dt.timedelta(seconds=4)) == 0
    assert {r.attempts for r in _rows(sessions)} == {1}
    # Second failure doubles the delay.
    assert deliver_due(sessions, [dest], CALLING, NOW + dt.timedelta(seconds=5)) == 0
    assert {r.next_attempt_at for r in _rows(sessions)} == {NOW + dt.timedelta(seconds=15)}
    assert _job_state(sessions, job_id) == JobState.RESULTS_READY.value

    orthanc.start()
    assert deliver_due(sessions, [dest], CALLING, NOW + dt.timedelta(seconds=15)) == 3
    assert deliver_due(sessions, [dest], CALLING, NOW + dt.timedelta(hours=1)) == 0
    assert orthanc.instance_count() == len(case.paths) + 3
    for f in files:
        assert orthanc.find_instance(f.sop_instance_uid) is not None
    assert {(r.state, r.attempts) for r in _rows(sessions)} == {(OutboxState.DELIVERED.value, 3)}
    assert _job_state(sessions, job_id) == JobState.DELIVERED.value


def test_crash_while_sending_leaves_rows_sending_and_the_restart_delivers_them(
    sessions: sessionmaker[Session], new_job: Callable[..., int], files: list[ResultFile], orthanc: Orthanc,
    case: phantom.Case,
) -> None:
    dest = _pacs(orthanc.dicom_port)
    job_id = new_job()
    _queue(sessions, job_id, files, dest)

    class Crash(BaseException):
        pass

    def crashing_sender(d: Destination, calling: str, items: list[Outgoing]) -> list[SendResult]:
        raise Crash  # the process dies in the middle of the network call

    with pytest.raises(Crash):
        deliver_due(sessions, [dest], CALLING, NOW, sender=crashing_sender)
    assert {r.state for r in _rows(sessions)} == {OutboxState.SENDING.value}  # committed before the network call

    later = NOW + dt.timedelta(minutes=1)
    with transaction(sessions) as s:
        states.resume_interrupted(s, later)
    assert {r.state for r in _rows(sessions)} == {OutboxState.PENDING.value}
    assert deliver_due(sessions, [dest], CALLING, later) == 3
    assert orthanc.instance_count() == len(case.paths) + 3
    assert _job_state(sessions, job_id) == JobState.DELIVERED.value


def test_resend_requeues_delivered_items_and_the_pacs_keeps_one_copy(
    sessions: sessionmaker[Session], new_job: Callable[..., int], files: list[ResultFile], orthanc: Orthanc,
    case: phantom.Case,
) -> None:
    dest = _pacs(orthanc.dicom_port)
    job_id = new_job()
    _queue(sessions, job_id, files, dest)
    assert deliver_due(sessions, [dest], CALLING, NOW) == 3

    later = NOW + dt.timedelta(hours=2)
    with transaction(sessions) as s:
        assert resend(s, job_id, later) == 3
    rows = _rows(sessions)
    assert {(r.state, r.attempts, r.delivered_at) for r in rows} == {(OutboxState.PENDING.value, 0, None)}
    assert _job_state(sessions, job_id) == JobState.RESULTS_READY.value
    assert deliver_due(sessions, [dest], CALLING, later) == 3
    assert orthanc.instance_count() == len(case.paths) + 3  # same SOP Instance UIDs: no duplicates
    assert _job_state(sessions, job_id) == JobState.DELIVERED.value


def test_a900_dead_letters_at_once_and_resend_revives(
    sessions: sessionmaker[Session], new_job: Callable[..., int], files: list[ResultFile],
    scripted_scp: Callable[..., ScriptedSCP],
) -> None:
    scp = scripted_scp(status=0xA900)
    dest = _pacs(scp.port, ae_title="TESTSCP", max_attempts=10)
    job_id = new_job()
    _queue(sessions, job_id, files, dest)
    assert deliver_due(sessions, [dest], CALLING, NOW) == 0
    rows = _rows(sessions)
    assert {(r.state, r.attempts, r.last_status) for r in rows} == {(OutboxState.DEAD_LETTER.value, 1, 0xA900)}
    assert all(r.last_error == "C-STORE status 0xA900: test SCP refuses" for r in rows)
    assert _job_state(sessions, job_id) == JobState.DEAD_LETTER.value
    assert deliver_due(sessions, [dest], CALLING, NOW + dt.timedelta(days=1)) == 0
    assert len(scp.received) == 3  # dead letters are not retried

    with transaction(sessions) as s:
        assert resend(s, job_id, NOW) == 3
    assert {r.state for r in _rows(sessions)} == {OutboxState.PENDING.value}
    assert _job_state(sessions, job_id) == JobState.RESULTS_READY.value


def test_max_attempts_dead_letters(
    sessions: sessionmaker[Session], new_job: Callable[..., int], files: list[ResultFile]
) -> None:
    dest = _pacs(free_port(), max_attempts=2, backoff_initial_s=1)
    job_id = new_job()
    _queue(sessions, job_id, files[:1], dest)
    assert deliver_due(sessions, [dest], CALLING, NOW) == 0
    assert [(r.state, r.attempts) for r in _rows(sessions)] == [(OutboxState.PENDING.value, 1)]
    assert deliver_due(sessions, [dest], CALLING, NOW + dt.timedelta(seconds=1)) == 0
    (row,) = _rows(sessions)
    assert (row.state, row.attempts) == (OutboxState.DEAD_LETTER.value, 2)
    assert (row.last_error or "").endswith("(gave up after 2 attempts)")
    assert _job_state(sessions, job_id) == JobState.DEAD_LETTER.value


def test_rows_of_an_unconfigured_destination_stay_pending(
    sessions: sessionmaker[Session], new_job: Callable[..., int], files: list[ResultFile],
    scripted_scp: Callable[..., ScriptedSCP],
) -> None:
    scp = scripted_scp()
    old = Destination(name="old-pacs", ae_title="OLD", host="127.0.0.1", port=1)
    _queue(sessions, new_job(), files, old)
    assert deliver_due(sessions, [_pacs(scp.port, ae_title="TESTSCP")], CALLING, NOW) == 0
    assert {r.state for r in _rows(sessions)} == {OutboxState.PENDING.value}
    assert scp.received == []


def test_backoff_doubles_up_to_the_cap() -> None:
    dest = _pacs(104, backoff_initial_s=5, backoff_max_s=60)
    assert [backoff(dest, n).total_seconds() for n in (1, 2, 3, 4, 5, 50)] == [5, 10, 20, 40, 60, 60]


def test_an_unexpected_sender_error_becomes_a_retry(
    sessions: sessionmaker[Session], new_job: Callable[..., int], files: list[ResultFile]
) -> None:
    def broken(d: Destination, calling: str, items: list[Outgoing]) -> list[SendResult]:
        raise ValueError("bug in the sender")

    _queue(sessions, new_job(), files, _pacs(1))
    assert deliver_due(sessions, [_pacs(1)], CALLING, NOW, sender=broken) == 0
    rows = _rows(sessions)
    assert {(r.state, r.attempts, r.last_error) for r in rows} == {
        (OutboxState.PENDING.value, 1, "ValueError: bug in the sender")
    }
