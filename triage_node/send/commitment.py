"""DICOM Storage Commitment (Push Model, PS3.4 annex J): ask the PACS to take responsibility for what it received and
record its answer as ``OutboxItem.committed_at``.

Request: after the C-STOREs of a batch, on the same association, an N-ACTION (action type 1) lists the delivered
instances under a Transaction UID derived from them. Answer: the PACS opens its own association to our SCP and sends
an N-EVENT-REPORT (event 1: all committed, event 2: some failed). ``handle_commitment_report`` is that handler; the
receiving SCP registers it (``evt.EVT_N_EVENT_REPORT``) and accepts the Storage Commitment Push Model context with
``add_commitment_context``. Instances the PACS reports as failed go back to ``pending`` so that they are sent again.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from triage_node.config import Destination

if TYPE_CHECKING:  # annotations only: the conformance statement reads this module's constants without pynetdicom
    from pynetdicom import AE, evt
    from pynetdicom.association import Association
    from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP Instance of the Push Model
REQUEST_COMMITMENT = 1  # N-ACTION Action Type ID
EVENT_ALL_COMMITTED, EVENT_SOME_FAILED = 1, 2
STATUS_SUCCESS = 0x0000
STATUS_NO_SUCH_EVENT_TYPE = 0x0113
STATUS_PROCESSING_FAILURE = 0x0110


def add_commitment_context(ae: AE) -> None:
    """Let ``ae`` (our SCP) accept the PACS's N-EVENT-REPORT: the PACS is the Storage Commitment SCP and the
    association's requestor, so we accept the context in the SCU role (PS3.4 J.3.3, role selection)."""
    ae.add_supported_context(
        STORAGE_COMMITMENT_PUSH, [ExplicitVRLittleEndian, ImplicitVRLittleEndian], scu_role=True, scp_role=True
    )


def transaction_uid(sop_instance_uids: Sequence[str]) -> str:
    """The Transaction UID of a request: derived from its instances, so a repeated request reuses it."""
    return str(generate_uid(entropy_srcs=["triage-node storage commitment", *sorted(sop_instance_uids)]))


def request_commitment(assoc: Association, instances: Sequence[tuple[str, str]]) -> int | None:
    """Send the N-ACTION for ``instances`` ((SOP Class UID, SOP Instance UID) pairs) on an established association
    that has the Push Model context; return the response status, None without a response."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid([uid for _, uid in instances])
    refs = []
    for sop_class, sop_uid in instances:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class
        ref.ReferencedSOPInstanceUID = sop_uid
        refs.append(ref)
    ds.ReferencedSOPSequence = refs
    status, _ = assoc.send_n_action(ds, REQUEST_COMMITMENT, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE)
    return int(status.Status) if "Status" in status else None


def _uids(ds: Dataset, keyword: str) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    for item in ds.get(keyword, []):
        out[str(item.ReferencedSOPInstanceUID)] = int(item.FailureReason) if "FailureReason" in item else None
    return out


def record_report(
    session: Session,
    destination_names: Sequence[str],
    committed: Sequence[str],
    failed: dict[str, int | None],
    now: dt.datetime,
) -> tuple[int, int]:
    """Apply a commitment report to the outbox rows of ``destination_names``; return (committed, re-queued)."""
    from sqlalchemy import select

    from triage_node.worklist.models import OutboxItem, OutboxState

    n_ok = n_failed = 0
    if committed:
        for row in session.scalars(
            select(OutboxItem)
            .where(OutboxItem.destination.in_(destination_names))
            .where(OutboxItem.sop_instance_uid.in_(list(committed)))
        ):
            row.committed_at = now
            n_ok += 1
    if failed:
        for row in session.scalars(
            select(OutboxItem)
            .where(OutboxItem.destination.in_(destination_names))
            .where(OutboxItem.sop_instance_uid.in_(list(failed)))
            .where(OutboxItem.state == OutboxState.DELIVERED.value)
        ):
            reason = failed[row.sop_instance_uid]
            row.state = OutboxState.PENDING.value
            row.next_attempt_at = now
            row.committed_at = None
            row.last_error = "storage commitment refused" + (f" (failure reason 0x{reason:04X})" if reason else "")
            n_failed += 1
    return n_ok, n_failed


def handle_commitment_report(
    event: evt.Event,
    sessions: sessionmaker[Session],
    destinations: Sequence[Destination],
    clock: Callable[[], dt.datetime],
) -> tuple[int, Dataset | None]:
    """pynetdicom ``EVT_N_EVENT_REPORT`` handler for Storage Commitment reports (bind with ``[sessions,
    destinations, clock]``). Every failure becomes a status, never an exception into the association."""
    try:
        if event.request.AffectedSOPClassUID != STORAGE_COMMITMENT_PUSH:
            return STATUS_NO_SUCH_EVENT_TYPE, None
        if event.event_type not in (EVENT_ALL_COMMITTED, EVENT_SOME_FAILED):
            return STATUS_NO_SUCH_EVENT_TYPE, None
        info = event.event_information
        peer = str(event.assoc.requestor.ae_title).strip()
        names = [d.name for d in destinations if d.ae_title == peer]
        if not names:
            log.warning("storage commitment report from unknown AE %s ignored", peer)
            return STATUS_SUCCESS, None
        committed = list(_uids(info, "ReferencedSOPSequence"))
        failed = _uids(info, "FailedSOPSequence")
        from triage_node.worklist.db import transaction

        with transaction(sessions) as s:
            n_ok, n_failed = record_report(s, names, committed, failed, clock())
        log.info(
            "storage commitment from %s (transaction %s): %d committed, %d refused and re-queued",
            peer, info.get("TransactionUID", "?"), n_ok, n_failed,
        )
        return STATUS_SUCCESS, None
    except Exception:  # the network edge: the peer gets a processing failure, we get the log
        log.exception("storage commitment report could not be recorded")
        return STATUS_PROCESSING_FAILURE, None
