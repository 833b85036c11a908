"""Process one job: route the series, build its volume, drop blank slices, run the models, store findings, build the
SEG/SR results and queue them for delivery.

Flag first: as soon as the models have decided the worklist priority (the first finding that flags, or all models
run), one transaction stores the findings so far, the job's priority and ``flagged_at``, the study's flag and its
notifications; the job stays ``processing``. The models that only qualify the flag (the segmenter), the heat maps
and the SEG/SR follow, and a second transaction stores them and queues the results (the page shows them at its next
poll). Reading and computing happen outside any transaction, so a crash at any point leaves the job ``processing``
and the restart runs it again from the start (the flag it already set stays; notifications are queued once per
job). Result files are rebuilt with the UIDs stored on the job, so a rerun writes identical objects.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage_node.config import Config, Pipeline
from triage_node.inference.types import Analyzer, Finding, ModelOutput
from triage_node.notify import queue_for_job
from triage_node.preprocess.filter import keep_slices
from triage_node.preprocess.volume import Volume
from triage_node.results.build import ResultFile, build_results
from triage_node.results.identity import AlgorithmInfo, ResultIdentity
from triage_node.results.masks import masks_path, save_masks
from triage_node.send.outbox import enqueue
from triage_node.series.diffusion import b0_companion, select_dwi
from triage_node.series.domain import NOT_ASSESSED, outside_domain
from triage_node.series.geometry import GeometryError, Slice, build_volume, pixels, plan
from triage_node.series.routing import SeriesAttributes, describe, route, select_images
from triage_node.worklist import states
from triage_node.worklist.db import transaction
from triage_node.worklist.models import FindingRow, Instance, Job, JobState, Priority, Series, Study

log = logging.getLogger(__name__)


class Rejected(Exception):
    """The series cannot be processed as sent; the message is the stored, PHI-free reason."""


@dataclass(frozen=True)
class PipelineContext:
    """What a job runs with. Frozen: a config reload makes a new context, taken up between jobs (``App``)."""

    config: Config
    sessions: sessionmaker[Session]
    spool_dir: Path
    results_dir: Path
    analyzers: Mapping[str, Analyzer]
    observe_inference: Callable[[str, float], None] = lambda model, seconds: None
    observe_stage: Callable[[str, float], None] = lambda stage, seconds: None
    observe_flag: Callable[[float], None] = lambda seconds: None
    # Called after the flag is committed (the daemon wakes its notification sender).
    on_flag: Callable[[], None] = lambda: None
    clock: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    # Called first in every transaction that writes the job: raises (worklist.claims.ClaimLost) when this node no
    # longer holds the job's claim (another node took it over), so nothing of a lost claim is committed.
    fence: Callable[[Session, int], None] = lambda session, job_id: None


@dataclass(frozen=True)
class StoredSeries:
    """A job's series as stored: the spool paths of its current instances (not superseded, not deleted)."""

    job_id: int
    paths: tuple[Path, ...]
    study_uid: str


def _stored_series(ctx: PipelineContext, job_id: int) -> StoredSeries:
    """Look the job's series up in the worklist."""
    with transaction(ctx.sessions) as s:
        ctx.fence(s, job_id)
        job = s.get(Job, job_id)
        assert job is not None
        series = s.get(Series, job.series_id)
        assert series is not None
        rows = s.scalars(
            select(Instance).where(
                Instance.series_id == series.id, Instance.superseded.is_(False), Instance.deleted_at.is_(None)
            )
        ).all()
        return StoredSeries(job_id, tuple(ctx.spool_dir / r.path for r in rows), series.study.study_instance_uid)


def _read(paths: Sequence[Path]) -> list[Dataset]:
    """Headers only; pixel data is decoded later, slice by slice, from the files."""
    out: list[Dataset] = []
    for p in paths:
        try:
            out.append(dcmread(p, stop_before_pixels=True))
        except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
            raise Rejected(f"stored instance {p.name} cannot be read ({type(exc).__name__})") from exc
    return out


