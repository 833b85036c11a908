"""The worklist query: order, filters, the JSON contract shape, the detail view and the terminal table."""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from triage_node.worklist.db import make_engine, migrate, session_factory, transaction
from triage_node.worklist.models import AuditEntry, FindingRow, Job, OutboxItem, Series, Study
from triage_node.worklist.queries import format_table, study_detail, study_status, worklist

T0 = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)
_ids = itertools.count(1)

CONTRACT_STUDY = {"study_instance_uid", "accession_number", "priority", "flagged_at", "status", "findings", "series"}
CONTRACT_FINDING = {"label", "present", "probability", "volume_ml", "location", "model", "model_version"}
CONTRACT_SERIES = {
    "series_instance_uid",
    "pipeline",
    "state",
    "reason",
    "instances",
    "slices_kept",
    "slices_dropped",
    "delivery",
}


@pytest.fixture
def sessions(db_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(db_url)
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def add_study(
    session: Session,
    *,
    priority: str = "none",
    arrived: dt.datetime = T0,
    modality: str = "CT",
    job_state: str | None = "delivered",
    series_state: str = "complete",
    findings: tuple[tuple[str, bool, float], ...] = (),
    outbox: tuple[tuple[str, str, str], ...] = (),
    reason: str | None = None,
    acknowledged_by: str | None = None,
) -> Study:
    n = next(_ids)
    study = Study(
        study_instance_uid=f"1.2.826.0.1.3680043.10.1.{n}",
        patient_name=f"DOE^JANE{n}",
        patient_id=f"PID{n}",
        accession_number=f"ACC{n}",
        study_description="CT HEAD",
        first_received_at=arrived,
        last_received_at=arrived,
        priority=priority,
        flagged_at=arrived + dt.timedelta(seconds=90) if priority != "none" else None,
        acknowledged_by=acknowledged_by,
        acknowledged_at=arrived + dt.timedelta(hours=1) if acknowledged_by else None,
    )
    series = Series(
        series_instance_uid=f"{study.study_instance_uid}.1",
        modality=modality,
        series_number=2,
        received_instances=32,
        first_received_at=arrived,
        last_received_at=arrived + dt.timedelta(seconds=20),
        state=series_state,
    )
    study.series.append(series)
    session.add(study)
    if job_state is not None:
        job = Job(
            version=1,
            state=job_state,
            pipeline="ct_head" if modality == "CT" else "mr_swi",
            reason=reason,
            instances=32,
            slices_kept=28,
            slices_dropped=4,
            priority=priority,
            last_instance_at=arrived + dt.timedelta(seconds=20),
            flagged_at=study.flagged_at,
            seg_series_uid="1.2.3.1",
            seg_sop_uid="1.2.3.2",
            sr_series_uid="1.2.3.3",
            sr_sop_uid="1.2.3.4",
            map_series_uid="1.2.3.5",
            map_sop_uid="1.2.3.6",
        )
        series.jobs.append(job)
        for label, present, p in findings:
            job.findings.append(
                FindingRow(
                    label=label,
                    present=present,
                    probability=p,
                    volume_ml=12.34 if present else None,
                    location="right thalamus" if present else None,
                    model="ich",
                    model_version="1.0",
                    key_sop_uids=[f"{series.series_instance_uid}.7"],
                )
            )
        for dest, kind, state in outbox:
            job.outbox.append(
                OutboxItem(
                    destination=dest,
                    kind=kind,
                    sop_class_uid="1.2",
                    sop_instance_uid=f"9.{n}.{kind}.{dest}",
                    path="x",
                    state=state,
                )
            )
    session.flush()
    return study


def test_worklist_sorts_by_priority_then_arrival(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as s:
        late_critical = add_study(s, priority="critical", arrived=T0 + dt.timedelta(minutes=30))
        none = add_study(s, priority="none", arrived=T0 - dt.timedelta(hours=1))
        early_critical = add_study(s, priority="critical", arrived=T0)
        routine = add_study(s, priority="routine", arrived=T0 - dt.timedelta(hours=2))
        urgent = add_study(s, priority="urgent", arrived=T0 + dt.timedelta(hours=2))
        expected = [early_critical, late_critical, urgent, routine, none]
    with transaction(sessions) as s:
        rows = worklist(s)
    assert [r["study_instance_uid"] for r in rows] == [st.study_instance_uid for st in expected]
    assert [r["priority"] for r in rows] == ["critical", "critical", "urgent", "routine", "none"]


def test_worklist_row_has_the_contract_shape(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as s:
        add_study(
            s,
            priority="critical",
            findings=(("any_hemorrhage", True, 0.97), ("subdural", False, 0.04)),
            outbox=(("pacs", "seg", "delivered"), ("pacs", "sr", "pending")),
        )
    with transaction(sessions) as s:
        (row,) = worklist(s)
    json.dumps(row)  # JSON-ready, no datetimes or enums
    assert row.keys() >= CONTRACT_STUDY
    assert row["priority"] == "critical"
    assert row["flagged_at"] == "2026-03-01T08:01:30Z"
    assert row["status"] == "done"
    assert row["time_to_flag_s"] == 70.0
    assert [f["label"] for f in row["findings"]] == ["any_hemorrhage", "subdural"]
    top = row["findings"][0]
    assert top.keys() >= CONTRACT_FINDING
    assert (top["present"], top["probability"], top["volume_ml"], top["location"]) == (
        True,
        0.97,
        12.34,
        "right thalamus",
    )
    (series,) = row["series"]
    assert series.keys() >= CONTRACT_SERIES
    assert series["pipeline"] == "ct_head"
    assert (series["instances"], series["slices_kept"], series["slices_dropped"]) == (32, 28, 4)
    assert series["delivery"] == {"seg": "delivered", "sr": "pending"}


def test_delivery_shows_the_least_advanced_destination_or_none(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as s:
        add_study(
            s,
            priority="urgent",
            job_state="results_ready",
            outbox=(("a", "seg", "delivered"), ("b", "seg", "dead_letter"), ("a", "sr", "sending")),
        )
        add_study(s, priority="routine", job_state="rejected", reason="localizer: 3 slices")
    with transaction(sessions) as s:
        first, second = worklist(s)
    assert first["series"][0]["delivery"] == {"seg": "dead_letter", "sr": "sending"}
    assert first["status"] == "sending"
    assert second["series"][0]["delivery"] == "none"
    assert second["series"][0]["state"] == "rejected"
    assert second["series"][0]["reason"] == "localizer: 3 slices"


def test_series_without_a_job_shows_its_receiving_state(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as s:
        add_study(s, job_state=None, series_state="receiving")
    with transaction(sessions) as s:
        (row,) = worklist(s)
    assert row["series"][0]["state"] == "receiving"
    assert row["series"][0]["pipeline"] is None
    assert row["series"][0]["instances"] == 32
    assert row["status"] == "receiving"


@pytest.mark.parametrize(
    ("states", "status"),
    [
        ([], "receiving"),
        (["delivered", "receiving"], "receiving"),
        (["delivered", "processing"], "processing"),
        (["complete"], "processing"),
        (["results_ready", "failed"], "sending"),
        (["delivered", "dead_letter"], "error"),
        (["failed", "skipped"], "error"),
        (["delivered", "rejected", "skipped"], "done"),
    ],
)
def test_study_status_rules(states: list[str], status: str) -> None:
    assert study_status(states).value == status


def test_filters_by_priority_modality_and_state(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as s:
        ct_crit = add_study(s, priority="critical", modality="CT")
        mr_routine = add_study(s, priority="routine", modality="MR", acknowledged_by="dr.house")
        failing = add_study(s, priority="none", modality="CT", job_state="failed", reason="boom")
    with transaction(sessions) as s:
        assert [r["study_instance_uid"] for r in worklist(s, priority="critical")] == [ct_crit.study_instance_uid]
        assert [r["study_instance_uid"] for r in worklist(s, modality="mr")] == [mr_routine.study_instance_uid]
        assert [r["study_instance_uid"] for r in worklist(s, state="error")] == [failing.study_instance_uid]
        assert [r["study_instance_uid"] for r in worklist(s, state="read")] == [mr_routine.study_instance_uid]
        assert len(worklist(s, state="unread")) == 2
        assert len(worklist(s, limit=1)) == 1


def test_status_filter_pages_past_the_limit(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as s:
        for i in range(5):
            add_study(s, arrived=T0 + dt.timedelta(minutes=i))
        wanted = add_study(s, arrived=T0 + dt.timedelta(hours=1), job_state="processing")
    with transaction(sessions) as s:
        rows = worklist(s, state="processing", limit=2)
    assert [r["study_instance_uid"] for r in rows] == [wanted.study_instance_uid]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"priority": "high"}, r"priority must be one of .* got 'high'"),
        ({"state": "lost"}, r"state must be one of .* got 'lost'"),
        ({"limit": 0}, r"limit must be a positive integer, got 0"),
    ],
)
def test_unknown_filter_values_are_refused(
    sessions: sessionmaker[Session], kwargs: dict[str, object], match: str
) -> None:
    with transaction(sessions) as s, pytest.raises(ValueError, match=match):
        worklist(s, **kwargs)  # type: ignore[arg-type]


def test_study_detail_lists_key_images_and_audit(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as s:
        study = add_study(s, priority="critical", findings=(("any_hemorrhage", True, 0.9), ("sdh", False, 0.1)))
        s.add(AuditEntry(study_id=study.id, user="dr.who", action="view", at=T0))
        uid = study.study_instance_uid
    with transaction(sessions) as s:
        detail = study_detail(s, uid)
        assert study_detail(s, "1.2.3.404") is None
    assert detail is not None
    assert detail.keys() >= CONTRACT_STUDY
    (key,) = detail["key_images"]
    assert key["label"] == "any_hemorrhage"
    assert key["sop_instance_uid"] == f"{uid}.1.7"
    assert detail["audit"] == [{"user": "dr.who", "action": "view", "detail": None, "at": "2026-03-01T08:00:00Z"}]


def test_format_table_prints_one_line_per_study(sessions: sessionmaker[Session]) -> None:
    with transaction(sessions) as s:
        add_study(
            s, priority="critical", findings=(("any_hemorrhage", True, 0.97),), outbox=(("pacs", "seg", "delivered"),)
        )
        add_study(s, priority="none")
    with transaction(sessions) as s:
        rows = worklist(s)
    table = format_table(rows)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["PRIORITY", "FLAGGED", "(UTC)"]
    assert len(lines) == 3
    assert "any_hemorrhage 0.97 12.3 ml right thalamus" in lines[1]
    assert "seg:delivered" in lines[1]
    assert "DOE JANE" in lines[1]
    assert "DOE" not in format_table(rows, include_phi=False)
    assert format_table([]).splitlines()[-1] == "(no studies)"
