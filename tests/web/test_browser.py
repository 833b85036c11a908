"""The proof in a real browser: Debian's Chromium driven by Playwright against the app served by uvicorn.

Logs in, sees the synthetic critical study on top, sees a new study appear without a reload, opens the study, sees
the key image with its overlay, acknowledges it, and finds the acknowledgement in the database. Screenshots go to
``test-output/web/`` (gitignored).
"""

from __future__ import annotations

import datetime as dt
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy import select
from web_fixtures import OUTPUT, PASSWORD, PATIENT_ID, USER, Clock, Seeded

from triage_node.worklist.db import transaction
from triage_node.worklist.models import AuditEntry, Series, Study


@pytest.fixture
def web_backend() -> str:
    """PostgreSQL only, not both: the slow browser run is not doubled (the whole suite's time), and every query it
    makes runs on SQLite too in test_pages, test_api and test_review."""
    return "postgresql"


def add_urgent_study(seeded: Seeded) -> str:
    uid = generate_uid()
    with transaction(seeded.sessions) as s:
        study = Study(
            study_instance_uid=uid,
            patient_name="LATE^ARRIVAL",
            patient_id="PHI-77003",
            accession_number="ACC-URGENT",
            priority="urgent",
            flagged_at=dt.datetime(2026, 3, 1, 8, 5, tzinfo=dt.UTC),
        )
        study.series.append(Series(series_instance_uid=generate_uid(), modality="CT", state="receiving"))
        s.add(study)
    return uid


def test_radiologist_reads_and_acknowledges_a_critical_study(
    browser: Any, base_url: str, seeded: Seeded, clock: Clock
) -> None:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    # Not logged in: the worklist sends us to the login form and shows no patient data.
    page.goto(f"{base_url}/")
    assert "/login" in page.url
    assert PATIENT_ID not in page.content()
    page.fill("input[name=username]", USER)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("table#worklist tbody tr.study")

    # The critical study is on top.
    first = page.locator("table#worklist tbody tr.study").first
    assert first.get_attribute("data-uid") == seeded.critical_uid
    assert "critical" in first.inner_text().lower()
    assert PATIENT_ID in first.inner_text()

    # A study that arrives while the page is open shows up without a reload (polling).
    page.evaluate("window.__sameDocument = true")
    urgent_uid = add_urgent_study(seeded)
    page.wait_for_selector(f'tr[data-uid="{urgent_uid}"]', timeout=15000)
    assert page.evaluate("window.__sameDocument === true")
    uids = page.eval_on_selector_all("table#worklist tbody tr.study", "rows => rows.map(r => r.dataset.uid)")
    assert uids == [seeded.critical_uid, urgent_uid, seeded.routine_uid]
    page.screenshot(path=str(OUTPUT / "worklist.png"), full_page=True)

    # The study view: the key image loads and carries the lesion outline.
    first.locator("a").first.click()
    page.wait_for_url(f"**/studies/{seeded.critical_uid}")
    image = page.locator("img.key-image").first
    image.wait_for()
    page.wait_for_function(
        "() => [...document.querySelectorAll('img.key-image')].every(i => i.complete && i.naturalWidth > 0)"
    )
    png = page.request.get(f"{base_url}{image.get_attribute('src')}")
    assert png.headers["content-type"] == "image/png"
    rgb = np.asarray(Image.open(io.BytesIO(png.body())).convert("RGB")).astype(int)
    outline = (rgb[..., 0] > 240) & (rgb[..., 1] > 200) & (rgb[..., 2] < 40)
    assert outline.sum() > 20, "no lesion outline on the key image"
    assert "localizer: ImageType contains LOCALIZER" in page.content()  # the rejected series and its reason
    page.screenshot(path=str(OUTPUT / "study.png"), full_page=True)

    # Acknowledge; the page shows it and the database has it.
    page.click("#ack")
    page.wait_for_selector("#read-state >> text=acknowledged by")
    assert USER in page.inner_text("#read-state")
    page.screenshot(path=str(OUTPUT / "study-acknowledged.png"), full_page=True)
    with transaction(seeded.sessions) as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == seeded.critical_uid)).one()
        assert (study.acknowledged_by, study.acknowledged_at) == (USER, clock.now)
        audit = s.scalars(select(AuditEntry).where(AuditEntry.action == "acknowledge")).one()
        assert (audit.user, audit.study_id) == (USER, study.id)
    assert errors == [], f"browser console errors (CSP?): {errors}"
    context.close()
