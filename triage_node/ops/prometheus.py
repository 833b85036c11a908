"""Prometheus metrics: counters and histograms the daemon updates as it works, and gauges read from the database at
scrape time (so they are right after a restart and cannot drift from the rows).

Every metric is registered in the :class:`Metrics` object's own ``CollectorRegistry`` (no global state): the web app
serves ``generate_latest(metrics.registry)`` at ``/metrics``. Names carry the ``triage_node_`` prefix;
docs/operations.md explains each one.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from triage_node.ops.disk import free_bytes
from triage_node.worklist.models import Job, JobState, Notification, OutboxItem, OutboxState, Series, SeriesState

log = logging.getLogger(__name__)

NAMESPACE = "triage_node"

# CPU inference of one model on one series: a fraction of a second (classifier on a few slices) to minutes (3-D
# segmenter on a 2-core node under load).
INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
# Last image received -> worklist flag. Includes the series quiet period (30 s by default), so it starts there.
TIME_TO_FLAG_BUCKETS = (10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1800, 3600, 7200)
STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _package_version() -> str:
    try:
        return version("triage-node")
    except PackageNotFoundError:
        return "unknown"


class DatabaseCollector(Collector):
    """Gauges computed from the database and the spool's file system at each scrape."""

    def __init__(
        self, sessions: sessionmaker[Session] | None, spool_dir: Path, clock: Callable[[], dt.datetime]
    ) -> None:
        self.sessions = sessions
        self.spool_dir = Path(spool_dir)
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        # Names only (no samples): lets the registry check for duplicates without querying the database.
        return list(self._families())

    def _families(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(f"{NAMESPACE}_jobs", "Jobs by state (rows in the jobs table).", labels=["state"])
        yield GaugeMetricFamily(
            f"{NAMESPACE}_series_receiving", "Series still receiving instances (waiting for quiet period or count)."
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_outbox_depth", "Result objects waiting to be sent (outbox items pending or sending)."
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_outbox_oldest_pending_age_seconds",
            "Age of the oldest outbox item not yet delivered (0 when the outbox is empty).",
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_outbox_dead_letters", "Outbox items that gave up (dead_letter); need triage-node resend."
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_notifications_pending", "Critical-finding notifications not yet sent (pending)."
        )
        yield GaugeMetricFamily(f"{NAMESPACE}_database_up", "1 when the scrape could read the database, else 0.")
        yield GaugeMetricFamily(
            f"{NAMESPACE}_spool_free_bytes", "Bytes free for the daemon on the spool's file system."
        )

    def collect(self) -> Iterable[Metric]:
        fam = {f.name: f for f in self._families()}
        try:
            fam[f"{NAMESPACE}_spool_free_bytes"].add_metric([], float(free_bytes(self.spool_dir)))
        except OSError as exc:
            log.warning("metrics: cannot stat spool %s: %s", self.spool_dir, exc)
            del fam[f"{NAMESPACE}_spool_free_bytes"]
        if self.sessions is None:
            for name in list(fam):
                if name != f"{NAMESPACE}_spool_free_bytes":
                    del fam[name]
            return list(fam.values())
        try:
            self._collect_db(fam)
            fam[f"{NAMESPACE}_database_up"].add_metric([], 1.0)
        except SQLAlchemyError as exc:
            # A locked or missing database must not break the scrape: report it, and the rest.
            log.warning("metrics: cannot read the database: %s", exc)
            keep = {f"{NAMESPACE}_database_up", f"{NAMESPACE}_spool_free_bytes"}
            fam = {k: v for k, v in fam.items() if k in keep}
            fam[f"{NAMESPACE}_database_up"].add_metric([], 0.0)
        return list(fam.values())

    def _collect_db(self, fam: dict[str, GaugeMetricFamily]) -> None:
        assert self.sessions is not None
        now = self.clock()
        undelivered = (OutboxState.PENDING.value, OutboxState.SENDING.value)
        with self.sessions() as s:
            jobs = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).tuples().all())
            receiving = s.scalar(
                select(func.count()).select_from(Series).where(Series.state == SeriesState.RECEIVING.value)
            )
            depth, oldest = s.execute(
                select(func.count(), func.min(OutboxItem.created_at)).where(OutboxItem.state.in_(undelivered))
            ).one()
            dead = s.scalar(
                select(func.count()).select_from(OutboxItem).where(OutboxItem.state == OutboxState.DEAD_LETTER.value)
            )
            notes = s.scalar(
                select(func.count()).select_from(Notification).where(Notification.state == "pending")
            )
        for state in JobState:
            fam[f"{NAMESPACE}_jobs"].add_metric([state.value], float(jobs.pop(state.value, 0)))
        for other, count in sorted(jobs.items()):  # a state the enum does not know (older or newer code)
            fam[f"{NAMESPACE}_jobs"].add_metric([str(other)], float(count))
        fam[f"{NAMESPACE}_series_receiving"].add_metric([], float(receiving or 0))
        fam[f"{NAMESPACE}_outbox_depth"].add_metric([], float(depth or 0))
        # func.min bypasses the UTCDateTime type on some backends: accept a naive UTC value or a string too.
        if isinstance(oldest, str):
            oldest = dt.datetime.fromisoformat(oldest)
        if isinstance(oldest, dt.datetime) and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=dt.UTC)
        age = max(0.0, (now - oldest).total_seconds()) if oldest is not None else 0.0
        fam[f"{NAMESPACE}_outbox_oldest_pending_age_seconds"].add_metric([], age)
        fam[f"{NAMESPACE}_outbox_dead_letters"].add_metric([], float(dead or 0))
        fam[f"{NAMESPACE}_notifications_pending"].add_metric([], float(notes or 0))


