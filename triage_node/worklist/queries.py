"""The worklist query and its JSON shape, shared by the web page, the JSON API and ``triage-node worklist``.

The shape is a contract for integrations; docs/api.md documents every field. Rows are plain JSON-ready dicts (strings,
numbers, booleans, None, lists, dicts): datetimes are ISO 8601 strings in UTC.

Each function runs inside the caller's session and only reads; keep the transaction short (the SQLite engine takes the
write lock at BEGIN).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session, selectinload

from triage_node.worklist.models import (
    AuditEntry,
    FindingRow,
    Job,
    JobState,
    OutboxState,
    Priority,
    Series,
    SeriesState,
    Study,
)
from triage_node.worklist.verdicts import latest, summary, verdict_row

Row = dict[str, Any]


class StudyStatus(StrEnum):
    """A study's processing status, derived from its series (first rule that matches wins):
    ``receiving`` (a series is still arriving), ``processing`` (a series is queued or running), ``sending`` (results
    built, delivery pending), ``error`` (a job failed or its delivery gave up), ``done`` (everything delivered, rejected
    or skipped)."""

    RECEIVING = "receiving"
    PROCESSING = "processing"
    SENDING = "sending"
    ERROR = "error"
    DONE = "done"


# The read-state filters the worklist accepts next to the status values.
READ_FILTERS = ("read", "unread")

_PRIORITY_RANK = case(
    {p.value: p.rank for p in Priority},
    value=Study.priority,
    else_=len(Priority),
)

# Worst first: the state a kind of result object shows when destinations disagree.
_DELIVERY_SEVERITY = (
    OutboxState.DEAD_LETTER.value,
    OutboxState.SENDING.value,
    OutboxState.PENDING.value,
    OutboxState.DELIVERED.value,
)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _latest_job(series: Series) -> Job | None:
    return max(series.jobs, key=lambda j: j.version) if series.jobs else None


def series_state(series: Series) -> str:
    """The latest job's state, or the series' own receiving state when no job exists yet."""
    job = _latest_job(series)
    return job.state if job is not None else series.state


def delivery(job: Job | None) -> dict[str, str] | str:
    """Per kind of result object (``seg``, ``sr``, ``map``), the least advanced outbox state across destinations, or
    ``"none"`` when the job has nothing in the outbox."""
    if job is None or not job.outbox:
        return "none"
    by_kind: dict[str, set[str]] = {}
    for item in job.outbox:
        by_kind.setdefault(item.kind, set()).add(item.state)
    out: dict[str, str] = {}
    for kind in sorted(by_kind):
        states = by_kind[kind]
        out[kind] = next((s for s in _DELIVERY_SEVERITY if s in states), sorted(states)[0])
    return out


def study_status(states: Iterable[str]) -> StudyStatus:
    """See ``StudyStatus``; ``states`` are the series states (``series_state``)."""
    found = set(states)
    if not found or SeriesState.RECEIVING.value in found:
        return StudyStatus.RECEIVING
    if found & {SeriesState.COMPLETE.value, JobState.COMPLETE.value, JobState.PROCESSING.value}:
        return StudyStatus.PROCESSING
    if JobState.RESULTS_READY.value in found:
        return StudyStatus.SENDING
    if found & {JobState.FAILED.value, JobState.DEAD_LETTER.value}:
        return StudyStatus.ERROR
    return StudyStatus.DONE


def _finding(row: FindingRow, series_uid: str) -> Row:
    return {
        "label": row.label,
        "present": bool(row.present),
        "probability": float(row.probability),
        "volume_ml": None if row.volume_ml is None else float(row.volume_ml),
        "location": row.location,
        "laterality": row.laterality,
        "count": row.count,
        "model": row.model,
        "model_version": row.model_version,
        "series_instance_uid": series_uid,
        "shadow": bool(row.shadow),
        "note": row.note,
    }


def _series(series: Series) -> Row:
    job = _latest_job(series)
    instances = job.instances if job is not None and job.instances is not None else series.received_instances
    return {
        "series_instance_uid": series.series_instance_uid,
        "series_number": series.series_number,
        "series_description": series.series_description,
        "modality": series.modality,
        "pipeline": job.pipeline if job is not None else None,
        "state": series_state(series),
        "reason": job.reason if job is not None else None,
        "instances": instances,
        "slices_kept": job.slices_kept if job is not None else None,
        "slices_dropped": job.slices_dropped if job is not None else None,
        "delivery": delivery(job),
        "job_id": job.id if job is not None else None,
    }


def _time_to_flag_s(study: Study) -> float | None:
    """Seconds from the last image of the first flagged series to its flag."""
    flagged = [
        (job.flagged_at, job.last_instance_at or series.last_received_at)
        for series in study.series
        if (job := _latest_job(series)) is not None and job.flagged_at is not None
    ]
    if not flagged:
        return None
    flagged_at, last_image = min(flagged, key=lambda pair: pair[0])
    return round(max(0.0, (flagged_at - last_image).total_seconds()), 1)


def study_row(study: Study) -> Row:
    """One study in the contract shape (see docs/api.md)."""
    series_rows = [_series(s) for s in study.series]
    findings: list[Row] = []
    for series in study.series:
        job = _latest_job(series)
        if job is not None:
            findings.extend(_finding(f, series.series_instance_uid) for f in job.findings)
    findings.sort(key=lambda f: (not f["present"], -f["probability"]))
    modalities = sorted({s.modality for s in study.series if s.modality})
    return {
        "study_instance_uid": study.study_instance_uid,
        "accession_number": study.accession_number,
        "priority": Priority(study.priority).value,
        "flagged_at": _iso(study.flagged_at),
        "status": study_status(r["state"] for r in series_rows).value,
        "findings": findings,
        "series": series_rows,
        "modality": "/".join(modalities) or None,
        "study_description": study.study_description,
        "study_date": study.study_date,
        "study_time": study.study_time,
        "patient_name": study.patient_name,
        "patient_id": study.patient_id,
        "patient_birth_date": study.patient_birth_date,
        "patient_sex": study.patient_sex,
        "first_received_at": _iso(study.first_received_at),
        "last_received_at": _iso(study.last_received_at),
        "time_to_flag_s": _time_to_flag_s(study),
        "acknowledged_by": study.acknowledged_by,
        "acknowledged_at": _iso(study.acknowledged_at),
        "verdict": _verdict(study),
    }


def _verdict(study: Study) -> str | None:
    """The worklist's verdict summary over the latest job of every series (see verdicts.summary)."""
    if not study.verdicts:
        return None
    jobs = {job.id for series in study.series if (job := _latest_job(series)) is not None}
    return summary(latest(study.verdicts).values(), jobs)


