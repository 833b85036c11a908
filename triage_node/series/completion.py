"""When a series is complete: its declared size reached, a configured count reached, or a quiet period passed.

Completing a series makes exactly one job for the series' current version (unique per series and version), with the
UIDs of its results made here, once, so a rebuild or a resend produces identical objects.
"""

from __future__ import annotations

import datetime as dt
import logging

from sqlalchemy import select
from sqlalchemy.orm import Session

from triage_node.config import CountRule
from triage_node.results.identity import ResultIdentity
from triage_node.series.routing import SeriesAttributes, matches
from triage_node.worklist.claims import JOBS_CHANNEL, notify
from triage_node.worklist.db import is_postgres
from triage_node.worklist.models import Job, JobState, Series, SeriesState

log = logging.getLogger(__name__)


def complete_series(session: Session, series: Series, now: dt.datetime, why: str) -> Job:
    """Mark ``series`` complete and queue a job for its current version (idempotent)."""
    series.state = SeriesState.COMPLETE.value
    series.completed_at = now
    job = session.scalar(select(Job).where(Job.series_id == series.id, Job.version == series.version))
    if job is not None:
        return job
    job = new_job(series, now)
    session.add(job)
    session.flush()
    notify(session, JOBS_CHANNEL)  # wakes the work nodes at commit (PostgreSQL); they poll as well
    log.info(
        "series %s complete (%s): %d instances, version %d, job %d",
        series.series_instance_uid,
        why,
        series.received_instances,
        series.version,
        job.id,
    )
    return job


def new_job(series: Series, now: dt.datetime) -> Job:
    """A queued job for ``series``' current version with its result identity, made here and nowhere else."""
    identity = ResultIdentity.new(
        series_number=9000 + ((series.series_number or 0) % 900) * 10 + min(series.version, 9), created_at=now
    )
    return Job(
        series_id=series.id,
        version=series.version,
        state=JobState.COMPLETE.value,
        created_at=now,
        updated_at=now,
        last_instance_at=series.last_received_at,
        instances=series.received_instances,
        seg_series_uid=identity.seg_series_uid,
        seg_sop_uid=identity.seg_sop_uid,
        sr_series_uid=identity.sr_series_uid,
        sr_sop_uid=identity.sr_sop_uid,
        map_series_uid=identity.map_series_uid,
        map_sop_uid=identity.map_sop_uid,
        result_series_number=identity.series_number,
    )


def _count_rule_fits(series: Series, rules: tuple[CountRule, ...]) -> bool:
    if not rules:
        return False
    attrs = SeriesAttributes(
        modality=series.modality or "",
        body_part=series.body_part or "",
        study_description=series.study.study_description or "",
        series_description=series.series_description or "",
    )
    return any(matches(r.match, attrs) and series.received_instances >= r.count for r in rules)


def complete_due(
    session: Session,
    now: dt.datetime,
    quiet_period_s: float,
    count_rules: tuple[CountRule, ...] = (),
    incomplete_grace_s: float = 300.0,
) -> list[Job]:
    """Complete every receiving series whose declared size or a count rule is reached, or that has been quiet long
    enough: ``quiet_period_s``, or ``incomplete_grace_s`` when it declares a size it has not reached. Returns the
    jobs made."""
    cutoff = now - dt.timedelta(seconds=quiet_period_s)
    incomplete_cutoff = now - dt.timedelta(seconds=max(quiet_period_s, incomplete_grace_s))
    jobs = []
    query = select(Series).where(Series.state == SeriesState.RECEIVING.value).order_by(Series.id)
    if is_postgres(session):
        # Several nodes run this: each completes the rows it could lock; a row a receiver is writing waits a tick.
        query = query.with_for_update(of=Series, skip_locked=True)
    receiving = session.scalars(query).all()
    for series in receiving:
        if series.expected_instances and series.received_instances >= series.expected_instances:
            jobs.append(complete_series(session, series, now, "declared size reached"))
        elif _count_rule_fits(series, count_rules):
            jobs.append(complete_series(session, series, now, "count rule"))
        elif series.expected_instances:
            if series.last_received_at <= incomplete_cutoff:
                why = f"incomplete ({series.received_instances} of {series.expected_instances}) after the grace period"
                jobs.append(complete_series(session, series, now, why))
        elif series.last_received_at <= cutoff:
            jobs.append(complete_series(session, series, now, f"quiet for {quiet_period_s:g} s"))
    return jobs
