"""Jinja2 filters that turn contract values into what a radiologist reads (local times, names, durations)."""

from __future__ import annotations

import datetime as dt

from jinja2 import Environment

from triage_node.worklist.queries import format_delivery, format_finding


def local_time(iso: str | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """An ISO 8601 UTC string in the server's local time zone; ``-`` when absent."""
    if not iso:
        return "-"
    try:
        return dt.datetime.fromisoformat(iso).astimezone().strftime(fmt)
    except ValueError:
        return iso


def person_name(pn: str | None) -> str:
    """DICOM PN ``DOE^JANE^^DR`` -> ``DOE, JANE``; ideographic/phonetic groups after ``=`` are dropped."""
    if not pn:
        return "-"
    parts = [p.strip() for p in pn.split("=")[0].split("^")]
    family, given = (parts + ["", ""])[:2]
    return ", ".join(p for p in (family, given) if p) or "-"


def dicom_datetime(date: str | None, time: str | None) -> str:
    """DICOM DA + TM -> ``YYYY-MM-DD HH:MM``, as much as is present."""
    out = ""
    if date and len(date) == 8 and date.isdigit():
        out = f"{date[:4]}-{date[4:6]}-{date[6:]}"
    if time and len(time) >= 4 and time[:4].isdigit():
        out = f"{out} {time[:2]}:{time[2:4]}".strip()
    return out or "-"


def duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 10 min``; ``-`` when absent."""
    if seconds is None:
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def seconds(value: float | None) -> str:
    """``0.84 s``, ``12.1 s``, then as ``duration``; ``-`` when absent."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f} s"
    if value < 60:
        return f"{value:.1f} s"
    return duration(value)


def pretty_label(label: str) -> str:
    return label.replace("_", " ")


def add_filters(env: Environment) -> None:
    env.filters.update(
        local_time=local_time,
        person_name=person_name,
        dicom_datetime=dicom_datetime,
        duration=duration,
        seconds=seconds,
        pretty_label=pretty_label,
        finding=format_finding,
        delivery=format_delivery,
    )
