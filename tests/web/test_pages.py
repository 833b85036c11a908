"""The worklist page, its polled fragment, the study view, acknowledgement by form, key images."""

from __future__ import annotations

import io
import re
from urllib.parse import quote

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from web_fixtures import PATIENT_ID, T0, USER, Clock, Seeded, login

from triage_node.config import Config
from triage_node.web import WebContext, create_app
from triage_node.worklist.db import transaction
from triage_node.worklist.models import AuditEntry, Study


def row_uids(html: str) -> list[str]:
    return re.findall(r'<tr class="study [^"]*" data-uid="([^"]+)"', html)


def test_worklist_page_lists_critical_first_with_the_columns(client: TestClient, seeded: Seeded, csrf: str) -> None:
    html = client.get("/").text
    assert row_uids(html) == [seeded.critical_uid, seeded.routine_uid]
    assert "(1) Worklist" in html  # unread critical count in the title
    first = html[html.index(f'data-uid="{seeded.critical_uid}"') : html.index(f'data-uid="{seeded.routine_uid}"')]
    for expected in (
        "flag-critical",
        "any hemorrhage <b>97%</b>",
        "4.2 ml",
        "right frontal lobe",
        "TESTPATIENT, CRITICAL",
        PATIENT_ID,
        "ACC-CRIT-1",
        "CT HEAD W/O",
        "2026-03-01 07:55",
        ">CT<",
        "1 min 05 s",
        "seg:delivered sr:pending",
        "unread",
        "status-sending",
    ):
        assert expected in first, expected
    assert 'data-poll-url="/partials/worklist"' in html
    assert 'data-poll-ms="1000"' in html


def test_filters_narrow_the_list_and_feed_the_poll_url(client: TestClient, seeded: Seeded, csrf: str) -> None:
    html = client.get("/", params={"priority": "critical", "modality": "CT"}).text
    assert row_uids(html) == [seeded.critical_uid]
    assert 'data-poll-url="/partials/worklist?priority=critical&amp;modality=CT"' in html
    assert row_uids(client.get("/", params={"state": "done"}).text) == [seeded.routine_uid]
    assert row_uids(client.get("/", params={"modality": "MR"}).text) == []
    assert client.get("/", params={"priority": "sometime"}).status_code == 422


def test_fragment_carries_rows_and_unread_count(client: TestClient, seeded: Seeded, csrf: str) -> None:
    response = client.get("/partials/worklist")
    assert response.headers["x-unread-critical"] == "1"
    assert row_uids(response.text) == [seeded.critical_uid, seeded.routine_uid]
    assert "<html" not in response.text


def test_study_page_shows_findings_key_images_and_rejected_series(
    client: TestClient, seeded: Seeded, csrf: str
) -> None:
    html = client.get(f"/studies/{seeded.critical_uid}").text
    assert "TESTPATIENT, CRITICAL" in html
    assert "right frontal lobe" in html
    image = (
        f"/studies/{seeded.critical_uid}/key-images/{seeded.critical_job_id}/{seeded.key_sop_uid}?label=any_hemorrhage"
    )
    assert f'src="{image}"' in html
    assert "localizer: ImageType contains LOCALIZER" in html
    assert 'class="state-rejected"' in html
    assert "seg: delivered, sr: pending" in html
    assert 'id="ack"' in html
    with transaction(seeded.sessions) as s:
        assert [(a.user, a.action) for a in s.scalars(select(AuditEntry).where(AuditEntry.study_id.is_not(None)))] == [
            (USER, "view")
        ]


def test_unknown_study_is_404(client: TestClient, csrf: str) -> None:
    assert client.get("/studies/1.2.3.404").status_code == 404
    assert client.post("/studies/1.2.3.404/ack", data={"csrf_token": csrf}).status_code == 404


def test_acknowledge_by_form_stores_user_time_and_audit(
    client: TestClient, seeded: Seeded, csrf: str, clock: Clock
) -> None:
    uid = seeded.critical_uid
    response = client.post(f"/studies/{uid}/ack", data={"csrf_token": csrf})
    assert response.status_code == 303
    assert response.headers["location"] == f"/studies/{quote(uid, safe='')}"
    with transaction(seeded.sessions) as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        assert (study.acknowledged_by, study.acknowledged_at) == (USER, clock.now)
        acks = s.scalars(select(AuditEntry).where(AuditEntry.action == "acknowledge")).all()
        assert [(a.user, a.study_id, a.at) for a in acks] == [(USER, study.id, clock.now)]
    page = client.get(f"/studies/{uid}").text
    assert f"acknowledged by <b>{USER}</b>" in page
    assert 'id="ack"' not in page
    assert client.get("/", params={"state": "unread"}).text.count("data-uid=") == 1


def test_key_image_is_a_png_with_outline_and_heat(client: TestClient, seeded: Seeded, csrf: str) -> None:
    url = f"/studies/{seeded.critical_uid}/key-images/{seeded.critical_job_id}/{seeded.key_sop_uid}"
    response = client.get(url, params={"label": "any_hemorrhage", "size": 64})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    rgb = np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)
    assert rgb.shape == (64, 64, 3)
    outline = (rgb[..., 0] > 240) & (rgb[..., 1] > 200) & (rgb[..., 2] < 40)
    assert outline.sum() > 10
    ys, xs = np.nonzero(outline)
    assert abs(ys.mean() - 26) < 2 and abs(xs.mean() - 38) < 2  # around the seeded lesion
    red = rgb[..., 0] - rgb[..., 2]
    assert red[26, 38] > 60  # Grad-CAM tints the lesion centre
    assert abs(int(rgb[50, 32, 0]) - int(rgb[50, 32, 2])) < 3  # grey brain away from the lesion


def test_key_image_of_another_study_or_missing_file_is_404(client: TestClient, seeded: Seeded, csrf: str) -> None:
    wrong_study = f"/studies/{seeded.routine_uid}/key-images/{seeded.critical_job_id}/{seeded.key_sop_uid}"
    assert client.get(wrong_study).status_code == 404
    with transaction(seeded.sessions) as s:
        study = s.scalars(select(Study).where(Study.study_instance_uid == seeded.critical_uid)).one()
        path = seeded.spool_dir / study.series[0].instances[1].path
    path.unlink()
    url = f"/studies/{seeded.critical_uid}/key-images/{seeded.critical_job_id}/{seeded.key_sop_uid}"
    assert client.get(url).status_code == 404


def test_times_render_in_the_page(client: TestClient, seeded: Seeded, csrf: str) -> None:
    html = client.get(f"/studies/{seeded.critical_uid}").text
    assert T0.astimezone().strftime("%Y-%m-%d") in html


def test_a_long_list_says_that_it_is_cut(seeded: Seeded, config: Config, clock: Clock) -> None:
    ctx = WebContext(config=config, sessions=seeded.sessions, spool_dir=seeded.spool_dir, clock=clock, page_rows=1)
    with TestClient(create_app(ctx), follow_redirects=False) as client:
        login(client)
        html = client.get("/").text
        assert row_uids(html) == [seeded.critical_uid]
        assert "More studies match than are shown here" in html
        assert "More studies match" not in client.get("/", params={"priority": "critical"}).text