def _with_children(stmt: Select[Study]) -> Select[Study]:
    jobs = selectinload(Study.series).selectinload(Series.jobs)
    return stmt.options(jobs.selectinload(Job.findings), jobs.selectinload(Job.outbox), selectinload(Study.verdicts))


def check_filters(priority: str | None, state: str | None) -> None:
    """Raise ValueError naming the filter, its value and the allowed values."""
    if priority is not None and priority not in {p.value for p in Priority}:
        raise ValueError(f"priority must be one of {[p.value for p in Priority]}, got {priority!r}")
    allowed = [s.value for s in StudyStatus] + list(READ_FILTERS)
    if state is not None and state not in allowed:
        raise ValueError(f"state must be one of {allowed}, got {state!r}")


def worklist(
    session: Session,
    *,
    priority: str | None = None,
    modality: str | None = None,
    state: str | None = None,
    limit: int = 500,
) -> list[Row]:
    """Studies sorted by priority (critical > urgent > routine > none), then arrival (oldest first).

    ``priority``: a Priority value. ``modality``: studies with at least one series of that modality (case-insensitive).
    ``state``: a StudyStatus value, or ``read`` / ``unread`` (acknowledged or not). Raises ValueError on an unknown
    filter value.
    """
    check_filters(priority, state)
    if limit < 1:
        raise ValueError(f"limit must be a positive integer, got {limit}")
    stmt = select(Study).order_by(_PRIORITY_RANK, Study.first_received_at, Study.id)
    if priority is not None:
        stmt = stmt.where(Study.priority == priority)
    if modality:
        stmt = stmt.where(
            Study.id.in_(select(Series.study_id).where(func.upper(Series.modality) == modality.strip().upper()))
        )
    if state == "read":
        stmt = stmt.where(Study.acknowledged_at.is_not(None))
    elif state == "unread":
        stmt = stmt.where(Study.acknowledged_at.is_(None))
    status_filter = state if state is not None and state not in READ_FILTERS else None

    rows: list[Row] = []
    offset = 0
    # The status is derived in Python, so filter by it in pages until ``limit`` rows match.
    while len(rows) < limit:
        page = session.scalars(_with_children(stmt.offset(offset).limit(limit))).all()
        for study in page:
            row = study_row(study)
            if status_filter is None or row["status"] == status_filter:
                rows.append(row)
        if len(page) < limit or status_filter is None:
            break
        offset += limit
    return rows[:limit]


