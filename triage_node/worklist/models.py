"""SQLAlchemy models: studies, series, instances, jobs, findings, outbox, notifications, audit log, web users,
radiologists' verdicts and the acquisition attributes the performance page watches for drift.

Every durable fact lives in these rows; the spool holds only instance bytes named by ``Instance.path``.
Changing a model needs an Alembic revision in ``triage_node/worklist/migrations/versions``.
"""

from __future__ import annotations

import datetime as dt
from enum import Enum

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import JSON, TypeDecorator


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Priority(str, Enum):
    CRITICAL = "critical"
    URGENT = "urgent"
    ROUTINE = "routine"
    NONE = "none"

    @property
    def rank(self) -> int:
        return {"critical": 0, "urgent": 1, "routine": 2, "none": 3}[self.value]


class SeriesState(str, Enum):
    RECEIVING = "receiving"
    COMPLETE = "complete"


class JobState(str, Enum):
    """See ARCHITECTURE.md. ``complete`` = queued for processing. Terminal: delivered, rejected, skipped, dead_letter,
    and failed once its attempts are used up."""

    COMPLETE = "complete"
    PROCESSING = "processing"
    RESULTS_READY = "results_ready"
    DELIVERED = "delivered"
    REJECTED = "rejected"
    SKIPPED = "skipped"
    FAILED = "failed"
    DEAD_LETTER = "dead_letter"


