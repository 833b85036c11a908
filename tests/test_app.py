"""The daemon end to end: a real `triage-node serve` process, DCMTK as the sending modality."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import numpy as np
from peers import ROOT, echoscu, make_daemon, running_daemon, storescu, wait_for
from pydicom import dcmread

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head

NO_MODELS = {"TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": [], "mr_swi": [], "mr_dwi": []})}

# Tests taking db_url run on both backends; the rest: SQLite, the process is their subject (AE policy, signals, kill)


def job_states(d) -> list[tuple]:  # type: ignore[no-untyped-def]
    return d.sql(
        "select j.version, j.state, j.pipeline, j.reason, j.slices_kept, j.slices_dropped from jobs j order by j.id"
    )


def test_100_slice_head_ct_is_stored_completed_routed_and_filtered(tmp_path, ct_series_100, db_url) -> None:  # type: ignore[no-untyped-def]
    with running_daemon(tmp_path / "d", **NO_MODELS, TRIAGE_NODE__STORAGE__DATABASE_URL=db_url) as d:
        assert echoscu(d.port).returncode == 0
        storescu(d.port, ct_series_100[0].parent)
        # every instance that got a success status is in the spool and the database
        rows = d.sql("select path, size from instances")
        assert len(rows) == 100
        for path, size in rows:
            assert (d.spool / str(path)).stat().st_size == size
        wait_for(lambda: job_states(d) and job_states(d)[0][1] == "delivered", timeout=60, what="the job to finish")
        [(version, state, pipeline, reason, kept, dropped)] = job_states(d)
        assert (version, pipeline) == (1, "ct_head")
        assert kept + dropped == 100
        assert 20 < kept < 100 and dropped > 0  # blank slices above and below the brain are dropped
        assert d.sql("select state, received_instances from series") == [("complete", 100)]
        # no patient identity at INFO
        log = d.log()
        assert "SYNTH^PATIENT" not in log and "SYN0000100" not in log
    assert d.proc is None


def test_unlisted_calling_ae_is_rejected_and_logged(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**NO_MODELS, "TRIAGE_NODE__SCP__ALLOWED_CALLERS": json.dumps([{"ae_title": "PACS"}])}
    with running_daemon(tmp_path / "d", **env) as d:
        assert echoscu(d.port, calling="PACS").returncode == 0
        assert echoscu(d.port, calling="INTRUDER").returncode != 0
        wait_for(lambda: "association rejected: calling AE 'INTRUDER'" in d.log(), timeout=10)


def test_sigkill_while_receiving_then_resend_completes_the_series_once(tmp_path, ct_series_100) -> None:  # type: ignore[no-untyped-def]
    d = make_daemon(tmp_path / "d", **NO_MODELS).start()
    try:
        sender = subprocess.Popen(
            [
                "storescu",
                "-aet",
                "CT1",
                "-aec",
                "TRIAGE_NODE",
                "+sd",
                "127.0.0.1",
                str(d.port),
                str(ct_series_100[0].parent),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
        )
        wait_for(lambda: d.sql("select count(*) from instances")[0][0] >= 30, timeout=60, interval=0.01)
        d.kill()
        sender.wait(timeout=60)
        stored_before = d.sql("select count(*) from instances")[0][0]
        assert 30 <= stored_before < 100
        d.start()
        storescu(d.port, ct_series_100[0].parent)  # the modality sends the whole series again
        wait_for(lambda: [s for (_, s, *_) in job_states(d)] == ["delivered"], timeout=60)
        assert d.sql("select count(*), count(distinct sop_instance_uid) from instances") == [(100, 100)]
        assert d.sql("select received_instances, version from series") == [(100, 1)]
        assert not list(d.spool.rglob("*.tmp"))
    finally:
        d.stop()


def test_late_instance_reopens_a_completed_series_as_a_new_job_version(tmp_path, db_url) -> None:  # type: ignore[no-untyped-def]
    hu, spacing = phantom_head(12, 128)
    paths = write_series(tmp_path / "s", hu, spacing, seed=21, declare_count=False)
    env = {**NO_MODELS, "TRIAGE_NODE__SERIES__QUIET_PERIOD_S": "1", "TRIAGE_NODE__STORAGE__DATABASE_URL": db_url}
    with running_daemon(tmp_path / "d", **env) as d:
        storescu(d.port, paths[:-1])
        wait_for(lambda: [s for (_, s, *_) in job_states(d)] == ["delivered"], timeout=30)
        storescu(d.port, paths[-1:])
        wait_for(lambda: len(job_states(d)) == 2 and job_states(d)[1][1] == "delivered", timeout=30)
        assert [v for (v, *_) in job_states(d)] == [1, 2]
        assert d.sql("select received_instances, version, state from series") == [(12, 2, "complete")]


def test_unrouted_series_is_skipped_and_bad_geometry_is_rejected_with_reasons(tmp_path) -> None:  # type: ignore[no-untyped-def]
    hu, spacing = phantom_head(6, 64)
    knee = write_series(
        tmp_path / "knee", hu, spacing, seed=31, study_description="MR KNEE", series_description="PD FS", modality="MR"
    )
    mixed = write_series(
        tmp_path / "mixed",
        hu,
        spacing,
        seed=32,
        per_slice_extra=[
            {"ImageOrientationPatient": [1, 0, 0, 0, 1, 0] if i % 2 else [1, 0, 0, 0, 0, -1]} for i in range(6)
        ],
    )
    with running_daemon(tmp_path / "d", **NO_MODELS) as d:
        storescu(d.port, knee[0].parent)
        storescu(d.port, mixed[0].parent)
        wait_for(
            lambda: len(job_states(d)) == 2 and all(s in ("skipped", "rejected") for (_, s, *_) in job_states(d)),
            timeout=30,
        )
        by_state = {s: r for (_, s, _, r, *_) in job_states(d)}
        assert "no routing rule matched" in by_state["skipped"] and "modality=MR" in by_state["skipped"]
        assert by_state["rejected"] == "mixed image orientations in one series"


def test_sigterm_stops_cleanly_and_sighup_reloads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    d = make_daemon(tmp_path / "d", **NO_MODELS).start()
    d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    wait_for(lambda: "reloaded " in d.log(), timeout=10)
    assert echoscu(d.port).returncode == 0
    assert d.stop(signal.SIGTERM) == 0
    assert "stopped" in d.log()


def run_cli(
    *args: str, env: dict[str, str] | None = None, module: str = "triage_node.cli"
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=ROOT,
        timeout=120,
    )


def test_check_config_accepts_the_shipped_example_and_names_every_problem(tmp_path) -> None:  # type: ignore[no-untyped-def]
    ok = run_cli("check-config", "--config", str(ROOT / "config.yaml"))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "scp:\n  port: 70000\nseries:\n  rules:\n    - name: x\n      pipeline: ct_hed\nfilter:\n  min_brain_pct: -1\n"
    )
    res = run_cli("check-config", "--config", str(bad))
    assert res.returncode == 1
    assert "scp.port: must be between 1 and 65535, got 70000" in res.stderr
    assert "series.rules.0.pipeline" in res.stderr
    assert "filter.min_brain_pct: must be between 0 and 100, got -1" in res.stderr
    env = run_cli("check-config", "--config", str(ROOT / "config.yaml"), env={"TRIAGE_NODE__SCP__PORT": "0"})
    assert "scp.port: must be between 1 and 65535, got 0" in env.stderr


def run_lab(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, module="triage_lab.cli")


def test_operator_cli_lists_only_operator_commands() -> None:
    res = run_cli("--help")
    assert res.returncode == 0, res.stderr
    for lab_command in ("synth", "train", "evaluate", "tune-", "export", "lr-find"):
        assert lab_command not in res.stdout.split("positional arguments")[1].split("options")[0]
    for command in ("serve", "check-config", "worklist", "resend", "models", "conformance"):
        assert command in res.stdout


def test_models_command_reads_the_config_models_dir() -> None:
    res = run_cli("models", "--config", str(ROOT / "config.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "ich" in res.stdout and "ok" in res.stdout


def test_synth_command_writes_a_series_that_the_daemon_accepts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = run_lab("synth", str(tmp_path / "out"), "--kind", "phantom", "--slices", "5", "--size", "64")
    assert res.returncode == 0, res.stderr
    files = sorted((tmp_path / "out").glob("*.dcm"))
    assert len(files) == 5
    ds = dcmread(files[0])
    assert ds.Modality == "CT" and ds.ImagesInAcquisition == 5
    assert np.isclose(float(ds.ImagePositionPatient[2]), 0.0)
