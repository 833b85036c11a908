"""The radiologist's loop through the HTTP API: the viewer's slice list and layers (no patient data in URLs, login
needed), verdicts (validated, stored with user and time, audited, on the worklist and in the JSON), the performance
JSON and CSV."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from web_fixtures import PATIENT_ID, PATIENT_NAME, SLICES, USER, Clock, Seeded

from triage_node.inference.types import ModelOutput
from triage_node.results.masks import masks_path, save_masks
from triage_node.worklist.db import transaction
from triage_node.worklist.models import AuditEntry, Verdict


def test_viewer_lists_every_slice_and_serves_layers_behind_the_login(client: TestClient, seeded: Seeded) -> None:
    job = seeded.critical_job_id
    assert client.get(f"/api/viewer/jobs/{job}").status_code == 401
    assert client.get(f"/viewer/jobs/{job}/slices/0/image.png").status_code in (302, 303, 307)

    from web_fixtures import login

    login(client)
    meta = client.get(f"/api/viewer/jobs/{job}").json()
    assert meta["count"] == SLICES
    assert meta["windows"] == ["brain", "subdural", "bone"]
    assert [s["index"] for s in meta["slices"] if s["outline"]] == [1, 2]
    assert [s["index"] for s in meta["slices"] if s["heat"]] == [1, 2]
    assert {j["index"] for j in meta["jumps"] if j["kind"] == "key"} == {1, 2}
    text = str(meta)
    assert PATIENT_ID not in text and "TESTPATIENT" not in text and seeded.critical_uid not in text
    # slices run head first along the slice normal: the seed's z grows with the index, so index 0 is the last slice

    pngs = {}
    for window in meta["windows"]:
        r = client.get(f"/viewer/jobs/{job}/slices/1/image.png?window={window}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        pngs[window] = np.asarray(Image.open(io.BytesIO(r.content)))
    assert pngs["brain"].shape == (64, 64)
    assert not np.array_equal(pngs["brain"], pngs["bone"])  # the presets differ
    outline = np.asarray(Image.open(io.BytesIO(client.get(f"/viewer/jobs/{job}/slices/1/outline.png").content)))
    assert outline.shape == (64, 64, 4) and (outline[..., 3] == 255).sum() > 10
    heat = np.asarray(Image.open(io.BytesIO(client.get(f"/viewer/jobs/{job}/slices/2/heat.png").content)))
    assert heat[..., 3].max() > 0
    assert client.get(f"/viewer/jobs/{job}/slices/0/outline.png").status_code == 404  # no lesion there
    assert client.get(f"/viewer/jobs/{job}/slices/{SLICES}/image.png").status_code == 404
    assert client.get(f"/viewer/jobs/{job}/slices/0/image.png?window=lung").status_code == 404
    assert client.get("/viewer/jobs/99999/slices/0/image.png").status_code == 404


def test_verdicts_are_validated_stored_audited_and_shown(client: TestClient, csrf: str, seeded: Seeded,
                                                         clock: Clock) -> None:
    uid, job = seeded.critical_uid, seeded.critical_job_id
    url = f"/api/studies/{uid}/verdicts"
    body = {"job_id": job, "verdict": "disagree", "label": "any_hemorrhage", "model": "ich", "comment": "calcification"}
    assert client.post(url, json=body).status_code == 403  # no CSRF token
    headers = {"X-CSRF-Token": csrf}
    # a present finding cannot be 'missed'; an absent one cannot be disagreed with; jobs of other studies are unknown
    assert client.post(url, json={**body, "verdict": "missed"}, headers=headers).status_code == 422
    assert client.post(url, json={**body, "label": "subdural"}, headers=headers).status_code == 422
    assert client.post(url, json={**body, "job_id": 99999}, headers=headers).status_code == 404
    assert client.post(url, json={**body, "verdict": "maybe"}, headers=headers).status_code == 422

    r = client.post(url, json=body, headers=headers)
    assert r.status_code == 200, r.text
    detail = r.json()
    assert detail["verdict"] == "rejected"
    (v,) = detail["verdicts"]
    assert (v["verdict"], v["label"], v["model"], v["model_version"], v["user"], v["current"]) == (
        "disagree", "any_hemorrhage", "ich", "1.0.0", USER, True)
    assert v["comment"] == "calcification" and v["present"] is True

    row = client.get("/api/worklist").json()[0]
    assert (row["study_instance_uid"], row["verdict"]) == (uid, "rejected")
    page = client.get("/")
    assert "verdict-rejected" in page.text and "✗ rejected" in page.text

    # a later verdict replaces it for the figures; both stay
    clock.advance(minutes=1)
    r = client.post(url, json={**body, "verdict": "agree", "comment": None}, headers=headers)
    assert r.json()["verdict"] == "confirmed"
    assert [v["current"] for v in r.json()["verdicts"]] == [False, True]
    with transaction(seeded.sessions) as s:
        rows = s.scalars(select(Verdict).order_by(Verdict.id)).all()
        assert [(x.verdict, x.user, x.at) for x in rows][-1] == ("agree", USER, clock.now)
        audit = s.scalars(select(AuditEntry).where(AuditEntry.action == "verdict")).all()
        assert len(audit) == 2 and all(a.user == USER for a in audit)
        assert all(PATIENT_NAME not in (a.detail or "") for a in audit)

    # the routine study flagged nothing: agree (no finding) needs no label; disagree is refused
    routine_job = client.get(f"/api/studies/{seeded.routine_uid}").json()["series"][0]["job_id"]
    rurl = f"/api/studies/{seeded.routine_uid}/verdicts"
    r = client.post(rurl, json={"job_id": routine_job, "verdict": "agree"}, headers=headers)
    # no model ran on the seeded routine study: nothing to rate
    assert r.status_code == 422 and "nothing to rate" in r.text


def test_form_verdict_redirects_back_to_the_study(client: TestClient, csrf: str, seeded: Seeded) -> None:
    r = client.post(
        f"/studies/{seeded.critical_uid}/verdicts",
        data={"csrf_token": csrf, "job_id": seeded.critical_job_id, "verdict": "unsure", "target": "ich|any_hemorrhage",
              "comment": ""},
    )
    assert r.status_code == 303 and r.headers["location"].endswith(f"#job-{seeded.critical_job_id}")
    page = client.get(f"/studies/{seeded.critical_uid}")
    assert 'class="verdict-current verdict-unsure"' in page.text
    assert 'id="viewer"' in page.text and "/static/viewer.js" in page.text


def test_performance_json_and_csv_agree(client: TestClient, csrf: str, seeded: Seeded) -> None:
    headers = {"X-CSRF-Token": csrf}
    client.post(f"/api/studies/{seeded.critical_uid}/verdicts", headers=headers,
                json={"job_id": seeded.critical_job_id, "verdict": "agree", "label": "any_hemorrhage", "model": "ich"})
    data = client.get("/api/performance?days=30").json()
    (ich,) = [m for m in data["models"] if m["model"] == "ich"]
    assert (ich["mode"], ich["flags"], ich["agree"], ich["disagree"]) == ("live", 1, 1, 0)
    assert ich["ppv"]["value"] == 1.0 and 0.2 < ich["ppv"]["low"] < 0.21  # Wilson 1/1: [0.2065, 1]
    assert sum(d["flags"] for d in ich["flags_per_day"]) == 1
    ct = [t for t in data["time_to_flag"] if t["pipeline"] == "ct_head"][0]
    assert ct["jobs"] == 1 and ct["p50"] == 65.0
    rows = list(csv.DictReader(io.StringIO(client.get("/api/performance.csv").text)))
    ppv = [r for r in rows if r["section"] == "accuracy" and r["model"] == "ich" and r["label"] == "(all)"
           and r["metric"] == "ppv"]
    assert ppv[0]["value"] == "1" and ppv[0]["k"] == "1" and ppv[0]["n"] == "1"
    page = client.get("/performance")
    # Everything is served by the node: no script, style or image from elsewhere (a CDN).
    assert page.status_code == 200 and "<svg" in page.text
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page.text), "a resource from another host"
    assert 'data-ppv="1.0"' in page.text


def test_drift_warns_when_recent_series_fall_outside_the_cards_ranges(seeded: Seeded,
                                                                      tmp_path: Path, clock: Clock) -> None:
    """The seeded CT series has 3 mm pixels and 5 mm slices; a card that accepts 0.3-1.0 mm pixels warns about it."""
    import hashlib

    from triage_node.config import Config
    from triage_node.performance.report import Window, performance

    model = tmp_path / "models" / "ich"
    model.mkdir(parents=True)
    (model / "w.bin").write_bytes(b"w")
    (model / "model.yaml").write_text(
        "name: ich\nversion: 1.0.0\nanalyzer: x:Y\nweights: w.bin\n"
        f"sha256: {hashlib.sha256(b'w').hexdigest()}\narchitecture: {{}}\nclasses: [any_hemorrhage]\n"
        "thresholds: {any_hemorrhage: 0.5}\nintended_use: test\n"
        "input:\n  ranges:\n    manufacturer: [SIEMENS]\n    slice_thickness_mm: [0.6, 5.0]\n"
        "    pixel_spacing_mm: [0.3, 1.0]\n    head_width_mm: [120, 200]\n"
    )
    cfg = Config(models={"dir": str(tmp_path / "models")})
    report = performance(seeded.sessions, cfg, seeded.spool_dir, Window(now=clock.now, days=30, recent_days=7,
                                                                        min_series=1))
    (ich,) = [d for d in report["drift"] if d["model"] == "ich"]
    assert ich["ranges_declared"] and ich["recent_series"] == 1
    by_name = {a["name"]: a for a in ich["attributes"]}
    assert (by_name["pixel_spacing_mm"]["outside"], by_name["pixel_spacing_mm"]["warning"]) == (1, True)
    assert (by_name["slice_thickness_mm"]["outside"], by_name["slice_thickness_mm"]["warning"]) == (0, False)
    assert by_name["manufacturer"]["missing"] == 1 and not by_name["manufacturer"]["warning"]  # not in the header
    assert 150 < by_name["head_width_mm"]["median"] < 170  # 56-pixel skull ring x 3 mm
    assert ich["warnings"] == ["1 of 1 recent series outside the card's pixel spacing (mm): 0.3-1"]
    # read once: the attributes are stored, and a second report does not read the spool again
    from triage_node.worklist.models import SeriesAcquisition

    with transaction(seeded.sessions) as s:
        assert len(s.scalars(select(SeriesAcquisition)).all()) == 1


def test_a_dwi_series_shows_the_images_the_models_read_in_an_auto_window(seeded: Seeded, tmp_path: Path) -> None:
    """Two images per position (b0 and b1000): the viewer shows the three b1000 images the masks file names, in
    position order, with one MR window for the series."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    from triage_node.web.viewer import load_series_view, render_layer
    from triage_node.worklist.models import Instance, Job, Series, Study

    study_uid, series_uid = generate_uid(), generate_uid()
    folder = seeded.spool_dir / study_uid
    folder.mkdir(parents=True)
    rows, b1000 = [], []
    for z in (2, 0, 1):
        for b in (0, 1000):
            sop = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, sop
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = MRImageStorage, sop, "MR"
            ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, z * 4.0], [1, 0, 0, 0, 1, 0]
            ds.Rows = ds.Columns = 32
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
            ds.PixelData = np.full((32, 32), 100 + 10 * z + b // 10, dtype=np.uint16).tobytes()
            ds.save_as(folder / f"{sop}.dcm", enforce_file_format=True)
            rows.append(Instance(sop_instance_uid=sop, sop_class_uid=MRImageStorage,
                                 transfer_syntax_uid=ExplicitVRLittleEndian, path=f"{study_uid}/{sop}.dcm", size=1,
                                 sha256=generate_uid()[-64:].rjust(64, "0")))
            if b == 1000:
                b1000.append((z, sop))
    analysed = [sop for _, sop in sorted(b1000)]
    results = tmp_path / "dwi"
    results.mkdir()
    mask = np.zeros((3, 32, 32), dtype=bool)
    mask[1, 10:20, 10:20] = True
    save_masks(masks_path(results), analysed, [ModelOutput("infarct", "1.0.0", (), {"infarct": mask})])
    with transaction(seeded.sessions) as s:
        series = Series(series_instance_uid=series_uid, modality="MR", state="complete")
        series.instances.extend(rows)
        series.jobs.append(Job(version=1, state="delivered", pipeline="mr_dwi", results_dir=str(results),
                               **{k: generate_uid() for k in ("seg_series_uid", "seg_sop_uid", "sr_series_uid",
                                                             "sr_sop_uid", "map_series_uid", "map_sop_uid")}))
        study = Study(study_instance_uid=study_uid)
        study.series.append(series)
        s.add(study)
        s.flush()
        job_id = series.jobs[0].id
    view = load_series_view(seeded.sessions, seeded.spool_dir, job_id)
    assert view.sop_uids == analysed and view.windows == ("auto",)
    assert sorted(view.outline_planes) == [1]
    top, bottom = (np.asarray(Image.open(io.BytesIO(render_layer(view, i, "image", "auto")))) for i in (2, 0))
    assert top.shape == (32, 32) and top.mean() > bottom.mean()  # one window for the series, not one per slice
