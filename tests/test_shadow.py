"""Shadow mode through a real ``triage-node serve`` and a real Orthanc: a model listed in ``models.shadow`` runs and
its findings are recorded (and can be rated), but it sets no priority, queues no notification and sends nothing to
the PACS. The same daemon with the same model live flags the next study critical and delivers its SEG and SR, so the
silence in phase one is the shadow mode, not a broken route."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from peers import SUPPORT, make_daemon, storescu, wait_for
from peers_orthanc import start_orthanc

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head
from triage_node.results.masks import masks_path, open_masks

# SQLite only: the daemon with Orthanc; the shadow rule's rows run on both in test_pipeline.py
TERMINAL = ("delivered", "results_ready", "rejected", "skipped", "failed", "dead_letter")


def stub_card(folder: Path) -> None:
    """The reliability suite's stand-in analyzer (it outlines soft tissue as ``hemorrhage_extent``), as model 'stub'."""
    model = folder / "stub"
    model.mkdir(parents=True)
    weights = model / "weights.bin"
    weights.write_bytes(b"shadow test stub weights\n")
    (model / "model.yaml").write_text(
        "name: stub\nversion: 2.0.0-trial\nanalyzer: stand_ins:StubAnalyzer\nweights: weights.bin\n"
        f"sha256: {hashlib.sha256(weights.read_bytes()).hexdigest()}\narchitecture: {{kind: threshold}}\n"
        "input: {modality: CT}\nclasses: [hemorrhage_extent]\nthresholds: {hemorrhage_extent: 0.5}\n"
        "intended_use: shadow-mode tests only\n"
    )


def send_study(tmp: Path, port: int, seed: int) -> str:
    hu, spacing = phantom_head(8, 64)
    hu[3:6, 20:30, 34:44] = 70.0
    paths = write_series(tmp / f"s{seed}", hu, spacing, seed=seed)
    storescu(port, paths)
    import pydicom

    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID)


@pytest.mark.timeout(420)
def test_a_shadow_model_is_recorded_but_sets_no_priority_and_sends_nothing(tmp_path: Path) -> None:
    stub_card(tmp_path / "models")
    orthanc = start_orthanc(tmp_path / "pacs")
    env = {
        "TRIAGE_NODE__MODELS__DIR": str(tmp_path / "models"),
        "TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": ["stub"], "mr_swi": [], "mr_dwi": []}),
        "TRIAGE_NODE__MODELS__PRIORITY": json.dumps({"hemorrhage_extent": "critical"}),
        "TRIAGE_NODE__MODELS__SHADOW": json.dumps(["stub"]),
        "TRIAGE_NODE__DESTINATIONS": json.dumps([{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
                                                  "port": orthanc.dicom_port, "backoff_initial_s": 0.2}]),
        "TRIAGE_NODE__NOTIFICATIONS__WEBHOOKS": json.dumps([{"url": "http://127.0.0.1:9/hook"}]),
        "TRIAGE_NODE__WEB__ENABLED": "false",
        "PYTHONPATH": os.pathsep.join(p for p in (str(SUPPORT), os.environ.get("PYTHONPATH", "")) if p),
    }
    d = make_daemon(tmp_path / "d", **env).start()
    try:
        shadow_uid = send_study(tmp_path, d.port, seed=81)
        wait_for(lambda: d.sql("select state from jobs") and d.sql("select state from jobs")[0][0] in TERMINAL,
                 timeout=120, what="the shadow job to finish")
        ((job_id, state, priority, results_dir),) = d.sql("select id, state, priority, results_dir from jobs")
        assert (state, priority) == ("delivered", "none")
        findings = d.sql("select label, present, shadow, model, model_version from findings")
        assert findings == [("hemorrhage_extent", 1, 1, "stub", "2.0.0-trial")]  # recorded, marked shadow
        assert d.sql("select priority from studies") == [("none",)]
        assert d.sql("select count(*) from outbox") == [(0,)]
        assert d.sql("select count(*) from notifications") == [(0,)]
        with open_masks(masks_path(str(results_dir))) as stored:  # the viewer shows it apart; key images never
            assert [layer.label for layer, _ in stored.layers("mask", shadow=True)] == ["hemorrhage_extent"]
            assert list(stored.layers("mask")) == []
        time.sleep(2.0)  # anything queued would have been sent by now (deliver_due runs every second)
        assert orthanc.instance_count() == 0
        d.stop()

        # Control: the same model live flags the next study and its SEG and SR reach Orthanc.
        d.env["TRIAGE_NODE__MODELS__SHADOW"] = "[]"
        d.start()
        live_uid = send_study(tmp_path, d.port, seed=82)
        wait_for(lambda: len(d.sql("select id from jobs where state = 'delivered'")) == 2, timeout=120,
                 what="the live job delivered")
        rows = d.sql("select s.study_instance_uid, s.priority from studies s order by s.id")
        assert dict(rows) == {shadow_uid: "none", live_uid: "critical"}
        assert d.sql(f"select shadow from findings where job_id != {job_id}") == [(0,)]
        assert orthanc.instance_count() == 2  # SEG + SR of the live study only
        in_pacs = {orthanc.get(f"/instances/{i}/tags?simplify")["StudyInstanceUID"] for i in orthanc.get("/instances")}
        assert in_pacs == {live_uid}
        assert d.sql("select count(*) from notifications") == [(1,)]
    finally:
        d.stop()
        orthanc.stop()
