"""Builds and connects the stages: database, spool, models, SCP, scheduler, job worker, web server; runs the main loop.

Signal handlers only set flags; the main loop acts on them (stop, reload) and pets the systemd watchdog, so a hung
loop stops the pets and systemd restarts the service.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import signal
import threading
import time
from collections.abc import Callable, Collection
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from pynetdicom import evt
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from triage_node import __version__
from triage_node.config import Config, ConfigError, load_config
from triage_node.notify import notify_due
from triage_node.ops.disk import DiskGuard
from triage_node.ops.prometheus import Metrics
from triage_node.ops.retention import purge_spool
from triage_node.ops.sdnotify import SdNotifier
from triage_node.receive.scp import ReceiveHooks, StorageSCP
from triage_node.receive.spool import Spool
from triage_node.receive.stow import StowServer
from triage_node.send.commitment import add_commitment_context, handle_commitment_report
from triage_node.send.outbox import deliver_due
from triage_node.series.completion import complete_due
from triage_node.users import UserStore
from triage_node.worklist import states
from triage_node.worklist.claims import (
    JOBS_CHANNEL,
    OUTBOX_CHANNEL,
    Claim,
    ClaimLost,
    Heartbeat,
    Listener,
    check_spool,
    fence,
    new_node_name,
)
from triage_node.worklist.db import is_postgres, make_engine, migrate, session_factory, transaction
from triage_node.worklist.models import Job, JobState

if TYPE_CHECKING:  # the work role imports the models' stack (torch, MONAI, highdicom) when it starts, others never
    from triage_node.inference.types import Analyzer
    from triage_node.pipeline import PipelineContext

log = logging.getLogger(__name__)

# What one process can do (`serve --roles`); all of them is the single node. Each works through the database only.
ROLES = ("receive", "work", "send", "web")


def parse_roles(text: str) -> frozenset[str]:
    """``receive,work`` -> the set; raises ValueError naming an unknown role. ``_`` separates roles too and a
    ``:suffix`` is ignored, for systemd instance names (``triage-node@receive:2``, ``triage-node@send_web``)."""
    roles = frozenset(r.split(":")[0].strip() for r in re.split(r"[,_]", text) if r.split(":")[0].strip())
    unknown = sorted(roles - set(ROLES))
    if unknown or not roles:
        named = ", ".join(unknown) or "(none given)"
        raise ValueError(f"--roles: unknown role(s) {named}; choose from {', '.join(ROLES)}")
    return roles


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class App:
    """One daemon: ``start()`` brings every stage up (READY=1 at the end), ``run()`` loops until a stop signal."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
        roles: Collection[str] = ROLES,
    ):
        self.config = config
        self.roles = frozenset(roles)
        self.config_path = config_path
        self.clock = clock
        self.engine = make_engine(config.storage.database_url)
        self.sessions = session_factory(self.engine)
        self.spool = Spool(config.storage.spool_dir)
        self.results_dir = config.storage.spool_dir.parent / "results"
        self.metrics = Metrics(self.sessions, config.storage.spool_dir)
        self.notifier = SdNotifier()
        self.analyzers: dict[str, Analyzer] = {}
        self.pipeline: PipelineContext | None = None
        # The config the next job runs with: a reload replaces it, the worker takes it up between jobs only.
        self._job_config: Config = config
        self.scheduler = BackgroundScheduler(timezone="UTC")
        # A periodic job that overlaps its next run is skipped by design; APScheduler would warn about each one.
        logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
        # highdicom narrates every attribute it copies at INFO; only its warnings matter to ops.
        logging.getLogger("highdicom").setLevel(logging.WARNING)
        self.scp: StorageSCP | None = None
        self.stow: StowServer | None = None  # DICOMweb STOW-RS receive
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._work = threading.Event()
        self._worker: threading.Thread | None = None
        self._web_server: object | None = None
        self._web_thread: threading.Thread | None = None
        self._loop_tick = 0.0
        # Several nodes on one database (PostgreSQL, or a subset of roles): claims hold leases, start-up leaves
        # other nodes' live claims alone, and spool temporaries of other receivers are not removed.
        self.shared = is_postgres(self.engine) or self.roles != frozenset(ROLES)
        self.node = new_node_name()
        self.lease_s = float(config.storage.lease_s)
        self.heartbeat = Heartbeat(self.sessions, self.node, self.lease_s, clock)
        self._claims: dict[int, Claim] = {}
        self._listener: Listener | None = None

    # -- start-up -------------------------------------------------------------------------------------------------

    # A node of a cluster may start (or be restarted by systemd) while the shared PostgreSQL is away for a moment:
    # it waits this long for it, saying so, before giving up. SQLite is a local file: an error there is final at once.
    DB_WAIT_S = 120.0

    def _migrate_when_reachable(self) -> None:
        deadline = time.monotonic() + self.DB_WAIT_S
        delay = 0.5
        while True:
            try:
                migrate(self.engine)
                return
            except OperationalError as e:
                if not is_postgres(self.engine) or time.monotonic() + delay > deadline:
                    raise
                reason = str(e.orig).strip().splitlines()[0] if e.orig is not None else type(e).__name__
                log.warning("database not reachable (%s); trying again in %.1f s", reason, delay)
                self.notifier.status("waiting for the database")
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def start(self) -> None:
        cfg = self.config
        roles = self.roles
        self.notifier.status("migrating database")
        self._migrate_when_reachable()
        if roles & {"receive", "work"}:
            check_spool(self.sessions, cfg.storage.spool_dir)  # SpoolMismatch: `serve` says why and exits
        removed = 0
        if "receive" in roles:
            removed = self.spool.remove_temporaries(older_than_s=3600 if self.shared else None)
        resumed: list[int] = []
        if not self.shared or roles & {"work", "send"}:
            with transaction(self.sessions) as s:
                resumed = states.resume_interrupted(s, self.clock(), only_expired=self.shared)
        if resumed or removed:
            log.info("resumed %d interrupted job(s); removed %d partial spool file(s)", len(resumed), removed)
        if "work" in roles:
            self._start_work()
        if "receive" in roles:
            self._start_receive()

        if roles & {"receive", "work"}:
            tick = min(1.0, cfg.series.quiet_period_s / 4)
            self.scheduler.add_job(
                self._db_guard(self._complete_due),
                "interval",
                seconds=tick,
                id="complete",
                max_instances=1,
                coalesce=True,
            )
        if "send" in roles:
            self.scheduler.add_job(
                self._db_guard(self._deliver), "interval", seconds=1.0, id="deliver", max_instances=1, coalesce=True
            )
            self.scheduler.add_job(
                self._db_guard(self._notify), "interval", seconds=2.0, id="notify", max_instances=1, coalesce=True
            )
        if cfg.storage.retention_days is not None and "work" in roles:
            self.scheduler.add_job(
                self._retention,
                "interval",
                seconds=3600,
                id="retention",
                max_instances=1,
                coalesce=True,
                next_run_time=self.clock() + dt.timedelta(seconds=60),
            )
        self.scheduler.start()
        if roles & {"work", "send"}:
            self.heartbeat.start()
        if is_postgres(self.engine) and roles & {"work", "send"}:
            callbacks = {}
            if "work" in roles:
                callbacks[JOBS_CHANNEL] = self._work.set
            if "send" in roles:
                callbacks[OUTBOX_CHANNEL] = lambda: self._wake("deliver")
            self._listener = Listener(self.engine, callbacks)
            self._listener.start()
        if "work" in roles:
            self._worker = threading.Thread(target=self._work_loop, name="job-worker", daemon=True)
            self._worker.start()
        if "web" in roles:
            self._start_web()
            self._say_how_to_add_a_user()
        self._work.set()
        self.notifier.ready()
        self.notifier.status(self._status_line())
        where = f"{cfg.scp.ae_title}@{cfg.scp.host}:{self.scp.port}" if self.scp is not None else "(not received here)"
        listed = ",".join(r for r in ROLES if r in roles)
        also = "" if roles == frozenset(ROLES) else f"; roles {listed}, node {self.node}"
        log.info("triage-node %s ready: DICOM %s%s", __version__, where, also)

    def _start_work(self) -> None:
        from triage_node.inference.card import ModelCard, gate_warnings
        from triage_node.inference.external import card_settings
        from triage_node.inference.registry import load_analyzers
        from triage_node.pipeline import PipelineContext

        cfg = self.config
        names = sorted({n for names in cfg.models.pipelines.values() for n in names})
        self.notifier.status(f"loading models {', '.join(names) or '(none)'}")
        self.analyzers = load_analyzers(
            cfg.models.dir, names, threads=cfg.models.threads, device=cfg.models.device, precision=cfg.models.precision
        )
        cards = {n: c for n, a in self.analyzers.items() if isinstance(c := getattr(a, "card", None), ModelCard)}
        for line in gate_warnings(cards, cfg.models.gates):
            log.warning("%s", line)

        self._job_config = card_settings(cfg, self.analyzers)  # + the priorities external model cards declare per label
        self.pipeline = PipelineContext(
            config=self._job_config,
            sessions=self.sessions,
            spool_dir=cfg.storage.spool_dir,
            results_dir=self.results_dir,
            analyzers=self.analyzers,
            observe_inference=lambda m, s: self.metrics.inference_seconds.labels(model=m).observe(s),
            observe_stage=lambda st, s: self.metrics.job_stage_seconds.labels(stage=st).observe(s),
            observe_flag=self.metrics.time_to_flag_seconds.observe,
            on_flag=lambda: self._wake("notify"),
            clock=self.clock,
            fence=self._fence,
        )

    def _start_receive(self) -> None:
        cfg = self.config
        guard = DiskGuard(cfg.storage.spool_dir, cfg.storage.min_free_mb)
        hooks = ReceiveHooks(
            disk_ok=guard.ok,
            on_stored=self._on_stored,
            on_complete=self._on_complete,
            on_refused=lambda status: self.metrics.c_store_failures.labels(status=f"0x{status:04X}").inc(),
            on_association=lambda ok: self.metrics.associations.labels(result="accepted" if ok else "rejected").inc(),
            clock=self.clock,
        )
        self.scp = StorageSCP(cfg.scp, self.spool, self.sessions, hooks)
        extra: list[tuple[object, ...]] = []
        if any(d.storage_commitment for d in cfg.destinations):
            # The PACS answers a commitment request on an association of its own, with an N-EVENT-REPORT.
            add_commitment_context(self.scp.ae)
            extra.append(
                (evt.EVT_N_EVENT_REPORT, handle_commitment_report, [self.sessions, cfg.destinations, self.clock])
            )
        self.scp.start(extra_handlers=extra)
        if cfg.dicomweb.enabled:  # STOW-RS: its own HTTP listener, the SCP's store path (same durability)
            self.stow = StowServer(cfg.dicomweb, self.scp.store)
            self.stow.start()

    def _start_web(self) -> None:
        if not self.config.web.enabled:
            return
        import uvicorn

        from triage_node.web import WebContext, create_app

        ctx = WebContext(
            config=self.config,
            sessions=self.sessions,
            spool_dir=self.config.storage.spool_dir,
            metrics_registry=self.metrics.registry,
            clock=self.clock,
        )
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(ctx),
                host=self.config.web.host,
                port=self.config.web.port,
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
        )
        # uvicorn installs signal handlers only in the main thread; here the main loop keeps them.
        self._web_server = server
        self._web_thread = threading.Thread(target=server.run, name="web", daemon=True)
        self._web_thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline and self._web_thread.is_alive():
            time.sleep(0.02)
        if not server.started:
            raise RuntimeError(f"web server could not start on {self.config.web.host}:{self.config.web.port}")
        log.info("web worklist on http://%s:%d/", self.config.web.host, self.config.web.port)

    def _say_how_to_add_a_user(self) -> None:
        """First start (no user anywhere): say, once, how to create the first login."""
        web = self.config.web
        if not web.enabled or web.auth != "password" or UserStore(self.sessions, web.users).count() > 0:
            return
        config = f" --config {self.config_path.absolute()}" if self.config_path is not None else ""
        log.warning(
            "no web users yet, so nobody can log in to http://%s:%d/. Create the first one with:  "
            "triage-node user add NAME%s  (it asks for the password; this daemon accepts it at once)",
            web.host, web.port, config,
        )

    # -- scheduled work -------------------------------------------------------------------------------------------

    def _on_stored(self, nbytes: int, series_id: int) -> None:
        self.metrics.instances_received.inc()
        self.metrics.bytes_received.inc(nbytes)

    def _on_complete(self) -> None:
        self.metrics.series_completed.inc()
        self._work.set()

    def _complete_due(self) -> None:
        with transaction(self.sessions) as s:
            jobs = complete_due(
                s,
                self.clock(),
                self.config.series.quiet_period_s,
                self.config.series.count_rules,
                self.config.series.incomplete_grace_s,
            )
        if jobs:
            self.metrics.series_completed.inc(len(jobs))
            self._work.set()

    def _db_guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        """A scheduled job whose database is away (PostgreSQL restarting) says so in one line and runs at its next
        tick, instead of a traceback per tick."""

        def run() -> None:
            try:
                fn()
            except SQLAlchemyError as exc:
                log.warning("%s: database unavailable (%s); next tick", fn.__name__.lstrip("_"), type(exc).__name__)

        run.__name__ = fn.__name__
        return run

    def _work_loop(self) -> None:
        while not self._stop.is_set():
            self._work.wait(timeout=1.0)
            self._work.clear()
            try:
                while not self._stop.is_set() and self._process_one():
                    pass
            except SQLAlchemyError as exc:  # the database is away: the claim (if any) resumes when its lease runs out
                log.warning("job worker: database unavailable (%s); retrying", type(exc).__name__)
                self._stop.wait(1.0)

    def _process_one(self) -> bool:
        with transaction(self.sessions) as s:
            job = states.claim_next_job(s, self.clock(), self.node, self.lease_s)
            claim = Claim(job.id, self.node, job.claim_token) if job else None
        if claim is None:
            return False
        job_id = claim.job_id
        self._claims[job_id] = claim
        self.heartbeat.hold_job(claim)
        from triage_node.pipeline import fail_job, run_job

        pipeline = self._next_pipeline()
        try:
            if run_job(pipeline, job_id) == JobState.RESULTS_READY:
                self._wake("deliver")
        except ClaimLost as exc:
            log.warning("%s: this node's work on it is dropped (the new holder runs it)", exc)
        except Exception as exc:  # the worker's edge: any error becomes a failed, retryable job
            log.exception("job %d raised", job_id)
            try:
                fail_job(pipeline, job_id, exc)
            except ClaimLost as lost:
                log.warning("%s: the failure is not recorded (the new holder runs it)", lost)
            except SQLAlchemyError as db_exc:  # cannot record it: the lease runs out and the job is claimed again
                log.warning("job %d: failure not recorded, database unavailable (%s)", job_id, type(db_exc).__name__)
        finally:
            self.heartbeat.release_job(job_id)
            self._claims.pop(job_id, None)
        return True

    def _next_pipeline(self) -> PipelineContext:
        """The pipeline context for the next job, with the config the last reload handed over (a job never sees the
        config change under it)."""
        pipeline = self.pipeline
        assert pipeline is not None  # the work role made it at start
        config = self._job_config  # one read: a reload may replace it at any time
        if config is not pipeline.config:
            pipeline = self.pipeline = dataclasses.replace(pipeline, config=config)
        return pipeline

    def _fence(self, session: object, job_id: int) -> None:
        claim = self._claims.get(job_id)
        if claim is not None:
            fence(session, claim)  # type: ignore[arg-type]

    def _wake(self, job_id: str) -> None:
        """Run a periodic scheduler job now instead of at its next tick (results waiting, a series just completed)."""
        try:
            self.scheduler.modify_job(job_id, next_run_time=self.clock())
        except JobLookupError:
            log.debug("scheduler job %s is not scheduled", job_id)

    def _deliver(self) -> None:
        if self.config.destinations:
            deliver_due(
                self.sessions,
                self.config.destinations,
                self.config.scp.ae_title,
                self.clock(),
                node=self.node if self.shared else None,
                lease_s=self.lease_s,
                heartbeat=self.heartbeat if self.shared else None,
            )

    def _notify(self) -> None:
        notify_due(self.sessions, self.config.notifications, self.clock())

    def _retention(self) -> None:
        days = self.config.storage.retention_days
        if days is not None:
            n = purge_spool(self.sessions, self.config.storage.spool_dir, days, self.clock())
            if n:
                log.info("retention removed %d spooled instance file(s) older than %g days", n, days)

    # -- main loop, reload, stop ----------------------------------------------------------------------------------

    def _status_line(self) -> str:
        try:
            with self.sessions() as s:
                counts = dict(s.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        except SQLAlchemyError as exc:  # a shared database away for a while: the main loop carries on
            return f"database unavailable ({type(exc).__name__})"
        queued = counts.get(JobState.COMPLETE.value, 0) + counts.get(JobState.PROCESSING.value, 0)
        where = f"listening on {self.config.scp.port}" if "receive" in self.roles else "roles " + ",".join(
            r for r in ROLES if r in self.roles
        )
        return (
            f"{where}; {queued} job(s) queued, "
            f"{counts.get(JobState.RESULTS_READY.value, 0)} awaiting delivery, "
            f"{counts.get(JobState.DEAD_LETTER.value, 0)} dead-lettered"
        )

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            self._stop.set()

        def reload(signum: int, _frame: FrameType | None) -> None:
            self._reload.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, reload)

    def run(self) -> None:
        """The main loop: pet the watchdog, refresh STATUS=, act on reload and stop flags."""
        interval = self.notifier.watchdog_interval_s()
        pet = max(0.2, min(2.0, (interval or 4.0) / 3))
        last_status = 0.0
        while not self._stop.wait(timeout=pet):
            self.notifier.watchdog()
            if self._reload.is_set():
                self._reload.clear()
                self.reload()
            if time.monotonic() - last_status > 10:
                last_status = time.monotonic()
                self.notifier.status(self._status_line())
        self.shutdown()

    def request_stop(self) -> None:
        self._stop.set()

    def reload(self) -> None:
        """SIGHUP: re-read the config; apply rules, destinations and the allow-list; name what needs a restart."""
        if self.config_path is None:
            log.warning("reload requested but the daemon runs on built-in defaults: nothing to reload")
            return
        self.notifier.reloading()
        try:
            new = load_config(self.config_path)
        except ConfigError as exc:
            log.error("reload refused, the config is invalid (keeping the running one):\n%s", exc)
            self.notifier.ready()
            return
        live = {"series", "destinations", "scp.allowed_callers", "notifications", "filter"}
        restart = []
        for section in ("storage", "models", "web", "logging"):
            if getattr(new, section) != getattr(self.config, section):
                restart.append(section)
        scp_other = new.scp.model_copy(update={"allowed_callers": self.config.scp.allowed_callers})
        if scp_other != self.config.scp:
            restart.append("scp (other than allowed_callers)")
        applied = new.model_copy(
            update={k: getattr(self.config, k) for k in ("storage", "models", "web", "logging")}
            | {"scp": self.config.scp.model_copy(update={"allowed_callers": new.scp.allowed_callers})}
        )
        self.config = applied
        if self.pipeline is not None:
            from triage_node.inference.external import card_settings

            self._job_config = card_settings(applied, self.analyzers)  # the worker takes it before its next job
        if self.scp is not None:
            self.scp.reload_policy(applied.scp)
        if self.stow is not None:
            self.stow.service.reload(applied.dicomweb)  # allowed_senders
        log.info("reloaded %s", ", ".join(sorted(live)))
        if restart:
            log.warning("changed settings that need a restart to take effect: %s", ", ".join(restart))
        self.notifier.ready()

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Stop accepting associations, let in-flight C-STOREs and the running job finish, stop the scheduler."""
        log.info("stopping: no new associations; waiting for in-flight transfers and the running job")
        self.notifier.stopping()
        self._stop.set()
        if self.stow is not None:
            self.stow.stop()
        if self.scp is not None:
            self.scp.stop(timeout_s=timeout_s / 2)
        self._work.set()
        if self._worker is not None:
            self._worker.join(timeout=timeout_s / 2)
            if self._worker.is_alive():
                log.warning("the running job did not finish in time; it resumes at the next start")
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        self.heartbeat.stop()
        if self._listener is not None:
            self._listener.stop()
        if self._web_server is not None:
            self._web_server.should_exit = True  # type: ignore[attr-defined]
            if self._web_thread is not None:
                self._web_thread.join(timeout=5)
        self.engine.dispose()
        log.info("stopped")
