"""C-STORE SCU: send a batch of result files to one destination over one association.

The association proposes exactly the SOP classes of the batch (each with Explicit and Implicit VR Little Endian, the
syntaxes the results are written in and the one every SCP must accept). Every outcome, including network failures,
comes back as a ``SendResult``; nothing raises past ``send_batch`` (it is the network edge).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from triage_node.config import Destination
from triage_node.send.commitment import STORAGE_COMMITMENT_PUSH, request_commitment

if TYPE_CHECKING:  # pynetdicom is imported where a send happens (operator commands load this module for its lists)
    from pynetdicom.association import Association

log = logging.getLogger(__name__)

TIMEOUT_S = 30.0
TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"  # may succeed later: network errors, out of resources, no response
    PERMANENT = "permanent"  # can never succeed as sent: the item is dead-lettered at once


@dataclass(frozen=True)
class Outgoing:
    """One file to send; ``key`` is the caller's handle (the outbox row id)."""

    key: int
    path: Path
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class SendResult:
    key: int
    outcome: Outcome
    status: int | None
    error: str | None
    commitment_requested: bool = False


def classify(status: int) -> Outcome:
    """The outcome of a C-STORE response status (PS3.4 B.2.3, PS3.7 C).

    Success and warnings (0xB000 coercion, 0xB006 elements discarded, 0xB007 data set does not match) are delivered.
    0xA7xx (out of resources), 0x0213 (resource limitation) and 0x0210 (duplicate invocation) are transient.
    0xA9xx (data set does not match SOP class), 0xCxxx (cannot understand), 0x0122 (SOP class not supported),
    0x0117 (invalid SOP instance), 0x0124 (not authorized) and the other refusals can never succeed as sent.
    Unknown failure codes retry: a bounded number of attempts is cheaper than losing a result to a misread status.
    """
    if status == 0x0000 or 0xB000 <= status <= 0xBFFF or status == 0x0001:
        return Outcome.DELIVERED
    if 0xA700 <= status <= 0xA7FF or status in (0x0210, 0x0213):
        return Outcome.RETRY
    if 0xA900 <= status <= 0xA9FF or 0xC000 <= status <= 0xCFFF or status in (0x0117, 0x0122, 0x0124, 0x0211, 0x0212):
        return Outcome.PERMANENT
    return Outcome.RETRY


def _tls_args(dest: Destination) -> tuple[ssl.SSLContext, str] | None:
    if not dest.tls.enabled:
        return None
    cafile = str(dest.tls.ca_file) if dest.tls.ca_file else None
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cafile)
    if dest.tls.cert_file is not None and dest.tls.key_file is not None:
        ctx.load_cert_chain(str(dest.tls.cert_file), str(dest.tls.key_file))
    return ctx, dest.host


def _read(items: Sequence[Outgoing]) -> tuple[list[tuple[Outgoing, pydicom.Dataset]], list[SendResult]]:
    ready: list[tuple[Outgoing, pydicom.Dataset]] = []
    failed: list[SendResult] = []
    for item in items:
        try:
            ds = pydicom.dcmread(item.path)
        except (OSError, InvalidDicomError) as exc:
            failed.append(SendResult(item.key, Outcome.PERMANENT, None, f"cannot read {item.path}: {exc}"))
            continue
        if str(ds.SOPInstanceUID) != item.sop_instance_uid:
            failed.append(
                SendResult(item.key, Outcome.PERMANENT, None, f"{item.path} holds another SOP instance than queued")
            )
            continue
        ready.append((item, ds))
    return ready, failed


def _association_error(assoc: Association) -> str:
    if assoc.is_rejected and assoc.acceptor.primitive is not None:
        p = assoc.acceptor.primitive
        return f"association rejected (result {p.result}, source {p.result_source}, reason {p.diagnostic})"
    # pynetdicom reports a refused or dropped TCP connection as an aborted association.
    return "no association (connection refused, dropped or aborted by the peer)"


def _request_commitment(
    assoc: Association, dest: Destination, sent: Sequence[tuple[Outgoing, pydicom.Dataset]], results: list[SendResult]
) -> list[SendResult]:
    """Ask for Storage Commitment of the delivered items; a refusal only costs the confirmation, not the delivery."""
    delivered = {r.key for r in results if r.outcome is Outcome.DELIVERED}
    instances = [(item.sop_class_uid, item.sop_instance_uid) for item, _ in sent if item.key in delivered]
    if not instances:
        return results
    if STORAGE_COMMITMENT_PUSH not in {cx.abstract_syntax for cx in assoc.accepted_contexts}:
        log.warning("destination %s: storage commitment not accepted by the peer", dest.name)
        return results
    status = request_commitment(assoc, instances)
    if status != 0x0000:
        log.warning("destination %s: storage commitment request answered %s", dest.name, status)
        return results
    return [replace(r, commitment_requested=True) if r.key in delivered else r for r in results]


def send_batch(
    dest: Destination, calling_ae: str, items: Sequence[Outgoing], timeout_s: float = TIMEOUT_S
) -> list[SendResult]:
    """Send ``items`` to ``dest`` over one association; one result per item, in no particular order. A
    ``type: dicomweb`` destination gets one STOW-RS request instead (send/dicomweb.py)."""
    if dest.type == "dicomweb":
        from triage_node.send.dicomweb import send_batch as stow_batch

        return stow_batch(dest, calling_ae, items)
    ready, results = _read(items)
    if not ready:
        return results
    from pynetdicom import AE

    ae = AE(ae_title=dest.calling_ae_title or calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = timeout_s
    for sop_class in dict.fromkeys(item.sop_class_uid for item, _ in ready):
        ae.add_requested_context(sop_class, TRANSFER_SYNTAXES)
    if dest.storage_commitment:
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH, TRANSFER_SYNTAXES)
    pending = list(ready)
    try:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title, tls_args=_tls_args(dest))
        if not assoc.is_established:
            why = _association_error(assoc)
            log.warning("destination %s: %s; %d item(s) will retry", dest.name, why, len(pending))
            return results + [SendResult(item.key, Outcome.RETRY, None, why) for item, _ in pending]
        try:
            accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
            while pending:
                item, ds = pending[0]
                if item.sop_class_uid not in accepted:
                    results.append(
                        SendResult(item.key, Outcome.PERMANENT, None, f"SOP class {item.sop_class_uid} not accepted")
                    )
                    pending.pop(0)
                    continue
                status = assoc.send_c_store(ds)
                if "Status" not in status:
                    # No response: DIMSE timeout or the peer aborted; the association is gone, the rest retries.
                    raise ConnectionError("no C-STORE response (timeout or association aborted)")
                code = int(status.Status)
                outcome = classify(code)
                error: str | None = None if outcome is Outcome.DELIVERED else f"C-STORE status 0x{code:04X}"
                if "ErrorComment" in status and outcome is not Outcome.DELIVERED:
                    error = f"{error}: {status.ErrorComment}"
                results.append(SendResult(item.key, outcome, code, error))
                pending.pop(0)
            if dest.storage_commitment:
                results = _request_commitment(assoc, dest, ready, results)
        finally:
            if assoc.is_established:
                assoc.release()
    except Exception as exc:  # the network edge: any failure becomes a retry with its reason
        log.warning("destination %s: send failed (%s); %d item(s) will retry", dest.name, exc, len(pending))
        results.extend(SendResult(item.key, Outcome.RETRY, None, f"{type(exc).__name__}: {exc}") for item, _ in pending)
    return results
