"""Radiologists' verdicts on the models' calls: agree, disagree or unsure on a present finding; on a job without a
flag, agree (the negative is right), unsure, or ``missed`` (a finding the models missed, named by the label the model
would have used, or ``other``).

Every verdict is a row (user, time, comment) and an audit entry; the latest verdict on a target (job, label, model)
is the one the worklist and the performance figures use. A verdict names its finding by job, label and model, so a
rerun of the job (which replaces its finding rows) keeps it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage_node.worklist.models import AuditEntry, FindingRow, Job, Series, Study, Verdict, VerdictKind

log = logging.getLogger(__name__)

MAX_COMMENT = 2000
NO_FINDING = "no_finding"  # the label of a verdict on a job as a whole (agree or unsure that nothing is there)
OTHER = "other"  # a missed finding no model of the job would name


class VerdictError(ValueError):
    """The verdict does not fit its target (unknown job, disagree on a negative, missed on a present finding...)."""


class UnknownTarget(LookupError):
    pass


@dataclass(frozen=True)
class Target:
    job_id: int
    label: str
    model: str | None


def _is_flag(job: Job, shadow_ok: bool = False) -> bool:
    return any(f.present and (shadow_ok or not f.shadow) for f in job.findings)


def record_verdict(
    s: Session,
    study_uid: str,
    user: str,
    now: dt.datetime,
    *,
    job_id: int,
    verdict: str,
    label: str | None = None,
    model: str | None = None,
    comment: str | None = None,
) -> Verdict:
    """Validate and store one verdict with its audit entry, in the caller's transaction.

    ``label``/``model`` name the finding. For agree/disagree/unsure on a present finding both are needed; without a
    label, agree and unsure apply to the job as a whole (no finding) when the job made no live call. ``missed`` names
    the label that was missed (a label of one of the job's absent findings, with its model, or ``other``).
    Raises UnknownTarget (no such study or job of the study) or VerdictError.
    """
    try:
        kind = VerdictKind(verdict)
    except ValueError as exc:
        raise VerdictError(f"verdict must be one of {[v.value for v in VerdictKind]}, got {verdict!r}") from exc
    comment = (comment or "").strip() or None
    if comment is not None and len(comment) > MAX_COMMENT:
        raise VerdictError(f"comment is longer than {MAX_COMMENT} characters")
    study = s.scalars(select(Study).where(Study.study_instance_uid == study_uid)).one_or_none()
    if study is None:
        raise UnknownTarget(f"no study {study_uid!r}")
    job = s.scalars(
        select(Job).join(Series, Series.id == Job.series_id).where(Job.id == job_id, Series.study_id == study.id)
    ).one_or_none()
    if job is None:
        raise UnknownTarget(f"study has no job {job_id}")
    findings: Sequence[FindingRow] = job.findings
    if not findings:
        raise VerdictError("no model ran on this series: there is nothing to rate")
    label = (label or "").strip() or None
    model = (model or "").strip() or None

    finding: FindingRow | None = None
    if label not in (None, NO_FINDING, OTHER):
        matches = [f for f in findings if f.label == label and (model is None or f.model == model)]
        if not matches:
            raise VerdictError(f"the job has no finding {label!r}" + (f" of model {model!r}" if model else ""))
        finding = max(matches, key=lambda f: (f.present, f.probability))

    row_model: str | None = None
    version: str | None = None
    present = shadow = False
    if kind == VerdictKind.MISSED:
        if finding is not None and finding.present:
            raise VerdictError(f"{label} is present: rate it agree, disagree or unsure instead of missed")
        row_label = OTHER
        if finding is not None:
            row_label, row_model, version, shadow = finding.label, finding.model, finding.model_version, finding.shadow
    elif finding is not None and finding.present:
        row_label, row_model, version, shadow = finding.label, finding.model, finding.model_version, finding.shadow
        present = True
    else:
        if kind == VerdictKind.DISAGREE:
            raise VerdictError("disagree needs a present finding; a finding the models missed is a 'missed' verdict")
        if _is_flag(job):
            raise VerdictError("the job flagged a finding: rate that finding (label and model)")
        row_label = NO_FINDING

    row = Verdict(
        study_id=study.id,
        job_id=job.id,
        label=row_label,
        model=row_model,
        model_version=version,
        present=present,
        shadow=bool(shadow),
        verdict=kind.value,
        comment=comment,
        user=user[:128],
        at=now,
    )
    s.add(row)
    what = f"job {job.id} {row_label}" + (f" ({row_model} {version})" if row_model else "")
    detail = f"{what}: {kind.value}" + (" with comment" if comment else "")
    s.add(AuditEntry(study_id=study.id, user=user[:128], action="verdict", detail=detail, at=now))
    s.flush()
    log.info("verdict on study %s: %s by %s", study.id, detail, user)
    return row


def latest(verdicts: Iterable[Verdict]) -> dict[Target, Verdict]:
    """The latest verdict per target (job, label, model)."""
    out: dict[Target, Verdict] = {}
    for v in sorted(verdicts, key=lambda v: (v.at, v.id)):
        out[Target(v.job_id, v.label, v.model)] = v
    return out


def verdict_row(v: Verdict, iso: Any) -> dict[str, Any]:
    return {
        "id": v.id,
        "job_id": v.job_id,
        "label": v.label,
        "model": v.model,
        "model_version": v.model_version,
        "present": bool(v.present),
        "shadow": bool(v.shadow),
        "verdict": v.verdict,
        "comment": v.comment,
        "user": v.user,
        "at": iso(v.at),
    }


def summary(current: Iterable[Verdict], job_ids: set[int]) -> str | None:
    """What the worklist shows for a study, from the current verdicts on its latest jobs (shadow calls left out):
    ``missed`` (a finding was missed), ``mixed`` (one call confirmed, another rejected), ``rejected`` (the flag was
    wrong), ``confirmed`` (the flag was right), ``negative`` (nothing there, as the models said), ``unsure``; None
    when nobody has given one."""
    kinds = [(v.verdict, v.present) for v in current if v.job_id in job_ids and not v.shadow]
    if not kinds:
        return None
    if any(k == VerdictKind.MISSED.value for k, _ in kinds):
        return "missed"
    agreed = any(k == VerdictKind.AGREE.value and p for k, p in kinds)
    rejected = any(k == VerdictKind.DISAGREE.value and p for k, p in kinds)
    if agreed and rejected:
        return "mixed"
    if rejected:
        return "rejected"
    if agreed:
        return "confirmed"
    if any(k == VerdictKind.AGREE.value for k, _ in kinds):
        return "negative"
    return "unsure"