def decode_and_filter(
    slices: Sequence[Slice], modality: str, min_brain_pct: float, timings: dict[str, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Decode the slices and apply the blank-slice filter. -> (kept planes float32 (k, y, x), keep mask bool (n,)).

    Every slice is decoded into one buffer (the filter compares each slice with the series' fullest); the kept planes
    are then moved to its front in place and the tail is given back, so the kept volume costs no second copy.
    """
    n = len(slices)
    rows, cols = int(slices[0].dataset.Rows), int(slices[0].dataset.Columns)
    buf = np.empty((n, rows, cols), dtype=np.float32)
    t = time.perf_counter()
    for i, sl in enumerate(slices):
        buf[i] = pixels(sl)
    timings["load"] = time.perf_counter() - t
    t = time.perf_counter()
    keep = keep_slices(buf, modality, min_brain_pct)
    k = 0
    for i in np.flatnonzero(keep).tolist():
        if i != k:
            buf[k] = buf[i]
        k += 1
    buf.resize((k, rows, cols), refcheck=False)
    timings["filter"] = time.perf_counter() - t
    return buf, keep


def with_b0(volume: Volume, images: Sequence[Dataset], kept: Sequence[Slice]) -> Volume:
    """``volume`` (a DWI b=1000 volume built from ``kept``) with the series' b=0 planes at the same positions as its
    ``b0`` companion, so the infarct model can read ADC; unchanged when the series carries none."""
    b0 = b0_companion(images, kept)
    if b0 is None:
        log.debug("diffusion series without b=0 images at every kept position: ADC not available")
        return volume
    return dataclasses.replace(volume, companions={**volume.companions, "b0": b0})


def _priority(outputs: Sequence[ModelOutput], table: Mapping[str, str], shadow: Collection[str] = ()) -> Priority:
    """The highest priority any present finding maps to (unlisted labels: routine; ``none``: no flag); models in
    ``shadow`` set none."""
    best = Priority.NONE
    for out in outputs:
        if out.model in shadow:
            continue
        for f in out.findings:
            if f.present:
                p = Priority(table.get(f.label, Priority.ROUTINE.value))
                if p.rank < best.rank:
                    best = p
    return best


def _algorithm_info(analyzer: Analyzer) -> AlgorithmInfo:
    return AlgorithmInfo(name=analyzer.name, version=analyzer.version, device_uid=analyzer.device_uid)


def run_job(ctx: PipelineContext, job_id: int) -> JobState:
    """Process a claimed (``processing``) job to its next state and return that state."""
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    try:
        return _process(ctx, job_id, timings, t0)
    except Rejected as exc:
        return _finish_without_results(ctx, job_id, JobState.REJECTED, str(exc), timings)
    except GeometryError as exc:
        return _finish_without_results(ctx, job_id, JobState.REJECTED, str(exc), timings)


def _process(ctx: PipelineContext, job_id: int, timings: dict[str, float], t0: float) -> JobState:
    cfg = ctx.config
    stored = _stored_series(ctx, job_id)
    datasets = _read(stored.paths)
    if not datasets:
        raise Rejected("series has no readable instances")
    attrs = SeriesAttributes.from_datasets(datasets)
    rule = route(cfg.series.rules, attrs)
    if rule is None:
        return _finish_without_results(
            ctx, job_id, JobState.SKIPPED, f"no routing rule matched ({describe(attrs)})", timings
        )
    pipeline = rule.pipeline.value
    with transaction(ctx.sessions) as s:
        ctx.fence(s, job_id)
        job = s.get(Job, job_id)
        assert job is not None
        job.pipeline, job.rule = pipeline, rule.name

    # b=0 images are looked for in the whole series: a rule that matches images by b-value >= 800 drops them here.
    diffusion_images = datasets
    datasets = select_images(rule.match, attrs, datasets)  # e.g. drop phase images, ADC maps, localizers
    if rule.pipeline == Pipeline.MR_DWI:
        datasets = select_dwi(datasets)
        if not datasets:
            raise Rejected("the diffusion series holds no diffusion-weighted images (only derived maps)")
    slices = plan(datasets)
    min_pct = cfg.filter.min_brain_pct if attrs.modality.upper() == "CT" else cfg.filter.min_tissue_pct_mr
    planes, keep = decode_and_filter(slices, attrs.modality, min_pct, timings)
    ctx.observe_stage("load", timings["load"])
    ctx.observe_stage("filter", timings["filter"])
    kept, dropped = int(keep.sum()), int((~keep).sum())
    if kept == 0:
        raise Rejected(f"none of the {dropped} slices holds brain (CT) or tissue (MR) inside the head")
    volume = build_volume(slices, planes, keep, planes_are_kept=True)
    del planes
    kept_idx = np.flatnonzero(keep)
    if rule.pipeline == Pipeline.MR_DWI:
        volume = with_b0(volume, diffusion_images, [slices[i] for i in kept_idx])
    sources = [slices[i].dataset for i in kept_idx]
    source_frames = [slices[i].frame for i in kept_idx]

    names = cfg.models.pipelines.get(rule.pipeline, ())
    analyzers = [ctx.analyzers[n] for n in names if n in ctx.analyzers]
    shadow = _shadow(ctx)
    outputs: list[ModelOutput] = []
    unassessed: list[ModelOutput] = []  # findings only: no masks, no priority, nothing sent
    for analyzer in list(analyzers):
        reason = outside_domain(getattr(getattr(analyzer, "card", None), "domain", None) or {}, sources, volume)
        if reason is not None:
            log.info("job %d: %s not assessed: %s", job_id, analyzer.name, reason)
            unassessed.append(not_assessed(analyzer, reason))
            analyzers.remove(analyzer)
    flagged = False
    for analyzer in analyzers:
        gate = cfg.models.gates.get(analyzer.name)
        gating = [o for o in outputs if o.model not in shadow or analyzer.name in shadow]  # shadow gates no live model
        if gate is not None and not any(f.label == gate and f.present for o in gating for f in o.findings):
            log.debug("job %d: %s not run, %s is absent", job_id, analyzer.name, gate)
            continue
        t = time.perf_counter()
        outputs.append(analyzer.analyze(volume))
        timings[f"model:{analyzer.name}"] = time.perf_counter() - t
        ctx.observe_inference(analyzer.name, timings[f"model:{analyzer.name}"])
        if not flagged and _priority(outputs, cfg.models.priority, shadow) != Priority.NONE:
            # Decided: flag now; the models after this one qualify or outline the finding.
            _flag(ctx, job_id, [*outputs, *unassessed], volume.sop_instance_uids, kept, dropped, timings, t0)
            flagged = True
    priority = _priority(outputs, cfg.models.priority, shadow)
    if not flagged and (analyzers or unassessed):
        _flag(ctx, job_id, [*outputs, *unassessed], volume.sop_instance_uids, kept, dropped, timings, t0)

    t = time.perf_counter()
    with transaction(ctx.sessions) as s:
        ctx.fence(s, job_id)
        job = s.get(Job, job_id)
        assert job is not None
        identity = ResultIdentity.from_job(job)
    out_dir = (ctx.results_dir / f"job-{job_id:08d}").resolve()
    save_masks(masks_path(out_dir), volume.sop_instance_uids, outputs, shadow)
    files: list[ResultFile] = []
    live = [a for a in analyzers if a.name not in shadow]  # a shadow model's findings are never sent
    if live:
        files = build_results(
            sources,
            volume,
            [o for o in outputs if o.model not in shadow],
            {a.name: _algorithm_info(a) for a in live},
            identity,
            priority.value,
            pipeline,
            out_dir,
            source_frames=source_frames,
            visible={o for d in cfg.destinations for o in d.outputs},  # sc, gsps, pdf: when a destination asks
        )
    timings["results"] = time.perf_counter() - t
    ctx.observe_stage("results", timings["results"])
    timings["total"] = time.perf_counter() - t0
    return _store_results(
        ctx, job_id, [*outputs, *unassessed], volume.sop_instance_uids, files, priority, kept, dropped, out_dir, timings
    )


def _shadow(ctx: PipelineContext) -> frozenset[str]:
    """The models in shadow mode, by pipeline entry and by the analyzer's own name."""
    names = ctx.config.models.shadow
    return frozenset(names) | {ctx.analyzers[n].name for n in names if n in ctx.analyzers}


def not_assessed(analyzer: Analyzer, reason: str) -> ModelOutput:
    """The output recorded for a model that did not run because the series lies outside its training domain."""
    finding = Finding(
        label=NOT_ASSESSED,
        present=False,
        probability=0.0,
        model=analyzer.name,
        model_version=analyzer.version,
        note=reason[:256],
    )
    return ModelOutput(analyzer.name, analyzer.version, (finding,))


def _store_findings(
    s: Session, job: Job, outputs: Sequence[ModelOutput], uids: Sequence[str], shadow: Collection[str] = ()
) -> None:
    for old in list(job.findings):  # a rerun after a crash, or the results after the flag, replace, never duplicate
        s.delete(old)
    s.flush()
    for out in outputs:
        for f in out.findings:
            s.add(
                FindingRow(
                    job_id=job.id,
                    label=f.label,
                    present=f.present,
                    probability=float(f.probability),
                    volume_ml=f.volume_ml,
                    location=f.location,
                    laterality=f.laterality,
                    count=f.count,
                    model=f.model,
                    model_version=f.model_version,
                    key_slices=list(f.key_slices),
                    key_sop_uids=[uids[i] for i in f.key_slices if 0 <= i < len(uids)],
                    positions=[list(p) for p in f.positions],
                    shadow=out.model in shadow,
                    note=f.note,
                )
            )


def _flag(
    ctx: PipelineContext,
    job_id: int,
    outputs: Sequence[ModelOutput],
    uids: Sequence[str],
    kept: int,
    dropped: int,
    timings: dict[str, float],
    t0: float,
) -> None:
    """Commit the decision before the results: findings so far, priority, flag, notifications (job stays
    ``processing``)."""
    priority = _priority(outputs, ctx.config.models.priority, _shadow(ctx))
    timings["flag"] = time.perf_counter() - t0
    now = ctx.clock()
    with transaction(ctx.sessions) as s:
        ctx.fence(s, job_id)
        job = s.get(Job, job_id)
        assert job is not None
        study = job.series.study
        _store_findings(s, job, outputs, uids, _shadow(ctx))
        job.slices_kept, job.slices_dropped = kept, dropped
        job.priority = priority.value
        job.timings = dict(timings)
        first = job.flagged_at is None  # a rerun keeps the flag time its first run committed
        if first:
            job.flagged_at = now
        _update_study(study, priority, now)
        if priority != Priority.NONE:
            queue_for_job(s, job, study, ctx.config.notifications)
        last = job.last_instance_at
    if first and last is not None:
        ctx.observe_flag((now - last).total_seconds())
    log.info("job %d flagged: priority %s after %.2f s; results follow", job_id, priority.value, timings["flag"])
    ctx.on_flag()


def _store_results(
    ctx: PipelineContext,
    job_id: int,
    outputs: Sequence[ModelOutput],
    uids: Sequence[str],
    files: Sequence[ResultFile],
    priority: Priority,
    kept: int,
    dropped: int,
    out_dir: Path,
    timings: dict[str, float],
) -> JobState:
    """Commit the results: the findings, the result files queued for each destination, the job's next state and
    the notifications of a flag."""
    now = ctx.clock()
    with transaction(ctx.sessions) as s:
        ctx.fence(s, job_id)
        job = s.get(Job, job_id)
        assert job is not None
        study = job.series.study
        _store_findings(s, job, outputs, uids, _shadow(ctx))
        job.slices_kept, job.slices_dropped = kept, dropped
        job.priority = priority.value
        job.results_dir = str(out_dir)
        job.timings = timings
        if job.flagged_at is None:  # no model ran: the flag (none) is decided now
            job.flagged_at = now
            if job.last_instance_at is not None:
                ctx.observe_flag((now - job.last_instance_at).total_seconds())
        _update_study(study, priority, now)
        enqueue(s, job, files, ctx.config.destinations, now)
        s.flush()
        if job.outbox:
            states.transition(s, job, JobState.RESULTS_READY, reason=None, now=now)
        else:
            reason = "no destination configured" if files else None
            states.transition(s, job, JobState.DELIVERED, reason=reason, now=now)
        if Priority(job.priority) != Priority.NONE:
            queue_for_job(s, job, study, ctx.config.notifications)
        state = JobState(job.state)
    log.info(
        "job %d done: pipeline %s, %d kept / %d dropped slices, priority %s, %d result object(s), %.2f s",
        job_id,
        job.pipeline,
        kept,
        dropped,
        priority.value,
        len(files),
        timings.get("total", 0.0),
    )
    return state


def _update_study(study: Study, priority: Priority, now: dt.datetime) -> None:
    """The study shows the highest priority of its jobs; a new flag clears an earlier acknowledgement."""
    current = Priority(study.priority)
    if priority.rank < current.rank:
        study.priority = priority.value
        study.flagged_at = now
        study.acknowledged_at = None
        study.acknowledged_by = None
    elif study.flagged_at is None:
        study.flagged_at = now


def _finish_without_results(
    ctx: PipelineContext, job_id: int, state: JobState, reason: str, timings: dict[str, float]
) -> JobState:
    now = ctx.clock()
    with transaction(ctx.sessions) as s:
        ctx.fence(s, job_id)
        job = s.get(Job, job_id)
        assert job is not None
        job.timings = timings
        states.transition(s, job, state, reason=reason, now=now)
        series_uid = job.series.series_instance_uid
    level = logging.WARNING if state == JobState.REJECTED else logging.INFO
    log.log(level, "job %d (series %s) %s: %s", job_id, series_uid, state.value, reason)
    return state


def fail_job(ctx: PipelineContext, job_id: int, error: BaseException) -> JobState:
    """Record an unexpected error; the job is queued again after a delay until its attempts are used up."""
    now = ctx.clock()
    reason = f"{type(error).__name__}: {error}"[:2000]
    with transaction(ctx.sessions) as s:
        ctx.fence(s, job_id)
        job = s.get(Job, job_id)
        assert job is not None
        states.transition(s, job, JobState.FAILED, reason=reason, now=now)
        if job.attempts < ctx.config.series.max_job_attempts:
            states.transition(s, job, JobState.COMPLETE, now=now)
            job.next_attempt_at = now + dt.timedelta(seconds=min(300.0, 5.0 * 2 ** (job.attempts - 1)))
        state = JobState(job.state)
    log.error("job %d failed (attempt %d): %s; now %s", job_id, job.attempts if job else 0, reason, state.value)
    return state
