"""Spool retention: delete the instance files of series that are done with, keep every database row.

A series is done with when it is not receiving, its latest job ended in ``delivered``, ``rejected`` or ``skipped``, and
both that job and the series' last instance are older than ``storage.retention_days``. ``dead_letter`` and ``failed``
jobs keep their files (someone may resend or retry them). Result objects (SEG/SR under ``Job.results_dir``) are kept:
they are small and ``triage-node resend`` needs them.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from triage_node.worklist.db import transaction
from triage_node.worklist.models import Instance, Job, JobState, Series, SeriesState

log = logging.getLogger(__name__)

PURGEABLE = frozenset({JobState.DELIVERED.value, JobState.REJECTED.value, JobState.SKIPPED.value})


def _eligible(session: Session, cutoff: dt.datetime, series_id: int | None = None) -> list[int]:
    """Ids of series whose spooled files may go (see the module docstring)."""
    latest = (
        select(Job.series_id, func.max(Job.version).label("version")).group_by(Job.series_id).subquery()
    )
    stmt = (
        select(Series.id)
        .join(latest, latest.c.series_id == Series.id)
        .join(Job, (Job.series_id == Series.id) & (Job.version == latest.c.version))
        .where(Series.state == SeriesState.COMPLETE.value)
        .where(Series.last_received_at <= cutoff)
        .where(Job.state.in_(PURGEABLE))
        .where(func.coalesce(Job.finished_at, Job.updated_at) <= cutoff)
        .where(select(Instance.id).where(Instance.series_id == Series.id, Instance.deleted_at.is_(None)).exists())
        .order_by(Series.id)
    )
    if series_id is not None:
        stmt = stmt.where(Series.id == series_id)
    return list(session.scalars(stmt))


def _prune_empty_dirs(start: Path, root: Path) -> None:
    """Remove ``start`` and its parents while they are empty, stopping at ``root``."""
    d = start
    while d != root and d.is_relative_to(root):
        try:
            d.rmdir()
        except OSError:  # not empty (or already gone): stop climbing
            return
        d = d.parent


def purge_spool(
    sessions: sessionmaker[Session], spool_dir: Path, retention_days: float | None, now: dt.datetime
) -> int:
    """Delete spooled files of done-with series older than ``retention_days``; set ``Instance.deleted_at``.

    Returns the number of instances marked deleted. ``retention_days`` None disables retention. Each series is
    handled in its own short transaction (the write lock is shared with the C-STORE handler), and its eligibility is
    checked again inside it, so a late instance that reopened the series meanwhile keeps the files. Files are
    unlinked inside the transaction: if the commit fails, the next run finds the rows again and treats the missing
    files as already deleted, so nothing is leaked and nothing is marked deleted that is still on disk.
    """
    if retention_days is None:
        return 0
    if now.tzinfo is None:
        raise ValueError("purge_spool needs a timezone-aware now")
    cutoff = now - dt.timedelta(days=retention_days)
    root = Path(spool_dir).resolve()
    with sessions() as s:
        candidates = _eligible(s, cutoff)
    purged = 0
    for series_id in candidates:
        dirs: set[Path] = set()
        with transaction(sessions) as s:
            if not _eligible(s, cutoff, series_id):
                continue
            instances = s.scalars(
                select(Instance).where(Instance.series_id == series_id, Instance.deleted_at.is_(None))
            ).all()
            for inst in instances:
                path = (root / inst.path).resolve()
                if not path.is_relative_to(root):
                    log.warning("retention: instance %d path is outside the spool, not deleting it", inst.id)
                    continue
                # missing_ok: deleted by an earlier run whose commit did not land, or by hand; the row catches up.
                path.unlink(missing_ok=True)
                inst.deleted_at = now
                dirs.add(path.parent)
                purged += 1
        for d in dirs:
            _prune_empty_dirs(d, root)
        log.debug("retention: series %d: spooled instances deleted", series_id)
    if purged:
        log.info("retention: %d instances older than %g days removed from the spool", purged, retention_days)
    return purged
