"""Display filters."""

from __future__ import annotations

import pytest

from triage_node.web.templating import dicom_datetime, duration, person_name


@pytest.mark.parametrize(
    ("pn", "shown"),
    [
        ("DOE^JANE", "DOE, JANE"),
        ("DOE^JANE^M^DR", "DOE, JANE"),
        ("DOE", "DOE"),
        ("Yamada^Tarou=山田^太郎", "Yamada, Tarou"),
        (None, "-"),
        ("", "-"),
    ],
)
def test_person_name(pn: str | None, shown: str) -> None:
    assert person_name(pn) == shown


def test_dicom_datetime() -> None:
    assert dicom_datetime("20260301", "075512.123") == "2026-03-01 07:55"
    assert dicom_datetime("20260301", None) == "2026-03-01"
    assert dicom_datetime(None, None) == "-"


@pytest.mark.parametrize(("s", "shown"), [(None, "-"), (42.4, "42 s"), (65, "1 min 05 s"), (7830, "2 h 10 min")])
def test_duration(s: float | None, shown: str) -> None:
    assert duration(s) == shown
