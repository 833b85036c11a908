"""The disk guard and the metrics in the real daemon: DCMTK storescu against a spool whose floor cannot be met gets
0xA700 for every instance, the log has one warning (not one per instance), and /metrics on the web port counts it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from peers import running_daemon, storescu, wait_for
from prometheus_client.parser import text_string_to_metric_families

from triage_lab.synth.dicom import write_ct_series

# SQLite only: the disk guard refuses before any row is written; the gauges' queries run on both in test_prometheus
NO_MODELS = {"TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": [], "mr_swi": [], "mr_dwi": []})}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_full_spool_refuses_with_a700_warns_once_and_is_counted(tmp_path: Path) -> None:
    import numpy as np

    hu = np.full((4, 32, 32), 40, dtype=np.int16)
    paths = write_ct_series(tmp_path / "ct", hu, (5.0, 0.5, 0.5), seed=7)
    env = {**NO_MODELS, "TRIAGE_NODE__STORAGE__MIN_FREE_MB": str(10**9)}  # a petabyte floor: never met
    with running_daemon(tmp_path / "d", **env) as d:
        proc = storescu(d.port, paths, check=False, extra=["-v", "--no-halt"])
        out = proc.stdout + proc.stderr
        assert out.count("Received Store Response (Refused: OutOfResources)") == len(paths), out[-2000:]
        assert d.sql("select count(*) from instances") == [(0,)]
        got = wait_for(lambda: scrape(d.web_port), timeout=10, what="/metrics")
        assert isinstance(got, dict)
        assert got[("triage_node_c_store_failures_total", (("status", "0xA700"),))] == len(paths)
        assert got[("triage_node_instances_received_total", ())] == 0
        assert got[("triage_node_associations_total", (("result", "accepted"),))] >= 1
        assert got[("triage_node_spool_free_bytes", ())] > 0
        assert got[("triage_node_database_up", ())] == 1
        log = d.log()
    assert log.count("below the floor of") == 1, log
