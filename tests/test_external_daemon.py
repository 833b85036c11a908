"""Models from outside through the real daemon: a MONAI UNet built at test time, as TorchScript, as ONNX and as a MONAI
bundle, each named in ``models.pipelines`` with nothing but its card; DCMTK storescu sends a head CT with a bleed, the
daemon finds it (the card's priority flags the study), and the SEG it sends to Orthanc passes dicom3tools' dciodvfy.
A card that lists 2 labels for a network with 3 output channels stops the daemon at start, naming the key path."""

from __future__ import annotations

import json
import subprocess
import warnings
from pathlib import Path

import pydicom
import pytest
import yaml
from external_models import bleed_series_hu, build_all, card, export_torchscript, train_unet, write_card
from peers import Daemon, find_tool, make_daemon, storescu, wait_for
from peers_orthanc import Modality, start_orthanc

from triage_lab.synth.dicom import write_series
from triage_node.inference.card import device_uid_for

# SQLite only: loading outside models is the subject; the daemon on both is tests/web/test_daemon.py
SEG = "1.2.840.10008.5.1.4.1.1.66.4"
SR3D = "1.2.840.10008.5.1.4.1.1.88.34"
NAMES = ("ext_ts", "ext_onnx", "ext_bundle")


def _env(models_dir: Path, name: str) -> dict[str, str]:
    return {
        "TRIAGE_NODE__MODELS__DIR": str(models_dir),
        "TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": [name], "mr_swi": [], "mr_dwi": []}),
        "TRIAGE_NODE__MODELS__PRECISION": "fp32",
        "TRIAGE_NODE__WEB__ENABLED": "false",
    }


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([find_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def _wait_delivered(daemon: Daemon, name: str, series_uid: str) -> tuple:  # type: ignore[type-arg]
    def delivered() -> tuple | None:  # type: ignore[type-arg]
        rows = daemon.sql(
            "select j.id, j.state, j.priority, j.reason from jobs j join series s on s.id = j.series_id "
            f"where s.series_instance_uid = '{series_uid}'"
        )
        if rows and rows[0][1] in ("rejected", "skipped", "failed", "dead_letter"):
            raise AssertionError(f"{name}: job ended {rows[0][1]}: {rows[0][3]}\n{daemon.log()[-3000:]}")
        return rows[0] if rows and rows[0][1] == "delivered" else None

    return wait_for(delivered, timeout=300, interval=0.5, what=f"{name} delivered")  # type: ignore[return-value]


@pytest.mark.timeout(900)
def test_each_format_runs_through_the_daemon_and_its_seg_passes_dciodvfy_in_orthanc(tmp_path: Path) -> None:
    find_tool("storescu")
    find_tool("dciodvfy")
    models_dir = tmp_path / "models"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cards = build_all(models_dir)
    orthanc = start_orthanc(tmp_path / "orthanc", modalities={"triage": Modality("TRIAGE_NODE")})
    destination = {"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port,
                   "backoff_initial_s": 0.5, "backoff_max_s": 2}
    try:
        for i, name in enumerate(NAMES):
            daemon = make_daemon(tmp_path / f"daemon-{name}", **_env(models_dir, name),
                                 TRIAGE_NODE__DESTINATIONS=json.dumps([destination]))
            daemon.start(timeout=240)
            try:
                hu, spacing = bleed_series_hu()
                paths = write_series(tmp_path / f"series-{name}", hu, spacing, seed=700 + i)
                storescu(daemon.port, paths[0].parent)
                src = pydicom.dcmread(paths[0], stop_before_pixels=True)

                job_id, _, priority, _ = _wait_delivered(daemon, name, str(src.SeriesInstanceUID))
                assert priority == "urgent"  # the card's labels[1].priority (models.priority does not list it)
                findings = daemon.sql(f"select label, present, model, volume_ml from findings where job_id = {job_id}")
                assert findings == [(f"{name}_bleed", 1, name, pytest.approx(findings[0][3]))]
                assert findings[0][3] > 0
            finally:
                daemon.stop()
            assert "not valid" not in daemon.log()

            found = orthanc.post("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID":
                                                                                  src.StudyInstanceUID}})
            by_class = {orthanc.tags(iid)["SOPClassUID"]: iid for iid in found}
            assert SEG in by_class and SR3D in by_class, by_class
            seg_path = tmp_path / f"{name}-seg.dcm"
            seg_path.write_bytes(orthanc.file(by_class[SEG]))
            assert _dciodvfy_errors(seg_path) == []
            seg = pydicom.dcmread(seg_path)
            sha = yaml.safe_load(cards[name].read_text())["sha256"]
            device_uids = {str(item.get("DeviceUID", "")) for item in seg.ContributingEquipmentSequence}
            assert device_uid_for(sha) in device_uids
            (segment,) = seg.SegmentSequence
            assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "50960005"
            assert segment.SegmentLabel == "hemorrhage (outside model)"  # the card's phrase
            assert segment.SegmentAlgorithmName == name
    finally:
        orthanc.stop()


@pytest.mark.timeout(300)
def test_a_card_with_three_output_channels_for_two_labels_stops_the_daemon_at_start(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    folder = models_dir / "bad"
    export_torchscript(train_unet(steps=1, out_channels=3), folder / "unet.ts")
    write_card(folder, card("bad", "torchscript", "unet.ts", folder))
    daemon = make_daemon(tmp_path / "daemon", **_env(models_dir, "bad")).start(wait=False)
    try:
        assert daemon.proc is not None
        rc = daemon.proc.wait(timeout=240)
    finally:
        daemon.stop()
    log = daemon.log()
    assert rc == 3, log[-3000:]
    assert "cannot start" in log
    assert f"{folder / 'model.yaml'}: labels: the network gives 3 output channel(s), the card lists 2 label(s)" in log
