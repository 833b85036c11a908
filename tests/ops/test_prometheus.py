from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from peers import free_port
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine
from sqlalchemy.orm import Session, sessionmaker

from triage_node.ops.prometheus import Metrics
from triage_node.worklist.db import session_factory, transaction
from triage_node.worklist.models import JobState, OutboxState, SeriesState

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)


def scrape(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Sample name + sorted labels -> value, parsed back from the exposition text a Prometheus server reads."""
    text = generate_latest(metrics.registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_counters_and_histograms_appear_in_the_exposition(tmp_path: Path) -> None:
    m = Metrics(None, tmp_path, process_metrics=False)
    m.instances_received.inc(3)
    m.bytes_received.inc(3 * 524_288)
    m.associations.labels(result="accepted").inc()
    m.c_store_failures.labels(status="0xA700").inc()
    m.series_completed.inc()
    m.inference_seconds.labels(model="ich").observe(4.2)
    m.time_to_flag_seconds.observe(41.0)
    m.job_stage_seconds.labels(stage="load").observe(0.3)
    got = scrape(m)
    assert got[("triage_node_instances_received_total", ())] == 3
    assert got[("triage_node_bytes_received_total", ())] == 3 * 524_288
    assert got[("triage_node_associations_total", (("result", "accepted"),))] == 1
    assert got[("triage_node_associations_total", (("result", "rejected"),))] == 0  # pre-created
    assert got[("triage_node_c_store_failures_total", (("status", "0xA700"),))] == 1
    assert got[("triage_node_series_completed_total", ())] == 1
    assert got[("triage_node_inference_seconds_bucket", (("le", "5.0"), ("model", "ich")))] == 1
    assert got[("triage_node_inference_seconds_bucket", (("le", "2.5"), ("model", "ich")))] == 0
    assert got[("triage_node_time_to_flag_seconds_count", ())] == 1
    assert got[("triage_node_job_stage_seconds_sum", (("stage", "load"),))] == 0.3
    assert got[("triage_node_spool_free_bytes", ())] > 0
    assert ("triage_node_jobs", (("state", "complete"),)) not in got  # no database given


def test_two_instances_do_not_share_state(tmp_path: Path) -> None:
    a, b = Metrics(None, tmp_path), Metrics(None, tmp_path)
    a.instances_received.inc()
    assert scrape(b)[("triage_node_instances_received_total", ())] == 0
    assert scrape(a)[("process_resident_memory_bytes", ())] > 0


def test_database_gauges_are_read_at_scrape_time(
    tmp_path: Path, sessions: sessionmaker[Session], rows: Any
) -> None:
    m = Metrics(sessions, tmp_path, clock=lambda: NOW, process_metrics=False)
    got = scrape(m)
    assert got[("triage_node_database_up", ())] == 1
    assert got[("triage_node_jobs", (("state", "complete"),))] == 0
    assert got[("triage_node_outbox_depth", ())] == 0
    assert got[("triage_node_outbox_oldest_pending_age_seconds", ())] == 0

    with transaction(sessions) as s:
        rows.series(s, NOW, state=SeriesState.RECEIVING)
        done = rows.series(s, NOW)
        job = rows.job(s, done, JobState.RESULTS_READY, NOW)
        rows.job(s, rows.series(s, NOW), JobState.DELIVERED, NOW)
        rows.job(s, rows.series(s, NOW), JobState.DEAD_LETTER, NOW)
        rows.outbox(s, job, "seg", OutboxState.PENDING, NOW - dt.timedelta(minutes=10))
        rows.outbox(s, job, "sr", OutboxState.SENDING, NOW - dt.timedelta(minutes=2))
        rows.outbox(s, job, "map", OutboxState.DEAD_LETTER, NOW - dt.timedelta(hours=5))
    got = scrape(m)
    assert got[("triage_node_jobs", (("state", "results_ready"),))] == 1
    assert got[("triage_node_jobs", (("state", "delivered"),))] == 1
    assert got[("triage_node_jobs", (("state", "dead_letter"),))] == 1
    assert got[("triage_node_jobs", (("state", "processing"),))] == 0
    assert got[("triage_node_series_receiving", ())] == 1
    assert got[("triage_node_outbox_depth", ())] == 2
    assert got[("triage_node_outbox_oldest_pending_age_seconds", ())] == 600
    assert got[("triage_node_outbox_dead_letters", ())] == 1
    assert got[("triage_node_notifications_pending", ())] == 0


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_an_unreadable_database_reports_down_and_keeps_the_scrape(tmp_path: Path, backend: str) -> None:
    url = {
        "sqlite": f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}",  # a file in a folder that is not there
        "postgresql": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/x?connect_timeout=5",  # no server
    }[backend]
    broken = session_factory(create_engine(url))
    m = Metrics(broken, tmp_path, process_metrics=False)
    got = scrape(m)
    assert got[("triage_node_database_up", ())] == 0
    assert got[("triage_node_spool_free_bytes", ())] > 0
    assert ("triage_node_outbox_depth", ()) not in got
