"""Fixtures for the send tests: a migrated SQLite database, a job row with built results, in-process test SCPs."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import phantom
import pytest
from pynetdicom.transport import ThreadedAssociationServer
from scripted_scp import ScriptedSCP, start_scripted_scp
from sqlalchemy.orm import Session, sessionmaker

from triage_node.results.build import ResultFile, build_results
from triage_node.worklist.db import make_engine, migrate, session_factory, transaction
from triage_node.worklist.models import Job, JobState, Series, Study


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> phantom.Case:
    return phantom.write_case(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def files(case: phantom.Case, tmp_path_factory: pytest.TempPathFactory) -> list[ResultFile]:
    """SEG, Grad-CAM map and SR of the positive phantom (built once per module)."""
    return build_results(
        case.sources, case.volume, phantom.positive_outputs(case.volume), phantom.ALGORITHMS, phantom.identity(),
        "critical", "ct_head", tmp_path_factory.mktemp("results"),
    )


@pytest.fixture
def new_job(sessions: sessionmaker[Session], case: phantom.Case) -> Callable[..., int]:
    """Makes study, series and job rows for the phantom series; the job carries the phantom's result identity."""
    return lambda state=JobState.PROCESSING: _make_job(sessions, case, state)


def _make_job(sessions: sessionmaker[Session], case: phantom.Case, state: JobState) -> int:
    ident = phantom.identity()
    src = case.sources[0]
    with transaction(sessions) as s:
        study = Study(study_instance_uid=str(src.StudyInstanceUID), priority="none")
        series = Series(study=study, series_instance_uid=str(src.SeriesInstanceUID), modality="CT")
        job = Job(
            series=series, version=1, state=state.value, pipeline="ct_head",
            seg_series_uid=ident.seg_series_uid, seg_sop_uid=ident.seg_sop_uid,
            sr_series_uid=ident.sr_series_uid, sr_sop_uid=ident.sr_sop_uid,
            map_series_uid=ident.map_series_uid, map_sop_uid=ident.map_sop_uid,
            result_series_number=ident.series_number,
        )
        s.add_all([study, series, job])
        s.flush()
        return job.id


@pytest.fixture
def scripted_scp() -> Iterator[Callable[..., ScriptedSCP]]:
    """Starts in-process SCPs (``scripted_scp(status=0xA900)``); all are shut down after the test."""
    servers: list[ThreadedAssociationServer] = []

    def start(status: int = 0x0000, contexts: tuple[str, ...] | None = None) -> ScriptedSCP:
        scp, server = start_scripted_scp(status, contexts)
        servers.append(server)
        return scp

    yield start
    for server in servers:
        server.shutdown()
