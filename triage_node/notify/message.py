"""What a notification says, built from the database rows, and how each channel formats it.

Patient-identifying data (name, ID, accession, study UID, description) is in ``Alert.patient`` and is only written into
a message when the channel has ``include_phi: true``. Without it a message names the study by its internal row number
(``study ref``), which means nothing outside this daemon's worklist.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from triage_node.worklist.models import Job, Study

EVENT = "triage_node.flagged"
DISCLAIMER = "Automated triage aid: the images need a radiologist's read."


@dataclass(frozen=True)
class AlertFinding:
    label: str
    probability: float
    volume_ml: float | None = None
    location: str | None = None
    count: int | None = None

    def describe(self) -> str:
        """``any hemorrhage: 97%, 4.2 ml, right frontal lobe``"""
        parts = [f"{self.probability * 100:.0f}%"]
        if self.volume_ml is not None:
            parts.append(f"{self.volume_ml:.1f} ml")
        if self.count is not None:
            parts.append(f"n={self.count}")
        if self.location:
            parts.append(self.location)
        return f"{self.label.replace('_', ' ')}: {', '.join(parts)}"


@dataclass(frozen=True)
class PatientInfo:
    patient_name: str | None
    patient_id: str | None
    accession_number: str | None
    study_description: str | None
    study_date: str | None
    study_instance_uid: str


@dataclass(frozen=True)
class Alert:
    """One flagged job. ``study_ref`` is the worklist's internal study number, safe to send anywhere."""

    priority: str
    study_ref: int
    job_id: int
    flagged_at: dt.datetime | None
    modality: str | None
    pipeline: str | None
    findings: tuple[AlertFinding, ...]
    patient: PatientInfo

    @property
    def title(self) -> str:
        head = self.findings[0].label.replace("_", " ") if self.findings else "flagged study"
        more = f" (+{len(self.findings) - 1} more)" if len(self.findings) > 1 else ""
        return f"{self.priority.upper()}: {head}{more}, study ref {self.study_ref}"

    def context(self) -> str:
        flagged = self.flagged_at.strftime("%Y-%m-%d %H:%M:%S UTC") if self.flagged_at else "-"
        return (
            f"{self.modality or '-'} · pipeline {self.pipeline or '-'} · flagged {flagged} · "
            f"study ref {self.study_ref}, job {self.job_id}"
        )

    def phi_lines(self) -> list[str]:
        p = self.patient
        name = (p.patient_name or "-").replace("^", " ").strip()
        return [
            f"Patient: {name} (ID {p.patient_id or '-'})",
            f"Accession: {p.accession_number or '-'} · {p.study_description or '-'} · {p.study_date or '-'}",
            f"Study Instance UID: {p.study_instance_uid}",
        ]

    def lines(self, include_phi: bool) -> list[str]:
        out = [f.describe() for f in self.findings] or ["(no finding details)"]
        out.append(self.context())
        if include_phi:
            out += self.phi_lines()
        return out


def build_alert(job: Job, study: Study) -> Alert:
    """The alert for a flagged job: its present findings, most probable first."""
    present = sorted((f for f in job.findings if f.present and not f.shadow), key=lambda f: -f.probability)
    return Alert(
        priority=job.priority,
        study_ref=study.id,
        job_id=job.id,
        flagged_at=job.flagged_at or study.flagged_at,
        modality=job.series.modality,
        pipeline=job.pipeline,
        findings=tuple(AlertFinding(f.label, float(f.probability), f.volume_ml, f.location, f.count) for f in present),
        patient=PatientInfo(
            patient_name=study.patient_name,
            patient_id=study.patient_id,
            accession_number=study.accession_number,
            study_description=study.study_description,
            study_date=study.study_date,
            study_instance_uid=study.study_instance_uid,
        ),
    )


def json_payload(alert: Alert, include_phi: bool) -> dict[str, Any]:
    """The plain JSON body (``format: json``); documented in docs/api.md."""
    body: dict[str, Any] = {
        "event": EVENT,
        "priority": alert.priority,
        "title": alert.title,
        "study_ref": alert.study_ref,
        "job_id": alert.job_id,
        "flagged_at": alert.flagged_at.isoformat().replace("+00:00", "Z") if alert.flagged_at else None,
        "modality": alert.modality,
        "pipeline": alert.pipeline,
        "findings": [
            {
                "label": f.label,
                "probability": f.probability,
                "volume_ml": f.volume_ml,
                "location": f.location,
                "count": f.count,
            }
            for f in alert.findings
        ],
    }
    if include_phi:
        p = alert.patient
        body.update(
            patient_name=p.patient_name,
            patient_id=p.patient_id,
            accession_number=p.accession_number,
            study_description=p.study_description,
            study_date=p.study_date,
            study_instance_uid=p.study_instance_uid,
        )
    return body


def slack_payload(alert: Alert, include_phi: bool) -> dict[str, Any]:
    """A Slack incoming-webhook message (mrkdwn text)."""
    lines = [f"*{alert.title}*", *(f"• {line}" for line in alert.lines(include_phi)), f"_{DISCLAIMER}_"]
    return {"text": "\n".join(lines)}


def teams_payload(alert: Alert, include_phi: bool) -> dict[str, Any]:
    """A Microsoft Teams message with an Adaptive Card, the body Teams Workflows webhooks accept."""
    blocks: list[dict[str, Any]] = [
        {
            "type": "TextBlock",
            "text": alert.title,
            "weight": "Bolder",
            "size": "Medium",
            "color": "Attention",
            "wrap": True,
        }
    ]
    blocks += [
        {"type": "TextBlock", "text": line, "wrap": True, "spacing": "Small"} for line in alert.lines(include_phi)
    ]
    blocks.append({"type": "TextBlock", "text": DISCLAIMER, "isSubtle": True, "wrap": True, "size": "Small"})
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": blocks,
    }
    return {
        "type": "message",
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


WEBHOOK_FORMATS = {"json": json_payload, "slack": slack_payload, "teams": teams_payload}


def email_text(alert: Alert, include_phi: bool) -> tuple[str, str]:
    """Subject and plain-text body of the e-mail."""
    body = "\n".join([alert.title, "", *alert.lines(include_phi), "", DISCLAIMER, ""])
    return f"[triage-node] {alert.title}", body
