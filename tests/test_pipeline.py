"""pipeline.run_job on a stored series without a network: the gates, the priority, the masks file, the stored
findings, the reasons a job ends without results, the retry of a failed job; and the frozen context a config reload
replaces between jobs."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml
from pydicom import dcmread
from sqlalchemy.orm import Session, sessionmaker

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head
from triage_node.config import Config, load_config
from triage_node.daemon import App
from triage_node.inference.types import Finding, ModelOutput
from triage_node.pipeline import PipelineContext, fail_job, run_job
from triage_node.preprocess.volume import Volume
from triage_node.results.masks import masks_path, open_masks
from triage_node.series.completion import new_job
from triage_node.worklist import states
from triage_node.worklist.db import make_engine, migrate, session_factory, transaction
from triage_node.worklist.models import Instance, Job, JobState, Series, Study

NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


class StandIn:
    """Reports ``label`` present or absent with a one-slice mask, and counts its runs."""

    def __init__(self, name: str, label: str, present: bool) -> None:
        self.name, self.version, self.device_uid = name, "1.0.0", "2.25.4242"
        self.label, self.present, self.runs = label, present, 0

    def analyze(self, volume: Volume) -> ModelOutput:
        self.runs += 1
        mask = np.zeros(volume.pixels.shape, dtype=bool)
        if self.present:
            mask[1, 20:30, 20:30] = True
        finding = Finding(self.label, self.present, 0.9 if self.present else 0.1, self.name, self.version,
                          key_slices=(1,) if self.present else ())
        return ModelOutput(self.name, self.version, (finding,), masks={self.label: mask})


@dataclass
class Stored:
    sessions: sessionmaker[Session]
    spool: Path
    results: Path
    job_id: int
    sop_uids: list[str]


@pytest.fixture
def stored(tmp_path: Path, db_url: str) -> Iterator[Stored]:
    """A complete 8-slice head CT series in a spool and a worklist on each backend, its job claimed
    (``processing``)."""
    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    spool = tmp_path / "spool"
    hu, spacing = phantom_head(8, 64)
    files = write_series(spool / "series", hu, spacing, seed=5, unsigned=True)
    headers = [dcmread(f, stop_before_pixels=True) for f in files]
    with transaction(sessions) as s:
        study = Study(study_instance_uid=str(headers[0].StudyInstanceUID), first_received_at=NOW,
                      last_received_at=NOW)
        series = Series(series_instance_uid=str(headers[0].SeriesInstanceUID), modality="CT", state="complete",
                        received_instances=len(files), last_received_at=NOW)
        study.series.append(series)
        for f, ds in zip(files, headers, strict=True):
            series.instances.append(Instance(
                sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID), instance_number=int(ds.InstanceNumber),
                path=str(f.relative_to(spool)), size=f.stat().st_size, sha256="0" * 64,
            ))
        s.add(study)
        s.flush()
        s.add(new_job(series, NOW))
    with transaction(sessions) as s:
        job = states.claim_next_job(s, NOW)
        assert job is not None
        job_id = job.id
    yield Stored(sessions, spool, tmp_path / "results", job_id, [str(ds.SOPInstanceUID) for ds in headers])
    engine.dispose()


def context(stored: Stored, analyzers: dict[str, StandIn], **models: object) -> PipelineContext:
    pipelines = {"ct_head": list(analyzers), "mr_swi": [], "mr_dwi": []}
    config = Config(models={"pipelines": pipelines, **models})
    return PipelineContext(config=config, sessions=stored.sessions, spool_dir=stored.spool,
                           results_dir=stored.results, analyzers=analyzers, clock=lambda: NOW)


def job_row(stored: Stored) -> Job:
    with stored.sessions() as s:
        job = s.get(Job, stored.job_id)
        assert job is not None
        assert job.findings is not None  # loaded before the session closes
        return job


def test_a_gate_keeps_the_segmenter_from_running_when_its_finding_is_absent(stored: Stored) -> None:
    ich, seg = StandIn("ich", "any_hemorrhage", False), StandIn("seg", "hemorrhage_extent", True)
    ctx = context(stored, {"ich": ich, "seg": seg}, gates={"seg": "any_hemorrhage"})
    assert run_job(ctx, stored.job_id) == JobState.DELIVERED  # no destination configured
    assert (ich.runs, seg.runs) == (1, 0)
    job = job_row(stored)
    assert (job.priority, job.pipeline, job.reason) == ("none", "ct_head", "no destination configured")
    assert [f.label for f in job.findings] == ["any_hemorrhage"]


def test_a_gate_lets_the_segmenter_run_when_its_finding_is_present(stored: Stored) -> None:
    ich, seg = StandIn("ich", "any_hemorrhage", True), StandIn("seg", "hemorrhage_extent", True)
    ctx = context(stored, {"ich": ich, "seg": seg}, gates={"seg": "any_hemorrhage"})
    run_job(ctx, stored.job_id)
    assert (ich.runs, seg.runs) == (1, 1)
    job = job_row(stored)
    assert job.priority == "critical" and job.flagged_at is not None
    assert sorted(f.label for f in job.findings) == ["any_hemorrhage", "hemorrhage_extent"]


def test_the_masks_file_and_the_key_images_use_the_analysed_slices(stored: Stored) -> None:
    ctx = context(stored, {"seg": StandIn("seg", "hemorrhage_extent", True)}, gates={})
    run_job(ctx, stored.job_id)
    job = job_row(stored)
    assert job.results_dir is not None
    with open_masks(masks_path(job.results_dir)) as masks:
        analysed = masks.uids
        [(layer, mask)] = list(masks.layers("mask"))
    assert analysed and set(analysed) <= set(stored.sop_uids)
    assert layer.label == "hemorrhage_extent" and mask.shape[0] == len(analysed) and mask[1].any()
    [finding] = job.findings
    assert finding.key_sop_uids == [analysed[1]]  # slice 1 of the analysed volume, not of the series as sent
    assert job.slices_kept == len(analysed) and job.slices_kept + job.slices_dropped == len(stored.sop_uids)


def test_a_shadow_model_sets_no_priority(stored: Stored) -> None:
    ctx = context(stored, {"ich": StandIn("ich", "any_hemorrhage", True)}, gates={}, shadow=["ich"])
    run_job(ctx, stored.job_id)
    job = job_row(stored)
    assert job.priority == "none"
    assert [(f.label, f.shadow) for f in job.findings] == [("any_hemorrhage", True)]


def test_an_unreadable_instance_rejects_the_job_with_its_reason(stored: Stored) -> None:
    first = sorted((stored.spool / "series").iterdir())[0]
    first.write_bytes(b"not DICOM")
    run_job(context(stored, {}), stored.job_id)
    job = job_row(stored)
    assert job.state == JobState.REJECTED.value
    assert job.reason == f"stored instance {first.name} cannot be read (InvalidDicomError)"


def test_a_failed_job_is_queued_again_after_a_delay(stored: Stored) -> None:
    ctx = context(stored, {})
    assert fail_job(ctx, stored.job_id, RuntimeError("boom")) == JobState.COMPLETE
    job = job_row(stored)
    assert job.reason == "RuntimeError: boom"
    assert job.next_attempt_at is not None and job.next_attempt_at > NOW


def test_the_context_is_frozen(stored: Stored) -> None:
    ctx = context(stored, {})
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.config = Config()  # type: ignore[misc]


def test_a_reload_reaches_the_worker_between_jobs_only(tmp_path: Path) -> None:
    # SQLite only: the subject is the config reload; no query here differs by backend
    path = tmp_path / "config.yaml"
    settings = {
        "storage": {"spool_dir": str(tmp_path / "spool"), "database_url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
        "models": {"pipelines": {"ct_head": [], "mr_swi": [], "mr_dwi": []}},
        "filter": {"min_brain_pct": 5.0},
    }
    path.write_text(yaml.safe_dump(settings))
    app = App(load_config(path), config_path=path, roles=("work",))
    app._start_work()
    running = app._next_pipeline()  # the job in progress holds this context
    settings["filter"] = {"min_brain_pct": 9.0}
    path.write_text(yaml.safe_dump(settings))
    app.reload()
    assert running.config.filter.min_brain_pct == 5.0  # the running job's config did not change under it
    assert app._next_pipeline().config.filter.min_brain_pct == 9.0  # the next job runs with the new one
    app.engine.dispose()


def test_a_dwi_volume_carries_the_series_b0_images_at_its_kept_positions() -> None:
    """``with_b0``: the b=0 planes at the b=1000 slices the filter kept, in the volume's order (the infarct model's ADC
    rule reads them); a series without b=0 images gives the volume unchanged."""
    from phantom import mr_image

    from triage_node.pipeline import with_b0
    from triage_node.series.diffusion import select_dwi
    from triage_node.series.geometry import build_volume, pixels, plan

    series = [mr_image(z, b, 10.0 * (z + 1) + b / 100.0) for z in range(3) for b in (0.0, 1000.0)]
    slices = plan(select_dwi(series))
    keep = np.array([False, True, True])
    kept = [slices[i] for i in np.flatnonzero(keep)]
    volume = build_volume(slices, np.stack([pixels(s) for s in kept]), keep, planes_are_kept=True)
    with_partner = with_b0(volume, series, kept)
    assert [float(p[0, 0]) for p in with_partner.companions["b0"]] == [20.0, 30.0]
    assert with_partner.pixels is volume.pixels
    alone = [ds for ds in series if float(ds[0x0018, 0x9087].value) > 0]
    assert with_b0(volume, alone, kept) is volume
