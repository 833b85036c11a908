"""A series outside a model's training domain is "not assessed" with the reason: no confident flag, no result sent."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import MappingProxyType, SimpleNamespace

import pytest
from peers import storescu
from pydicom import dcmread
from sqlalchemy import select

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head
from triage_node.config import Config
from triage_node.inference.types import Finding, ModelOutput
from triage_node.pipeline import PipelineContext, run_job
from triage_node.preprocess.volume import Volume
from triage_node.worklist import states
from triage_node.worklist.db import transaction
from triage_node.worklist.models import FindingRow, Job, OutboxItem
from triage_node.worklist.queries import format_finding, format_table, worklist


class AlwaysBleeds:
    """Would flag every series it sees: the domain check must stop it before it runs."""

    name, version, device_uid = "ich", "t", "2.25.42"

    def __init__(self, domain: dict[str, object]) -> None:
        self.card = SimpleNamespace(domain=MappingProxyType(domain))
        self.ran = 0

    def analyze(self, volume: Volume) -> ModelOutput:
        self.ran += 1
        return ModelOutput(self.name, self.version, (Finding("any_hemorrhage", True, 0.99, self.name, self.version),))


def _run(scp_env, tmp_path: Path, thickness: float, domain: dict[str, object]) -> tuple[int, AlwaysBleeds]:  # type: ignore[no-untyped-def]
    hu, spacing = phantom_head(6, 64)
    files = write_series(tmp_path / "ct", hu, spacing, seed=9, unsigned=True)
    for f in files:
        ds = dcmread(f)
        ds.SliceThickness = thickness
        ds.save_as(f)
    storescu(scp_env.port, files)
    with transaction(scp_env.sessions) as s:
        job = states.claim_next_job(s, dt.datetime.now(dt.UTC))
        assert job is not None
        job_id = job.id
    model = AlwaysBleeds(domain)
    ctx = PipelineContext(
        config=Config(destinations=[{"name": "pacs", "ae_title": "PACS", "host": "127.0.0.1", "port": 104}]),
        sessions=scp_env.sessions, spool_dir=scp_env.spool.root, results_dir=tmp_path / "results",
        analyzers={"ich": model},
    )
    run_job(ctx, job_id)
    return job_id, model


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scp_backend", ["sqlite", "postgresql"])
def test_thick_slices_are_not_assessed_with_the_reason(scp_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job_id, model = _run(scp_env, tmp_path, 7.0, {"max_slice_thickness_mm": 5.0})
    assert model.ran == 0
    with scp_env.sessions() as s:
        job = s.get(Job, job_id)
        assert job.priority in (None, "none", "routine")
        rows = s.scalars(select(FindingRow)).all()
        assert [(r.label, r.present, r.model) for r in rows] == [("not_assessed", False, "ich")]
        assert rows[0].note == "slice thickness 7.0 mm is above the 5 mm the model was trained on"
        assert s.scalars(select(OutboxItem)).all() == []  # nothing to send: the model said nothing
        page = worklist(s)
        finding = page[0]["findings"][0]
        assert finding["note"] == rows[0].note
        assert "not_assessed (ich: slice thickness 7.0 mm" in format_finding(finding)
        assert "not_assessed (ich: slice thickness" in format_table(page)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scp_backend", ["sqlite", "postgresql"])
def test_a_series_inside_the_domain_is_assessed(scp_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    job_id, model = _run(scp_env, tmp_path, 5.0, {"max_slice_thickness_mm": 5.0})
    assert model.ran == 1
    with scp_env.sessions() as s:
        assert s.get(Job, job_id).priority == "critical"
        assert [r.label for r in s.scalars(select(FindingRow))] == ["any_hemorrhage"]
