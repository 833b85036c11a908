"""The radiologist's loop in a real browser (Debian's Chromium driven by Playwright against the app under uvicorn):
log in, open a flagged study, scroll through its whole series with the wheel and the arrow keys (every slice change
drawn within 100 ms), toggle the outline and the heat map, switch the window preset, give a disagree verdict, see it on
the worklist, open /performance and find the PPV computed from the database. Screenshots go to test-output/web/."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select, text
from web_fixtures import OUTPUT, PASSWORD, T0, USER, Clock, Seeded

from triage_node.inference.types import ModelOutput
from triage_node.performance.stats import wilson
from triage_node.results.masks import masks_path, save_masks
from triage_node.worklist.db import transaction
from triage_node.worklist.models import AuditEntry, FindingRow, Instance, Job, Series, Study, Verdict

N, SIZE = 24, 256
LESION = range(9, 14)
MAX_SLICE_CHANGE_MS = 100.0


@pytest.fixture
def web_backend() -> str:
    """PostgreSQL only, not both: the slow browser run is not doubled (the whole suite's time), and every query it
    makes runs on SQLite too in test_pages, test_api and test_review."""
    return "postgresql"


def _slice(z: int) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r = np.hypot(yy - SIZE / 2, xx - SIZE / 2)
    hu = np.full((SIZE, SIZE), -1000.0)
    radius = 110 - abs(z - N / 2) * 2.5
    hu[r < radius] = 1000.0
    hu[r < radius - 10] = 32.0 + (xx[r < radius - 10] % 7)
    if z in LESION:
        hu[np.hypot(yy - 100, xx - 150) < 18] = 72.0
    return hu


def add_flagged_series(seeded: Seeded) -> tuple[str, int]:
    """A critical CT study with a 24-slice 256x256 series, a hemorrhage on slices 9-13, its masks.npz and findings."""
    study_uid, series_uid = generate_uid(), generate_uid()
    sops = [generate_uid() for _ in range(N)]
    folder = seeded.spool_dir / study_uid / series_uid
    folder.mkdir(parents=True)
    for z, sop in enumerate(sops):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = study_uid, series_uid, "CT"
        ds.PatientName, ds.PatientID = "VIEWER^PATIENT", "PHI-88001"
        ds.InstanceNumber = N - z  # instance numbers run the other way: the viewer must sort by position
        ds.ImagePositionPatient = [0.0, 0.0, float(z * 5)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [0.9, 0.9], 5.0
        ds.Manufacturer, ds.ConvolutionKernel = "SIEMENS", "Hr38"
        ds.Rows = ds.Columns = SIZE
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit, ds.PixelRepresentation = 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (_slice(z) + 1024).astype(np.int16).tobytes()
        ds.save_as(folder / f"{sop}.dcm", enforce_file_format=True)
    results = seeded.spool_dir / "results" / "job-viewer"
    results.mkdir(parents=True)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    mask = np.zeros((N, SIZE, SIZE), dtype=bool)
    heat = np.zeros((N, SIZE, SIZE), dtype=np.uint8)
    for z in LESION:
        mask[z] = np.hypot(yy - 100, xx - 150) < 18
        heat[z] = np.clip(255 - 4 * np.hypot(yy - 100, xx - 150), 0, 255).astype(np.uint8)
    save_masks(masks_path(results), sops,
               [ModelOutput("ich", "1.0.0", (), {"hemorrhage": mask}, {"any_hemorrhage": (heat + 0.5) / 255.0})])
    with transaction(seeded.sessions) as s:
        study = Study(study_instance_uid=study_uid, patient_name="VIEWER^PATIENT", patient_id="PHI-88001",
                      accession_number="ACC-VIEW", study_description="CT HEAD", priority="critical",
                      flagged_at=T0 + dt.timedelta(minutes=3), first_received_at=T0 + dt.timedelta(minutes=2),
                      last_received_at=T0 + dt.timedelta(minutes=2))
        series = Series(series_instance_uid=series_uid, modality="CT", series_number=3, series_description="HEAD 5mm",
                        received_instances=N, state="complete", last_received_at=T0 + dt.timedelta(minutes=2))
        for z, sop in enumerate(sops):
            series.instances.append(Instance(
                sop_instance_uid=sop, sop_class_uid=CTImageStorage, transfer_syntax_uid=ExplicitVRLittleEndian,
                instance_number=N - z, path=f"{study_uid}/{series_uid}/{sop}.dcm", size=1, sha256=f"{z + 100:064d}"))
        uids = {k: generate_uid() for k in ("seg_series_uid", "seg_sop_uid", "sr_series_uid", "sr_sop_uid",
                                             "map_series_uid", "map_sop_uid")}
        job = Job(version=1, state="delivered", pipeline="ct_head", instances=N, slices_kept=N, slices_dropped=0,
                  priority="critical", flagged_at=study.flagged_at, last_instance_at=T0 + dt.timedelta(minutes=2),
                  results_dir=str(results), **uids)
        job.findings.append(FindingRow(label="any_hemorrhage", present=True, probability=0.93, model="ich",
                                       model_version="1.0.0", key_slices=[11, 10],
                                       key_sop_uids=[sops[11], sops[10]]))
        job.findings.append(FindingRow(label="subdural", present=False, probability=0.05, model="ich",
                                       model_version="1.0.0"))
        series.jobs.append(job)
        study.series.append(series)
        s.add(study)
        s.flush()
        return study_uid, job.id


def ppv_from_database(seeded: Seeded, model: str) -> tuple[int, int]:
    """(agreed, agreed + disagreed) over the latest verdict per (job, label, model) on the model's present calls."""
    with transaction(seeded.sessions) as s:
        rows = s.execute(text(
            "select v.verdict from verdicts v where v.present = true and v.model = :m and v.id = ("
            " select v2.id from verdicts v2 where v2.job_id = v.job_id and v2.label = v.label and v2.model = v.model"
            " order by v2.at desc, v2.id desc limit 1)"), {"m": model}).scalars().all()
    agree = sum(1 for r in rows if r == "agree")
    return agree, agree + sum(1 for r in rows if r == "disagree")


def canvas_pixels(page: Any) -> dict[str, int]:
    """Yellow (outline) and strongly coloured (heat map) pixels on the viewer's canvas."""
    return page.evaluate("""() => {
      const c = document.getElementById('viewer-canvas');
      const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let yellow = 0, colour = 0;
      for (let i = 0; i < d.length; i += 4) {
        const r = d[i], g = d[i + 1], b = d[i + 2];
        if (r > 240 && g > 200 && b < 40) yellow++;
        else if (Math.max(r, g, b) - Math.min(r, g, b) > 60) colour++;
      }
      return {yellow, colour};
    }""")


@pytest.mark.timeout(300)
def test_viewer_verdict_and_performance_in_chromium(
    browser: Any, base_url: str, seeded: Seeded, clock: Clock  # fixtures
) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    uid, job_id = add_flagged_series(seeded)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    requested: list[str] = []
    page.on("request", lambda r: requested.append(r.url))

    page.goto(f"{base_url}/studies/{uid}")
    assert "/login" in page.url
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"**/studies/{uid}")

    # Another study's flag gets an agree first (through the JSON API, as an integration would), so PPV is not trivial.
    csrf = page.request.get(f"{base_url}/api/session").json()["csrf_token"]
    r = page.request.post(f"{base_url}/api/studies/{seeded.critical_uid}/verdicts", headers={"X-CSRF-Token": csrf},
                          data={"job_id": seeded.critical_job_id, "verdict": "agree", "label": "any_hemorrhage",
                                "model": "ich"})
    assert r.ok, r.text()

    # The viewer opens on the first key slice once every slice is loaded.
    page.wait_for_selector("#viewer[data-ready='1']")
    page.wait_for_function(f"() => document.getElementById('viewer-canvas').dataset.loaded === '{N}'", timeout=60000)
    canvas = page.locator("#viewer-canvas")
    assert canvas.get_attribute("data-index") == "11"
    assert canvas.get_attribute("data-window") == "brain"
    page.screenshot(path=str(OUTPUT / "viewer.png"), full_page=True)

    def index() -> int:
        return int(canvas.get_attribute("data-index") or -1)

    def wait_index(i: int) -> None:
        page.wait_for_function(f"() => document.getElementById('viewer-canvas').dataset.index === '{i}'", timeout=5000)

    page.evaluate("window.__viewer.timings = []")
    canvas.scroll_into_view_if_needed()
    canvas.focus()
    page.keyboard.press("Home")
    wait_index(0)
    # Scroll through the whole series with the wheel, then back with the arrow keys.
    box = canvas.bounding_box()
    assert box is not None
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for i in range(1, N):
        page.mouse.wheel(0, 120)
        wait_index(i)
    page.mouse.wheel(0, 120)  # past the end: stays on the last slice
    assert index() == N - 1
    for i in range(N - 2, -1, -1):
        page.keyboard.press("ArrowUp")
        wait_index(i)
    timings = page.evaluate("window.__viewer.timings")
    (OUTPUT / "viewer-timings.json").write_text(json.dumps({"slice_change_ms": timings}))
    assert len(timings) >= 2 * (N - 1), timings
    assert max(timings) <= MAX_SLICE_CHANGE_MS, f"slowest slice change {max(timings):.1f} ms: {timings}"

    # Jump to the finding, toggle the overlays.
    page.click("#viewer-jumps button.jump-finding")
    wait_index(10)
    page.wait_for_function("() => { const v = window.__viewer; return ['outline:10', 'heat:10'].every("
                           "k => v.overlays[k] && v.overlays[k].complete); }")
    page.evaluate("window.__viewer.timings = []; window.__viewer.pending = null")
    canvas.focus()
    page.keyboard.press("ArrowDown")
    wait_index(11)
    page.keyboard.press("ArrowUp")
    wait_index(10)
    with_outline = canvas_pixels(page)
    assert with_outline["yellow"] > 50, with_outline
    page.uncheck("#toggle-outline")
    page.wait_for_function("() => document.getElementById('viewer-canvas').dataset.outline === '0'")
    assert canvas_pixels(page)["yellow"] == 0
    page.check("#toggle-heat")
    page.wait_for_function("() => document.getElementById('viewer-canvas').dataset.heat === '1'")
    assert canvas_pixels(page)["colour"] > 500
    page.check("#toggle-outline")
    page.screenshot(path=str(OUTPUT / "viewer-overlays.png"), full_page=True)

    # Window presets: bone redraws the same slice from new images.
    page.click("#window-bone")
    page.wait_for_function("() => document.getElementById('viewer-canvas').dataset.window === 'bone'",
                           timeout=20000)
    assert index() == 10
    page.wait_for_function(f"() => Object.values(window.__viewer.images.bone).filter(i => i.complete).length === {N}",
                           timeout=60000)
    page.evaluate("window.__viewer.timings = []")
    canvas.focus()
    for _ in range(3):
        page.keyboard.press("ArrowDown")
    wait_index(13)
    assert max(page.evaluate("window.__viewer.timings")) <= MAX_SLICE_CHANGE_MS
    page.screenshot(path=str(OUTPUT / "viewer-bone.png"), full_page=True)
    viewer_urls = [u for u in requested if "/viewer/" in u]
    assert viewer_urls and all(uid not in u and "PHI" not in u and "VIEWER" not in u for u in viewer_urls)

    # Disagree with the flag.
    form = page.locator("form.verdict-form[data-label='any_hemorrhage']")
    form.locator("input[value=disagree]").check()
    form.locator("input[name=comment]").fill("calcified falx, no blood")
    form.locator("button[type=submit]").click()
    page.wait_for_selector(".verdict-current.verdict-disagree")
    page.screenshot(path=str(OUTPUT / "verdict.png"), full_page=True)
    with transaction(seeded.sessions) as s:
        study_id = s.scalars(select(Study.id).where(Study.study_instance_uid == uid)).one()
        v = s.scalars(select(Verdict).where(Verdict.study_id == study_id)).one()
        assert (v.verdict, v.user, v.label, v.model, v.job_id, v.at) == (
            "disagree", USER, "any_hemorrhage", "ich", job_id, clock.now)
        assert v.comment == "calcified falx, no blood"
        assert s.scalars(select(AuditEntry).where(AuditEntry.study_id == study_id,
                                                  AuditEntry.action == "verdict")).one().user == USER

    # The worklist shows the rejected flag apart from the confirmed one.
    page.goto(f"{base_url}/")
    assert page.get_attribute(f'tr[data-uid="{uid}"]', "data-verdict") == "rejected"
    assert page.get_attribute(f'tr[data-uid="{seeded.critical_uid}"]', "data-verdict") == "confirmed"
    page.screenshot(path=str(OUTPUT / "worklist-verdicts.png"), full_page=True)

    # /performance: the PPV equals the one computed from the verdicts table.
    page.click("#nav-performance")
    page.wait_for_url("**/performance")
    row = page.locator('tr.perf-model[data-model="ich"][data-mode="live"]')
    k, n = ppv_from_database(seeded, "ich")
    assert (k, n) == (1, 2)
    assert int(row.get_attribute("data-ppv-k") or -1) == k and int(row.get_attribute("data-ppv-n") or -1) == n
    assert float(row.get_attribute("data-ppv") or "nan") == pytest.approx(k / n)
    low, high = wilson(k, n) or (0.0, 0.0)
    assert f"{k / n:.2f} ({low:.2f}–{high:.2f})" in row.locator("td.ppv").inner_text()
    assert page.locator("svg").count() > 3
    page.screenshot(path=str(OUTPUT / "performance.png"), full_page=True)
    assert not [u for u in requested if u.startswith("http") and not u.startswith(base_url)], "CDN?"
    assert errors == [], f"browser console errors: {errors}"
    context.close()

