"""The JSON contract as pydantic models, so FastAPI validates every response and documents it in /openapi.json.

Mirrors ``triage_node.worklist.queries`` (which builds the dicts) and docs/api.md (which explains the fields).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PriorityName = Literal["critical", "urgent", "routine", "none"]
StatusName = Literal["receiving", "processing", "sending", "error", "done"]
VerdictName = Literal["agree", "disagree", "unsure", "missed"]
VerdictSummary = Literal["confirmed", "rejected", "mixed", "missed", "negative", "unsure"]


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FindingOut(_Out):
    label: str = Field(description="Machine name of the finding, e.g. any_hemorrhage, subdural, microbleed, infarct")
    present: bool = Field(description="The model's call at its operating threshold")
    probability: float = Field(ge=0, le=1, description="Series-level probability")
    volume_ml: float | None = Field(description="Lesion volume from the segmentation, when there is one")
    location: str | None = Field(description="Atlas location, e.g. 'right thalamus'")
    laterality: str | None = Field(description="left | right | bilateral, when known")
    count: int | None = Field(description="Number of lesions where that is the measure (microbleeds)")
    model: str
    model_version: str
    series_instance_uid: str = Field(description="The series the finding was made on")
    shadow: bool = Field(
        description="Made by a model in shadow mode (models.shadow): recorded and rated, but it set no priority and "
        "nothing of it was sent or notified"
    )
    note: str | None = Field(
        default=None, description="Why the model did not assess the series (label not_assessed), e.g. outside its "
        "training domain"
    )


class SeriesOut(_Out):
    series_instance_uid: str
    series_number: int | None
    series_description: str | None
    modality: str | None
    pipeline: str | None = Field(description="ct_head | mr_swi | mr_dwi; null before routing")
    state: str = Field(
        description="Latest job state (complete, processing, results_ready, delivered, rejected, skipped, failed, "
        "dead_letter) or, before a job exists, the series state (receiving, complete)"
    )
    reason: str | None = Field(description="Why a series was rejected or skipped, or why its job failed")
    instances: int | None
    slices_kept: int | None = Field(description="Slices the blank-slice filter kept")
    slices_dropped: int | None = Field(description="Slices the blank-slice filter dropped")
    delivery: dict[str, str] | Literal["none"] = Field(
        description="Per result kind (seg, sr, map) the least advanced outbox state across destinations "
        '(pending, sending, delivered, dead_letter), e.g. {"seg": "delivered", "sr": "pending"}; "none" when '
        "nothing is queued for sending"
    )
    job_id: int | None


class StudyOut(_Out):
    study_instance_uid: str
    accession_number: str | None
    priority: PriorityName
    flagged_at: str | None = Field(description="ISO 8601 UTC time the study was first flagged; null when not flagged")
    status: StatusName
    findings: list[FindingOut]
    series: list[SeriesOut]
    modality: str | None = Field(description="The study's series modalities joined by '/', e.g. 'CT' or 'CT/MR'")
    study_description: str | None
    study_date: str | None = Field(description="DICOM DA, YYYYMMDD")
    study_time: str | None = Field(description="DICOM TM, HHMMSS.FFFFFF")
    patient_name: str | None = Field(description="DICOM PN, components separated by ^")
    patient_id: str | None
    patient_birth_date: str | None
    patient_sex: str | None
    first_received_at: str | None
    last_received_at: str | None
    time_to_flag_s: float | None = Field(description="Seconds from the last image of the flagged series to the flag")
    acknowledged_by: str | None
    acknowledged_at: str | None
    verdict: VerdictSummary | None = Field(
        description="The radiologists' current verdicts on the latest jobs, summed up (shadow calls left out): "
        "confirmed, rejected, mixed, missed, negative (nothing there, as the models said), unsure; null when none"
    )


class KeyImageOut(_Out):
    job_id: int
    series_instance_uid: str
    sop_instance_uid: str
    label: str
    url: str = Field(description="PNG of the slice with lesion outline and Grad-CAM map (same login)")


class AuditOut(_Out):
    user: str
    action: str
    detail: str | None
    at: str | None


class VerdictOut(_Out):
    id: int
    job_id: int
    label: str = Field(description="The finding's label; no_finding for a verdict on a negative job; other for a "
                       "missed finding no model of the job names")
    model: str | None
    model_version: str | None
    present: bool = Field(description="What the model said: true for a flagged (present) finding")
    shadow: bool
    verdict: VerdictName
    comment: str | None
    user: str
    at: str | None
    current: bool = Field(description="The latest verdict on this (job, label, model): the one the figures use")


class StudyDetailOut(StudyOut):
    referring_physician: str | None
    key_images: list[KeyImageOut]
    audit: list[AuditOut]
    verdicts: list[VerdictOut] = Field(description="Every verdict on the study, oldest first")


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job_id: int
    verdict: VerdictName
    label: str | None = Field(default=None, max_length=64, description="The finding rated (or missed)")
    model: str | None = Field(default=None, max_length=64)
    comment: str | None = Field(default=None, max_length=2000)


class SessionOut(_Out):
    user: str
    csrf_token: str = Field(description="Send it as the X-CSRF-Token header on every POST")


class Health(_Out):
    status: Literal["ok", "error"]
    database: Literal["ok", "unreachable"]