class OutboxState(str, Enum):
    PENDING = "pending"
    SENDING = "sending"
    DELIVERED = "delivered"
    DEAD_LETTER = "dead_letter"


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_name: Mapped[str | None] = mapped_column(String(324))
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_birth_date: Mapped[str | None] = mapped_column(String(8))
    patient_sex: Mapped[str | None] = mapped_column(String(16))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    study_id: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(128))
    study_date: Mapped[str | None] = mapped_column(String(8))
    study_time: Mapped[str | None] = mapped_column(String(16))
    referring_physician: Mapped[str | None] = mapped_column(String(324))
    first_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    priority: Mapped[str] = mapped_column(String(16), default=Priority.NONE.value)
    flagged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128))
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")
    verdicts: Mapped[list[Verdict]] = relationship(order_by="Verdict.id", viewonly=True)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str | None] = mapped_column(String(128))
    body_part: Mapped[str | None] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    expected_instances: Mapped[int | None] = mapped_column(Integer)
    received_instances: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Not indexed: no query needs it, and an unindexed column keeps each receive group's update of this row a
    # heap-only (HOT) update on PostgreSQL (migration 0006).
    last_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    state: Mapped[str] = mapped_column(String(16), default=SeriesState.RECEIVING.value, index=True)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # Incremented each time a late instance reopens a completed series; each completion makes a job of that version.
    version: Mapped[int] = mapped_column(Integer, default=1)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", order_by="Instance.id")
    jobs: Mapped[list[Job]] = relationship(back_populates="series", order_by="Job.version")


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (UniqueConstraint("sop_instance_uid", "sha256"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    # Looked up through the unique (sop_instance_uid, sha256) index, which starts with it.
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(512))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A newer version with the same SOP Instance UID and different bytes supersedes this one (newest wins).
    superseded: Mapped[bool] = mapped_column(Boolean, default=False)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("series_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=JobState.COMPLETE.value, index=True)
    pipeline: Mapped[str | None] = mapped_column(String(32))
    rule: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    flagged_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_instance_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    instances: Mapped[int | None] = mapped_column(Integer)
    slices_kept: Mapped[int | None] = mapped_column(Integer)
    slices_dropped: Mapped[int | None] = mapped_column(Integer)
    priority: Mapped[str] = mapped_column(String(16), default=Priority.NONE.value)
    # Result identities, made once when the job is created so that a rebuild or resend yields identical objects.
    seg_series_uid: Mapped[str] = mapped_column(String(64))
    seg_sop_uid: Mapped[str] = mapped_column(String(64))
    sr_series_uid: Mapped[str] = mapped_column(String(64))
    sr_sop_uid: Mapped[str] = mapped_column(String(64))
    map_series_uid: Mapped[str] = mapped_column(String(64))
    map_sop_uid: Mapped[str] = mapped_column(String(64))
    result_series_number: Mapped[int] = mapped_column(Integer, default=9000)
    results_dir: Mapped[str | None] = mapped_column(String(512))
    timings: Mapped[dict[str, float] | None] = mapped_column(JSON)
    # The node holding a ``processing`` claim, until when (its heartbeat extends it; once past, another node may take
    # the job over), and the claim's number: each claim increments it, and a node commits only under its own number.
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    claim_token: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    series: Mapped[Series] = relationship(back_populates="jobs")
    findings: Mapped[list[FindingRow]] = relationship(back_populates="job", order_by="FindingRow.id")
    outbox: Mapped[list[OutboxItem]] = relationship(back_populates="job", order_by="OutboxItem.id")


class FindingRow(Base):
    __tablename__ = "findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    label: Mapped[str] = mapped_column(String(64))
    present: Mapped[bool] = mapped_column(Boolean)
    probability: Mapped[float] = mapped_column(Float)
    volume_ml: Mapped[float | None] = mapped_column(Float)
    location: Mapped[str | None] = mapped_column(String(128))
    laterality: Mapped[str | None] = mapped_column(String(16))
    count: Mapped[int | None] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(32))
    key_slices: Mapped[list[int] | None] = mapped_column(JSON)
    key_sop_uids: Mapped[list[str] | None] = mapped_column(JSON)
    positions: Mapped[list[list[float]] | None] = mapped_column(JSON)
    # Made by a model in ``models.shadow``: recorded and rated, but it set no priority and was sent nowhere.
    shadow: Mapped[bool] = mapped_column(Boolean, default=False, server_default="0")
    # Label ``not_assessed``: why the model did not run on this series (outside its training domain).
    note: Mapped[str | None] = mapped_column(String(256))

    job: Mapped[Job] = relationship(back_populates="findings")


class OutboxItem(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("job_id", "destination", "kind"),
        Index("ix_outbox_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # seg | sr | map
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(512))
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    committed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    # The node sending a ``sending`` row and until when; past it, another node's sender takes the row over.
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)

    job: Mapped[Job] = relationship(back_populates="outbox")


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (UniqueConstraint("job_id", "channel"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    channel: Mapped[str] = mapped_column(String(256))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), index=True)
    user: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebUser(Base):
    """A worklist login made by ``triage-node user add`` (argon2id hash; the password itself is never stored).

    The web app reads this table at each login, so a user added, changed or removed applies at once; users listed in
    ``web.users`` of the config file are checked first."""

    __tablename__ = "web_users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)


class ClusterSetting(Base):
    """Facts every node of one database agrees on, e.g. ``spool_id``: the identity of the spool the database was
    created with (a marker file in the spool holds the same value)."""

    __tablename__ = "cluster_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(512))


class VerdictKind(str, Enum):
    """A radiologist's verdict. On a present finding: agree, disagree, unsure. On a job without a flag: ``agree``
    (no finding, the negative is right), ``missed`` (a finding the models missed), unsure."""

    AGREE = "agree"
    DISAGREE = "disagree"
    UNSURE = "unsure"
    MISSED = "missed"


class Verdict(Base):
    """One verdict by one user at one time; a later verdict by anyone on the same (job, label, model) supersedes it
    for the figures, and every one stays (the audit log has them too).

    The finding is named by job, label and model (its version copied), not by the finding row's id: a rerun of the
    job replaces its finding rows, and the verdict must survive that. ``present`` is what the model said."""

    __tablename__ = "verdicts"
    __table_args__ = (Index("ix_verdicts_target", "job_id", "label", "model"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    label: Mapped[str] = mapped_column(String(64))
    model: Mapped[str | None] = mapped_column(String(64))
    model_version: Mapped[str | None] = mapped_column(String(32))
    present: Mapped[bool] = mapped_column(Boolean)
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    verdict: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text)
    user: Mapped[str] = mapped_column(String(128))
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class SeriesAcquisition(Base):
    """What the performance page compares with each model card's input ranges, read once per series from one stored
    header (and, for the head size, one middle slice's pixels). No patient data."""

    __tablename__ = "series_acquisition"

    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), primary_key=True)
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    model_name: Mapped[str | None] = mapped_column(String(64))
    kernel: Mapped[str | None] = mapped_column(String(64))
    slice_thickness_mm: Mapped[float | None] = mapped_column(Float)
    pixel_spacing_mm: Mapped[float | None] = mapped_column(Float)
    head_width_mm: Mapped[float | None] = mapped_column(Float)
    read_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    error: Mapped[str | None] = mapped_column(String(256))
