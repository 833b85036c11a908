"""The few things the web app writes or looks up beyond the worklist query: acknowledgements, audit entries, the
files behind a key image. Each opens its own short transaction."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage_node.results.masks import masks_path
from triage_node.worklist.db import transaction
from triage_node.worklist.key_images import RenderError, inside
from triage_node.worklist.models import AuditEntry, Instance, Job, Series, Study
from triage_node.worklist.queries import study_detail

log = logging.getLogger(__name__)


class UnknownStudy(LookupError):
    def __init__(self, uid: str):
        super().__init__(f"no study with Study Instance UID {uid!r}")
        self.uid = uid


def audit(
    sessions: sessionmaker[Session],
    user: str,
    action: str,
    now: dt.datetime,
    *,
    study_id: int | None = None,
    detail: str | None = None,
) -> None:
    with transaction(sessions) as s:
        s.add(AuditEntry(study_id=study_id, user=user[:128], action=action, detail=detail, at=now))


def acknowledge(sessions: sessionmaker[Session], uid: str, user: str, now: dt.datetime) -> bool:
    """Mark the study read by ``user`` at ``now`` and audit it. Idempotent: the first acknowledgement stays; returns
    False when the study was already acknowledged. Raises UnknownStudy."""
    with transaction(sessions) as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == uid)).one_or_none()
        if study is None:
            raise UnknownStudy(uid)
        if study.acknowledged_at is not None:
            return False
        study.acknowledged_by = user
        study.acknowledged_at = now
        s.add(
            AuditEntry(study_id=study.id, user=user, action="acknowledge", detail=f"priority={study.priority}", at=now)
        )
    log.info("study %s acknowledged by %s", study.id, user)
    return True


def key_image_url(study_uid: str, job_id: int, sop_uid: str, label: str | None = None, size: int | None = None) -> str:
    query = {k: v for k, v in (("label", label), ("size", size)) if v is not None}
    suffix = f"?{urlencode(query)}" if query else ""
    return f"/studies/{quote(study_uid, safe='')}/key-images/{job_id}/{quote(sop_uid, safe='')}{suffix}"


def detail_with_urls(sessions: sessionmaker[Session], uid: str, user: str | None, now: dt.datetime) -> dict[str, Any]:
    """``study_detail`` plus a URL per key image; audits the view when ``user`` is given. Raises UnknownStudy."""
    with transaction(sessions) as s:
        detail = study_detail(s, uid)
        if detail is None:
            raise UnknownStudy(uid)
        if user is not None:
            study_id = s.scalars(select(Study.id).where(Study.study_instance_uid == uid)).one()
            s.add(AuditEntry(study_id=study_id, user=user, action="view", at=now))
    for image in detail["key_images"]:
        image["url"] = key_image_url(uid, image["job_id"], image["sop_instance_uid"], image["label"])
    return detail


@dataclass(frozen=True)
class KeyImageFiles:
    instance_file: Path
    masks_file: Path | None


def key_image_files(
    sessions: sessionmaker[Session], spool_dir: Path, study_uid: str, job_id: int, sop_uid: str
) -> KeyImageFiles | None:
    """The stored slice and the job's masks file, when the job belongs to the study and the slice to the job's
    series; None otherwise."""
    with transaction(sessions) as s:
        found = s.execute(
            select(Job.results_dir, Instance.path)
            .join(Series, Series.id == Job.series_id)
            .join(Study, Study.id == Series.study_id)
            .join(Instance, Instance.series_id == Series.id)
            .where(Study.study_instance_uid == study_uid, Job.id == job_id)
            .where(Instance.sop_instance_uid == sop_uid, Instance.superseded.is_(False), Instance.deleted_at.is_(None))
            .order_by(Instance.id.desc())
            .limit(1)
        ).first()
    if found is None:
        return None
    results_dir, instance_path = found
    try:
        instance_file = inside(spool_dir, instance_path)
    except RenderError:
        log.warning("job %s: stored instance path leaves the spool; not served", job_id)
        return None
    # The pipeline stores results_dir as it wrote it: absolute, or relative to the daemon's working directory.
    masks_file = masks_path(results_dir) if results_dir else None
    return KeyImageFiles(instance_file=instance_file, masks_file=masks_file)
