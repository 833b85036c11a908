"""What a notification says (pure formatting)."""

from __future__ import annotations

import datetime as dt

from triage_node.notify.message import (
    Alert,
    AlertFinding,
    PatientInfo,
    email_text,
    json_payload,
    slack_payload,
    teams_payload,
)

PATIENT = PatientInfo("DOE^JANE", "PID-1", "ACC-1", "CT HEAD", "20260301", "1.2.3.4")


def alert(*findings: AlertFinding) -> Alert:
    return Alert(
        priority="critical",
        study_ref=7,
        job_id=3,
        flagged_at=dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC),
        modality="CT",
        pipeline="ct_head",
        findings=findings,
        patient=PATIENT,
    )


def test_finding_description_lists_what_is_known() -> None:
    assert AlertFinding("any_hemorrhage", 0.974, 4.25, "right frontal lobe").describe() == (
        "any hemorrhage: 97%, 4.2 ml, right frontal lobe"
    )
    assert AlertFinding("microbleed", 0.8, count=3).describe() == "microbleed: 80%, n=3"


def test_title_names_the_top_finding_and_the_study_ref() -> None:
    a = alert(AlertFinding("infarct", 0.9), AlertFinding("any_hemorrhage", 0.5))
    assert a.title == "CRITICAL: infarct (+1 more), study ref 7"
    assert alert().title == "CRITICAL: flagged study, study ref 7"


def test_no_phi_anywhere_unless_asked() -> None:
    a = alert(AlertFinding("infarct", 0.9, 12.0, "left MCA territory"))
    texts = [
        str(json_payload(a, False)),
        str(slack_payload(a, False)),
        str(teams_payload(a, False)),
        "".join(email_text(a, False)),
    ]
    for text in texts:
        assert not any(p in text for p in ("DOE", "PID-1", "ACC-1", "1.2.3.4"))
    with_phi = [
        str(json_payload(a, True)),
        str(slack_payload(a, True)),
        str(teams_payload(a, True)),
        "".join(email_text(a, True)),
    ]
    for text in with_phi:
        assert "PID-1" in text and "ACC-1" in text


def test_json_payload_shape() -> None:
    body = json_payload(alert(AlertFinding("infarct", 0.9, 12.0, "left MCA territory")), include_phi=False)
    assert body == {
        "event": "triage_node.flagged",
        "priority": "critical",
        "title": "CRITICAL: infarct, study ref 7",
        "study_ref": 7,
        "job_id": 3,
        "flagged_at": "2026-03-01T08:00:00Z",
        "modality": "CT",
        "pipeline": "ct_head",
        "findings": [
            {"label": "infarct", "probability": 0.9, "volume_ml": 12.0, "location": "left MCA territory", "count": None}
        ],
    }