class Metrics:
    """All of triage-node's metrics in one registry.

    The receive path calls ``instances_received.inc()``, ``bytes_received.inc(n)``,
    ``associations.labels(result="accepted").inc()``, ``c_store_failures.labels(status="0xA700").inc()``; the
    scheduler ``series_completed.inc()``; the pipeline ``inference_seconds.labels(model=name).observe(s)``,
    ``job_stage_seconds.labels(stage=...).observe(s)`` and ``time_to_flag_seconds.observe(s)``.
    """

    def __init__(
        self,
        sessions: sessionmaker[Session] | None,
        spool_dir: Path,
        *,
        clock: Callable[[], dt.datetime] = _utcnow,
        process_metrics: bool = True,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.instances_received = Counter(
            "instances_received", "DICOM instances stored durably (C-STORE success).", namespace=NAMESPACE, registry=r
        )
        self.bytes_received = Counter(
            "bytes_received", "Bytes of DICOM instances stored durably.", namespace=NAMESPACE, registry=r
        )
        self.associations = Counter(
            "associations",
            "Association requests from peers, by result (accepted or rejected).",
            ["result"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.series_completed = Counter(
            "series_completed", "Series found complete (quiet period or count) and queued.", namespace=NAMESPACE,
            registry=r,
        )
        self.c_store_failures = Counter(
            "c_store_failures",
            "C-STORE requests answered with a failure, by status (e.g. 0xA700 out of resources).",
            ["status"],
            namespace=NAMESPACE,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "inference_seconds",
            "Wall time of one model on one series.",
            ["model"],
            namespace=NAMESPACE,
            registry=r,
            buckets=INFERENCE_BUCKETS,
        )
        self.time_to_flag_seconds = Histogram(
            "time_to_flag_seconds",
            "From the last instance of a series received to its worklist flag (includes the quiet period).",
            namespace=NAMESPACE,
            registry=r,
            buckets=TIME_TO_FLAG_BUCKETS,
        )
        self.job_stage_seconds = Histogram(
            "job_stage_seconds",
            "Wall time of each stage of a job (load, filter, results); model time is inference_seconds.",
            ["stage"],
            namespace=NAMESPACE,
            registry=r,
            buckets=STAGE_BUCKETS,
        )
        self.build_info = Info("build", "triage-node version.", namespace=NAMESPACE, registry=r)
        self.build_info.info({"version": _package_version()})
        # Pre-create the fixed label values so dashboards see zeros instead of absent series.
        for result in ("accepted", "rejected"):
            self.associations.labels(result=result)
        self.database = DatabaseCollector(sessions, spool_dir, clock)
        r.register(self.database)
        if process_metrics:
            ProcessCollector(namespace="", registry=r)
            PlatformCollector(registry=r)
