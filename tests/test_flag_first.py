"""Flag first: the worklist flag, its findings and its notifications are committed as soon as the classifier has
decided; the segmenter, the maps and the SEG/SR follow in a second commit and never move the flag."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path

import numpy as np
import pytest
from peers import storescu
from sqlalchemy import select

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head
from triage_node.config import Config
from triage_node.inference.types import Finding, ModelOutput
from triage_node.pipeline import PipelineContext, run_job
from triage_node.preprocess.volume import Volume
from triage_node.worklist import states
from triage_node.worklist.db import transaction
from triage_node.worklist.models import FindingRow, Job, JobState, Notification, OutboxItem, Study
from triage_node.worklist.queries import worklist

DEVICE_UID = "2.25.1234567890"


class Classifier:
    name, version, device_uid = "ich", "t", DEVICE_UID

    def analyze(self, volume: Volume) -> ModelOutput:
        return ModelOutput(self.name, self.version, (Finding("any_hemorrhage", True, 0.97, self.name, self.version,
                                                             key_slices=(1,)),))


class SlowSegmenter:
    """Looks at the database while it 'runs': the flag must already be there."""

    name, version, device_uid = "ct_segmenter", "t", DEVICE_UID

    def __init__(self, sessions, job_id_box: list[int]) -> None:  # type: ignore[no-untyped-def]
        self.sessions, self.job_id_box = sessions, job_id_box
        self.seen: dict[str, object] = {}

    def analyze(self, volume: Volume) -> ModelOutput:
        with self.sessions() as s:
            job = s.get(Job, self.job_id_box[0])
            study = s.scalars(select(Study)).one()
            self.seen = {
                "job_state": job.state, "job_priority": job.priority, "job_flagged_at": job.flagged_at,
                "study_priority": study.priority, "study_flagged_at": study.flagged_at,
                "findings": sorted(f.label for f in s.scalars(select(FindingRow))),
                "notifications": len(s.scalars(select(Notification)).all()),
                "outbox": len(s.scalars(select(OutboxItem)).all()),
                "page": [(r["priority"], r["status"]) for r in worklist(s)],  # what the page and the API show
            }
        mask = np.zeros(volume.pixels.shape, dtype=bool)
        mask[1, 10:20, 10:20] = True
        return ModelOutput(self.name, self.version, (Finding("hemorrhage", True, 0.9, self.name, self.version,
                                                             volume_ml=1.0, key_slices=(1,)),),
                           masks={"hemorrhage": mask})


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scp_backend", ["sqlite", "postgresql"])
def test_the_flag_is_committed_before_the_segmenter_and_the_results(scp_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    hu, spacing = phantom_head(8, 64)
    storescu(scp_env.port, write_series(tmp_path / "ct", hu, spacing, seed=5, unsigned=True))
    t = [dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)]

    def clock() -> dt.datetime:
        t[0] += dt.timedelta(seconds=1)
        return t[0]

    with transaction(scp_env.sessions) as s:
        job = states.claim_next_job(s, dt.datetime.now(dt.UTC))
        assert job is not None
        box = [job.id]
    cfg = Config(
        destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}],
        notifications={"webhooks": [{"url": "http://127.0.0.1:9/hook"}]},
    )
    segmenter = SlowSegmenter(scp_env.sessions, box)
    flags: list[float] = []
    woken = threading.Event()
    ctx = PipelineContext(
        config=cfg, sessions=scp_env.sessions, spool_dir=scp_env.spool.root, results_dir=tmp_path / "results",
        analyzers={"ich": Classifier(), "ct_segmenter": segmenter}, observe_flag=flags.append,
        on_flag=woken.set, clock=clock,
    )
    assert run_job(ctx, box[0]) == JobState.RESULTS_READY

    seen = segmenter.seen  # while the segmenter ran:
    assert seen["job_state"] == "processing"
    assert seen["job_priority"] == seen["study_priority"] == "critical"
    assert seen["job_flagged_at"] is not None and seen["study_flagged_at"] is not None
    assert seen["findings"] == ["any_hemorrhage"]
    assert seen["notifications"] == 1  # queued with the flag, sent by the scheduler while the segmenter runs
    assert seen["outbox"] == 0  # results come after
    assert seen["page"] == [("critical", "processing")]
    assert woken.is_set() and len(flags) == 1

    with scp_env.sessions() as s:
        job = s.get(Job, box[0])
        assert job.flagged_at == seen["job_flagged_at"]  # the results did not move the flag
        assert job.timings["flag"] < job.timings["total"]
        assert sorted(f.label for f in job.findings) == ["any_hemorrhage", "hemorrhage"]
        assert len(s.scalars(select(Notification)).all()) == 1  # never twice
        assert {o.kind for o in s.scalars(select(OutboxItem))} >= {"seg", "sr"}
        assert s.scalars(select(Study)).one().priority == "critical"

    with scp_env.sessions() as s:
        assert [(r["priority"], r["status"]) for r in worklist(s)][0][0] == "critical"
