"""Storage Commitment against a real Orthanc: the N-ACTION after the C-STOREs, Orthanc's N-EVENT-REPORT on its own
association to our SCP, and ``committed_at`` on the outbox rows; refused instances go back to pending."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from peers import free_port, wait_for
from peers_orthanc import Modality, start_orthanc
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage_node.config import Destination
from triage_node.results.build import ResultFile
from triage_node.send.commitment import add_commitment_context, handle_commitment_report, record_report
from triage_node.send.outbox import deliver_due, enqueue
from triage_node.worklist.db import transaction
from triage_node.worklist.models import Job, OutboxItem, OutboxState

NOW = dt.datetime(2026, 1, 1, 9, 0, 0, tzinfo=dt.UTC)
CALLING = "TRIAGE_NODE"


@pytest.fixture
def report_scp() -> Iterator[tuple[int, list[Callable[..., object]]]]:
    """Our side's SCP for N-EVENT-REPORT; the test binds the handler through the returned list."""
    ae = AE(ae_title=CALLING)
    add_commitment_context(ae)
    handlers: list[Callable[..., object]] = []
    port = free_port()

    def on_report(event: evt.Event) -> object:
        return handlers[0](event)

    server: ThreadedAssociationServer = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        yield port, handlers
    finally:
        server.shutdown()


def _committed(sessions: sessionmaker[Session]) -> list[dt.datetime | None]:
    with sessions() as s:
        return [r.committed_at for r in s.scalars(select(OutboxItem))]


def test_orthanc_confirms_storage_commitment(
    tmp_path: Path, sessions: sessionmaker[Session], new_job: Callable[..., int], files: list[ResultFile],
    report_scp: tuple[int, list[Callable[..., object]]],
) -> None:
    port, handlers = report_scp
    with start_orthanc(tmp_path / "orthanc", modalities={"triage": Modality(CALLING, port=port)}) as orthanc:
        dest = Destination(
            name="pacs", ae_title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port, storage_commitment=True
        )
        handlers.append(lambda event: handle_commitment_report(event, sessions, [dest], lambda: NOW))
        job_id = new_job()
        with transaction(sessions) as s:
            job = s.get(Job, job_id)
            assert job is not None
            enqueue(s, job, files, [dest], NOW)
        assert deliver_due(sessions, [dest], CALLING, NOW) == 3
        wait_for(lambda: all(c is not None for c in _committed(sessions)), timeout=30, what="commitment reports")
        assert set(_committed(sessions)) == {NOW}


def test_refused_instances_are_requeued(
    sessions: sessionmaker[Session], new_job: Callable[..., int], files: list[ResultFile]
) -> None:
    job_id = new_job()
    with transaction(sessions) as s:
        job = s.get(Job, job_id)
        assert job is not None
        enqueue(s, job, files, [Destination(name="pacs", ae_title="P", host="127.0.0.1", port=1)], NOW)
        s.flush()
        for row in job.outbox:
            row.state = OutboxState.DELIVERED.value
    seg, sr = files[0].sop_instance_uid, files[-1].sop_instance_uid
    later = NOW + dt.timedelta(minutes=5)
    with transaction(sessions) as s:
        assert record_report(s, ["pacs"], [sr], {seg: 0x0110}, later) == (1, 1)
    with sessions() as s:
        rows = {r.sop_instance_uid: r for r in s.scalars(select(OutboxItem))}
    assert (rows[sr].state, rows[sr].committed_at) == (OutboxState.DELIVERED.value, later)
    assert (rows[seg].state, rows[seg].next_attempt_at) == (OutboxState.PENDING.value, later)
    assert rows[seg].last_error == "storage commitment refused (failure reason 0x0110)"
