"""receive/precompiled_sql.py: the receive path's statements on SQLite's cursor write exactly what SQLAlchemy would."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, text

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head
from triage_node.receive import precompiled_sql
from triage_node.receive.header import parse_header
from triage_node.receive.records import RowIds, record_instance
from triage_node.receive.spool import sha256
from triage_node.worklist.db import make_engine, migrate, session_factory, transaction
from triage_node.worklist.models import Instance, Series

CT = "1.2.840.10008.5.1.4.1.1.2"
NOW = dt.datetime(2026, 1, 1, 8, 0, 0, 123456, tzinfo=dt.UTC)


def _engine(path: Path) -> Engine:
    # SQLite only: the precompiled statements run on SQLite's own cursor by design (any other database bypasses it)
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    return engine


def _receive_all(engine: Engine, data: list[bytes]) -> dict[str, list[tuple[object, ...]]]:
    sessions = session_factory(engine)
    cache = RowIds()
    headers = [parse_header(d, CT, None) for d in data]
    changed = data[0][:-2] + b"\x01\x00"  # same SOP Instance UID, different bytes: a new version
    steps = [(h, d) for h, d in zip(headers, data, strict=True)] + [(headers[0], data[0]), (headers[0], changed)]
    for i, (header, blob) in enumerate(steps):
        with transaction(sessions) as s:
            record_instance(s, header, f"p{i}", len(blob), sha256(blob), "AE", NOW + dt.timedelta(seconds=i), cache)
    with engine.connect() as conn:
        return {
            table: [tuple(r) for r in conn.execute(text(f"select * from {table} order by id"))]
            for table in ("studies", "series", "instances")
        }


def test_rows_are_identical_to_the_ones_sqlalchemy_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hu, spacing = phantom_head(3, 32)
    data = [p.read_bytes() for p in write_series(tmp_path / "s", hu, spacing, seed=4)]
    precompiled = _receive_all(_engine(tmp_path / "fast.db"), data)

    original_init = precompiled_sql.PrecompiledConnection.__init__

    def core_only(self: precompiled_sql.PrecompiledConnection, conn: object) -> None:
        original_init(self, conn)  # type: ignore[arg-type]
        self._raw = None

    monkeypatch.setattr(precompiled_sql.PrecompiledConnection, "__init__", core_only)
    core = _receive_all(_engine(tmp_path / "core.db"), data)
    assert precompiled == core
    assert len(precompiled["instances"]) == 4 and precompiled["series"][0][9] == 3  # received_instances


def test_orm_reads_back_what_the_precompiled_statements_wrote(tmp_path: Path) -> None:
    hu, spacing = phantom_head(2, 32)
    data = [p.read_bytes() for p in write_series(tmp_path / "s", hu, spacing, seed=5)]
    engine = _engine(tmp_path / "db.sqlite")
    _receive_all(engine, data)
    with session_factory(engine)() as s:
        first = s.get(Instance, 1)
        assert first is not None
        assert (first.received_at, first.superseded) == (NOW, True)
        series = s.get(Series, 1)
        assert series is not None and series.last_received_at.tzinfo is not None


def test_a_statement_that_needs_a_python_side_default_goes_through_sqlalchemy(tmp_path: Path) -> None:
    engine = _engine(tmp_path / "db.sqlite")
    with engine.begin() as conn:
        fc = precompiled_sql.PrecompiledConnection(conn)
        study = fc.execute(insert(Series.__table__.metadata.tables["studies"]), {"study_instance_uid": "1.2"})
        assert not isinstance(study, precompiled_sql._Result)  # first_received_at etc. have Python defaults
        (row,) = conn.execute(text("select first_received_at, priority from studies")).all()
        assert row[0] is not None and row[1] == "none"


def test_result_rejects_two_rows_where_one_is_expected() -> None:
    result = precompiled_sql._Result([(1,), (2,)], 2, None)
    with pytest.raises(ValueError, match="at most one row, got 2"):
        result.one_or_none()
    assert dataclasses.is_dataclass(precompiled_sql._Compiled)
