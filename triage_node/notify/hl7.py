"""HL7 v2.5 ORU^R01 over MLLP to a RIS: the triage priority and the finding summary of a flagged job.

Built and checked with hl7apy (the message is validated against the v2.5 structure before it is sent). Content:

- MSH: sender/receiver from ``notifications.hl7[]``, message control ID ``TN<job>-<attempt-free hash>`` (the same for
  every retry of one notification, so a RIS can drop a duplicate), processing ID P.
- PID (only with ``include_phi``): patient ID and name.
- ORC / OBR: order control RE; filler order number = the accession number with ``include_phi``, else the study ref;
  OBR-4 the service (99TRN ``AI_TRIAGE``); OBR-5 and TQ1-9 the priority (S stat for critical, A ASAP for urgent,
  R routine); OBR-25 result status P (preliminary: an automated result).
- OBX: one ST per finding (``any hemorrhage: 97%, 4.2 ml``), then the priority as a coded OBX, then the disclaimer.

The MLLP exchange: ``<VT>message<FS><CR>``, then the RIS's ACK, whose MSA-1 must be AA or CA; anything else (AE, AR,
no answer, a broken connection) is a NotificationError and the notification retries.
"""

from __future__ import annotations

import hashlib
import re
import socket

from triage_node.config import HL7
from triage_node.notify.channels import NotificationError
from triage_node.notify.message import DISCLAIMER, Alert

START, END = b"\x0b", b"\x1c\x0d"
PRIORITY_CODES = {"critical": ("S", "Stat"), "urgent": ("A", "ASAP"), "routine": ("R", "Routine")}


def _clean(text: str, limit: int = 199) -> str:
    """A value with HL7's delimiters replaced (an HL7 escape sequence would be legal but few RIS show them)."""
    return re.sub(r"[|^~\\&\r\n]", " ", text)[:limit].strip()


def control_id(alert: Alert) -> str:
    digest = hashlib.sha256(f"{alert.study_ref}:{alert.job_id}:{alert.patient.study_instance_uid}".encode())
    return f"TN{alert.job_id}-{digest.hexdigest()[:8]}"[:20]


def oru_r01(alert: Alert, cfg: HL7, timestamp: str) -> str:
    """The ORU^R01 message in ER7 (segments separated by CR); ``timestamp`` is MSH-7 (YYYYMMDDHHMMSS)."""
    from hl7apy.core import Message

    msg = Message("ORU_R01", version="2.5")
    msh = msg.msh
    msh.msh_3 = _clean(cfg.sending_application, 180)
    msh.msh_4 = _clean(cfg.sending_facility, 180)
    msh.msh_5 = _clean(cfg.receiving_application, 180)
    msh.msh_6 = _clean(cfg.receiving_facility, 180)
    msh.msh_7 = timestamp
    msh.msh_9 = "ORU^R01^ORU_R01"
    msh.msh_10 = control_id(alert)
    msh.msh_11 = "P"
    result = msg.add_group("ORU_R01_PATIENT_RESULT")
    p = alert.patient
    if cfg.include_phi:
        pid = result.add_group("ORU_R01_PATIENT").pid
        pid.pid_3 = _clean(p.patient_id or "UNKNOWN", 80)
        pid.pid_5 = _clean((p.patient_name or "UNKNOWN").replace("^", " "), 80)
    order = result.add_group("ORU_R01_ORDER_OBSERVATION")
    filler = _clean(p.accession_number or "", 60) if cfg.include_phi and p.accession_number else f"REF{alert.study_ref}"
    code, meaning = PRIORITY_CODES.get(alert.priority, ("R", "Routine"))
    order.orc.orc_1 = "RE"
    order.orc.orc_3 = filler
    order.obr.obr_1 = "1"
    order.obr.obr_3 = filler
    order.obr.obr_4 = "AI_TRIAGE^AI triage result^99TRN"
    order.obr.obr_5 = code
    if alert.flagged_at is not None:
        order.obr.obr_22 = alert.flagged_at.strftime("%Y%m%d%H%M%S")
    order.obr.obr_24 = "CT" if alert.modality == "CT" else "MR" if alert.modality == "MR" else "OT"
    order.obr.obr_25 = "P"
    order.add_group("ORU_R01_TIMING_QTY").tq1.tq1_9 = f"{code}^{meaning}^HL70485"
    values = [("ST", "FINDING^AI finding^99TRN", _clean(f.describe())) for f in alert.findings]
    values.append(("CE", "PRIORITY^AI triage priority^99TRN", f"{code}^{meaning}^HL70485"))
    values.append(("ST", "NOTE^Disclaimer^99TRN", _clean(DISCLAIMER)))
    for n, (kind, identifier, value) in enumerate(values, start=1):
        obx = order.add_group("ORU_R01_OBSERVATION").obx
        obx.obx_1 = str(n)
        obx.obx_2 = kind
        obx.obx_3 = identifier
        obx.obx_5 = value
        obx.obx_11 = "P"
    msg.validate()
    return str(msg.to_er7())


def ack_code(reply: bytes) -> str | None:
    """MSA-1 of an MLLP-framed or bare ER7 ACK, or None."""
    text = reply.strip(START + END + b"\n").decode("latin-1", "replace")
    for segment in re.split(r"[\r\n]+", text):
        if segment.startswith("MSA|"):
            return segment.split("|")[1] if "|" in segment[4:] or len(segment) > 4 else None
    return None


def send_mllp(cfg: HL7, message: str, timeout_s: float) -> None:
    """Send one framed message and wait for its ACK; raise NotificationError unless it is AA or CA."""
    where = f"mllp {cfg.host}:{cfg.port}"
    try:
        with socket.create_connection((cfg.host, cfg.port), timeout=timeout_s) as sock:
            sock.sendall(START + message.encode("latin-1", "replace") + END)
            reply = b""
            while END not in reply:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError as exc:
        raise NotificationError(f"{where}: {type(exc).__name__}: {exc}") from exc
    code = ack_code(reply)
    if code not in ("AA", "CA"):
        raise NotificationError(f"{where}: no accepting ACK (MSA-1 {code or 'missing'})")