def study_detail(session: Session, uid: str, *, key_images_per_finding: int = 4) -> Row | None:
    """One study in the contract shape plus ``referring_physician``, ``key_images`` (present findings' key slices:
    ``job_id``, ``series_instance_uid``, ``sop_instance_uid``, ``label``) and ``audit`` (who did what, when).
    None when the study is unknown."""
    study = session.scalars(_with_children(select(Study).where(Study.study_instance_uid == uid))).one_or_none()
    if study is None:
        return None
    row = study_row(study)
    row["referring_physician"] = study.referring_physician
    key_images: list[Row] = []
    seen: set[tuple[int, str]] = set()
    for series in study.series:
        job = _latest_job(series)
        if job is None:
            continue
        present = sorted((f for f in job.findings if f.present and not f.shadow), key=lambda f: -f.probability)
        for finding in present:
            for sop in (finding.key_sop_uids or [])[:key_images_per_finding]:
                if (job.id, sop) in seen:
                    continue
                seen.add((job.id, sop))
                key_images.append(
                    {
                        "job_id": job.id,
                        "series_instance_uid": series.series_instance_uid,
                        "sop_instance_uid": sop,
                        "label": finding.label,
                    }
                )
    row["key_images"] = key_images
    audit = session.scalars(select(AuditEntry).where(AuditEntry.study_id == study.id).order_by(AuditEntry.id)).all()
    row["audit"] = [{"user": a.user, "action": a.action, "detail": a.detail, "at": _iso(a.at)} for a in audit]
    current = {v.id for v in latest(study.verdicts).values()}
    row["verdicts"] = [{**verdict_row(v, _iso), "current": v.id in current} for v in study.verdicts]
    return row


def count_unread(session: Session, priority: Priority = Priority.CRITICAL) -> int:
    """Studies of ``priority`` nobody has acknowledged yet."""
    stmt = select(func.count(Study.id)).where(Study.priority == priority.value, Study.acknowledged_at.is_(None))
    return int(session.scalar(stmt) or 0)


# ---- terminal table -------------------------------------------------------------------------------------------------


def format_finding(f: Row) -> str:
    """``intraparenchymal 0.97 12.3 ml right thalamus`` (probability, then volume and location when known)."""
    parts = [f["label"], f"{f['probability']:.2f}"]
    if f.get("volume_ml") is not None:
        parts.append(f"{f['volume_ml']:.1f} ml")
    if f.get("count") is not None:
        parts.append(f"n={f['count']}")
    if f.get("location"):
        parts.append(str(f["location"]))
    if f.get("note"):
        parts = [f["label"], f"({f['model']}: {f['note']})"]
    return " ".join(parts)


def format_delivery(series: Sequence[Row]) -> str:
    kinds: dict[str, str] = {}
    for s in series:
        if isinstance(s["delivery"], dict):
            for kind, state in s["delivery"].items():
                prev = kinds.get(kind)
                if prev is None or _DELIVERY_SEVERITY.index(state) < _DELIVERY_SEVERITY.index(prev):
                    kinds[kind] = state
    return " ".join(f"{k}:{v}" for k, v in sorted(kinds.items())) or "-"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def format_table(rows: Sequence[Row], *, include_phi: bool = True) -> str:
    """A fixed-width table for ``triage-node worklist``; one line per study, present findings only.
    ``include_phi=False`` leaves out the patient column."""
    headers = ["PRIORITY", "FLAGGED (UTC)", "STATUS", "READ", "MOD", "ACCESSION"]
    if include_phi:
        headers.append("PATIENT")
    headers += ["STUDY", "FINDINGS", "DELIVERY"]
    table: list[list[str]] = []
    for r in rows:
        flagged = (r["flagged_at"] or "-").replace("T", " ")[:19]
        present = [format_finding(f) for f in r["findings"] if (f["present"] or f.get("note")) and not f.get("shadow")]
        line = [
            r["priority"],
            flagged,
            r["status"],
            r["acknowledged_by"] or "-",
            r["modality"] or "-",
            r["accession_number"] or "-",
        ]
        if include_phi:
            patient = (r["patient_name"] or "").replace("^", " ").strip()
            line.append(_clip(f"{patient} [{r['patient_id'] or '-'}]", 32))
        line += [
            _clip(r["study_description"] or "-", 24),
            _clip("; ".join(present) or "-", 60),
            format_delivery(r["series"]),
        ]
        table.append(line)
    widths = [max(len(h), *(len(line[i]) for line in table)) if table else len(h) for i, h in enumerate(headers)]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in table]
    if not table:
        out.append("(no studies)")
    return "\n".join(out)
