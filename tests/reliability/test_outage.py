"""PACS outage: Orthanc away, then back. Within the attempt limit every result arrives once; past it the job is
dead-lettered, visible on the worklist JSON, and ``triage-node resend JOB`` delivers it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from peers import ROOT, wait_for
from peers_orthanc import start_orthanc
from pydicom import dcmread
from reliability_support import (
    Figures,
    destination,
    job_rows,
    new_daemon,
    phantom_series,
    results_in_orthanc,
    send_files,
    stub_models,
)

# SQLite only: fault injection, doubled by transport already; PostgreSQL's is test_multinode.py
pytestmark = pytest.mark.reliability


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "triage_node.cli", *args, "--config", str(ROOT / "config.yaml")],
                          env=env, capture_output=True, text=True, timeout=120, cwd=ROOT)


def _studies(tmp_path: Path, d, seeds: range) -> list[str]:  # type: ignore[no-untyped-def]
    studies = []
    for seed in seeds:
        paths = phantom_series(tmp_path / f"s{seed}", seed=seed, slices=6)
        assert send_files(d.port, paths).acked, "the daemon refused a normal series"
        studies.append(str(dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID))
    return studies


def test_results_wait_out_a_pacs_outage_and_arrive_once(tmp_path: Path, figures: Figures) -> None:
    orthanc = start_orthanc(tmp_path / "pacs", start=False)
    env = {**stub_models(tmp_path / "models"), "TRIAGE_NODE__DESTINATIONS": destination(orthanc.dicom_port, 100),
           "TRIAGE_NODE__WEB__ENABLED": "false"}
    d = new_daemon(figures, tmp_path / "d", **env).start()
    try:
        studies = _studies(tmp_path, d, range(7000, 7003))
        # the PACS is down: every item fails and is retried with backoff, none is given up
        wait_for(lambda: (d.sql("select min(attempts) from outbox where state = 'pending'")[0][0] or 0) >= 2,
                 timeout=60, what="two failed attempts per item")
        failed_attempts = d.sql("select sum(attempts) from outbox")[0][0]
        assert {r[3] for r in job_rows(d)} == {"results_ready"}
        orthanc.start()
        wait_for(lambda: {r[3] for r in job_rows(d)} == {"delivered"}, timeout=60, what="delivery after the outage")
        counts = results_in_orthanc(orthanc)
        assert sorted(counts) == sorted(studies)
        assert all(c["SEG"] == 1 and c["SR"] == 1 for c in counts.values()), counts
        figures.outage["failed_attempts_while_down"] = int(failed_attempts)
        figures.outage["delivered_after_outage"] = len(studies)
        figures.result_sets_delivered += len(studies)
    finally:
        d.stop()
        orthanc.stop()


def test_past_the_attempt_limit_jobs_are_dead_lettered_visible_and_resent(tmp_path: Path, figures: Figures) -> None:
    orthanc = start_orthanc(tmp_path / "pacs", start=False)
    env = {**stub_models(tmp_path / "models"), "TRIAGE_NODE__WEB__ENABLED": "false",
           "TRIAGE_NODE__DESTINATIONS": destination(orthanc.dicom_port, max_attempts=2)}
    d = new_daemon(figures, tmp_path / "d", **env).start()
    try:
        studies = _studies(tmp_path, d, range(7100, 7102))
        wait_for(lambda: [r[3] for r in job_rows(d)] == ["dead_letter"] * 2, timeout=60, what="dead letters")
        assert d.sql("select distinct state, attempts from outbox") == [("dead_letter", 2)]
        listing = _cli(d.env, "worklist", "--json")
        assert listing.returncode == 0, listing.stderr
        shown = json.dumps(json.loads(listing.stdout))
        assert "dead_letter" in shown
        orthanc.start()
        for job_id, *_ in job_rows(d):
            res = _cli(d.env, "resend", str(job_id))
            assert res.returncode == 0, res.stderr
            assert "queued for delivery" in res.stdout
        wait_for(lambda: [r[3] for r in job_rows(d)] == ["delivered"] * 2, timeout=60, what="resent jobs delivered")
        counts = results_in_orthanc(orthanc)
        assert sorted(counts) == sorted(studies)
        assert all(c["SEG"] == 1 and c["SR"] == 1 for c in counts.values()), counts
        figures.outage["dead_lettered_then_resent"] = len(studies)
        figures.result_sets_delivered += len(studies)
    finally:
        d.stop()
        orthanc.stop()
