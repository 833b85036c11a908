"""The worklist tests' database: migrated, one study with one series and three queued job versions (ids 1-3)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from triage_node.worklist.db import make_engine, migrate, session_factory, transaction
from triage_node.worklist.models import Job, Series, Study


@pytest.fixture
def env(db_url: str) -> Iterator[tuple[Engine, sessionmaker[Session]]]:
    engine = make_engine(db_url)
    migrate(engine)
    sessions = session_factory(engine)
    with transaction(sessions) as s:
        study = Study(study_instance_uid="1.2.3")
        s.add(study)
        s.flush()
        series = Series(study_id=study.id, series_instance_uid="1.2.3.4")
        s.add(series)
        s.flush()
        for v in (1, 2, 3):
            s.add(Job(series_id=series.id, version=v, seg_series_uid="1", seg_sop_uid="2", sr_series_uid="3",
                      sr_sop_uid="4", map_series_uid="5", map_sop_uid="6"))
    yield engine, sessions
    engine.dispose()
