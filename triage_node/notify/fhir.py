"""FHIR notifications: a transaction Bundle with a DiagnosticReport (the findings, status preliminary) and a Flag (the
triage priority, active) POSTed to the FHIR server's base URL.

Built and validated with ``fhir.resources`` (its R4B models; the two resources are unchanged from R4). Both entries
are ``PUT`` to ids derived from the job, so a retry of the same notification updates instead of duplicating. Without
``include_phi`` the resources name the study by its worklist ref only; with it the DiagnosticReport carries the
accession number as an identifier and the Study Instance UID, and both resources reference the patient by identifier.
"""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

from triage_node.config import FHIR
from triage_node.notify.channels import NotificationError, redact
from triage_node.notify.message import DISCLAIMER, Alert

SYSTEM = "urn:triage-node"
PRIORITY_SYSTEM = "urn:triage-node:priority"


def resource_id(alert: Alert) -> str:
    digest = hashlib.sha256(f"{alert.job_id}:{alert.patient.study_instance_uid}".encode()).hexdigest()[:16]
    return f"triage-node-{alert.job_id}-{digest}"


def bundle(alert: Alert, include_phi: bool) -> dict[str, Any]:
    """The transaction Bundle as JSON (validated by the fhir.resources models)."""
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.diagnosticreport import DiagnosticReport
    from fhir.resources.R4B.flag import Flag

    rid = resource_id(alert)
    p = alert.patient
    subject: dict[str, Any] = {"display": f"study ref {alert.study_ref}"}
    identifiers: list[dict[str, Any]] = [{"system": f"{SYSTEM}:job", "value": str(alert.job_id)}]
    if include_phi:
        if p.patient_id:
            subject = {"identifier": {"value": p.patient_id}, "display": (p.patient_name or "").replace("^", " ")}
        if p.accession_number:
            identifiers.append(
                {
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                    "value": p.accession_number,
                }
            )
        identifiers.append({"system": "urn:dicom:uid", "value": f"urn:oid:{p.study_instance_uid}"})
    priority = {"system": PRIORITY_SYSTEM, "code": alert.priority, "display": f"AI triage priority {alert.priority}"}
    findings = [f.describe() for f in alert.findings] or ["no finding details"]
    when = alert.flagged_at.isoformat() if alert.flagged_at else None
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": rid,
        "identifier": identifiers,
        "status": "preliminary",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
        "code": {
            "coding": [{"system": SYSTEM, "code": "ai-triage", "display": "AI triage result"}],
            "text": "AI triage result",
        },
        "subject": subject,
        "conclusion": f"{alert.priority.upper()}: " + "; ".join(findings) + f". {DISCLAIMER}",
        "conclusionCode": [{"coding": [priority]}],
    }
    flag: dict[str, Any] = {
        "resourceType": "Flag",
        "id": rid,
        "identifier": identifiers,
        "status": "active",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/flag-category", "code": "clinical"}]}
        ],
        "code": {"coding": [priority], "text": alert.title},
        "subject": subject,
    }
    if when is not None:
        report["issued"] = when
        flag["period"] = {"start": when}
    DiagnosticReport.model_validate(report)  # raises pydantic.ValidationError on a resource FHIR would refuse
    Flag.model_validate(flag)
    body = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": report, "request": {"method": "PUT", "url": f"DiagnosticReport/{rid}"}},
            {"resource": flag, "request": {"method": "PUT", "url": f"Flag/{rid}"}},
        ],
    }
    Bundle.model_validate(body)
    return body


def post_bundle(cfg: FHIR, body: dict[str, Any], timeout_s: float) -> None:
    """POST the Bundle to the base URL; any 2xx is success."""
    where = redact(cfg.url)
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    if cfg.token:
        headers["Authorization"] = f"Bearer {cfg.token}"
    try:
        response = httpx.post(cfg.url.rstrip("/"), json=body, headers=headers, timeout=timeout_s,
                              follow_redirects=False)
    except httpx.HTTPError as exc:
        raise NotificationError(f"fhir {where}: {type(exc).__name__}") from exc
    if not 200 <= response.status_code < 300:
        raise NotificationError(f"fhir {where} answered HTTP {response.status_code}")
