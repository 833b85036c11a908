"""Declarative routing: the first rule in config order whose every condition holds picks the series' pipeline."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.dataset import Dataset

from triage_node.config import Match, RoutingRule


@dataclass(frozen=True)
class SeriesAttributes:
    """The attributes rules look at, taken from one representative instance of the series."""

    modality: str = ""
    body_part: str = ""
    study_description: str = ""
    series_description: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    image_type: tuple[str, ...] = ()
    b_values: tuple[float, ...] = ()

    @classmethod
    def from_datasets(cls, datasets: list[Dataset]) -> SeriesAttributes:
        first = datasets[0]
        image_type: list[str] = []
        b_values: set[float] = set()
        seq_name = str(first.get("SequenceName", "") or first.get("PulseSequenceName", "") or "")
        for ds in datasets:
            for v in ds.get("ImageType", []) or []:
                if str(v).upper() not in image_type:
                    image_type.append(str(v).upper())
            b = b_value(ds)
            if b is not None:
                b_values.add(b)
        return cls(
            modality=str(first.get("Modality", "") or ""),
            body_part=str(first.get("BodyPartExamined", "") or ""),
            study_description=str(first.get("StudyDescription", "") or ""),
            series_description=str(first.get("SeriesDescription", "") or ""),
            protocol_name=str(first.get("ProtocolName", "") or ""),
            sequence_name=seq_name,
            image_type=tuple(image_type),
            b_values=tuple(sorted(b_values)),
        )


def b_value(ds: Dataset) -> float | None:
    """The diffusion b-value: the standard tag, then the common vendor tags (GE, Siemens, Philips)."""
    candidates = [
        ds.get((0x0018, 0x9087)),
        ds.get((0x0043, 0x1039)),
        ds.get((0x0019, 0x100C)),
        ds.get((0x2001, 0x1003)),
    ]
    for elem in candidates:
        if elem is None or elem.value in (None, b"", ""):
            continue
        value = elem.value
        try:
            if isinstance(value, bytes):
                value = value.decode("ascii", "ignore").split("\\")[0]
            if isinstance(value, list | tuple) or hasattr(value, "__iter__") and not isinstance(value, str):
                value = list(value)[0]
            b = float(value)
        except (TypeError, ValueError, IndexError):
            continue
        if b > 1e6:  # GE stores b + 1e9 in its first value
            b = b % 1e9
        return b
    return None


def _search(pattern: str | None, value: str) -> bool:
    return pattern is None or re.search(pattern, value, flags=re.IGNORECASE) is not None


def matches(match: Match, attrs: SeriesAttributes) -> bool:
    if match.modality and attrs.modality.upper() not in {m.upper() for m in match.modality}:
        return False
    if not (
        _search(match.body_part, attrs.body_part)
        and _search(match.study_description, attrs.study_description)
        and _search(match.series_description, attrs.series_description)
        and _search(match.protocol_name, attrs.protocol_name)
        and _search(match.sequence_name, attrs.sequence_name)
    ):
        return False
    if match.image_type_contains and not all(t.upper() in attrs.image_type for t in match.image_type_contains):
        return False
    if any(t.upper() in attrs.image_type for t in match.image_type_excludes):
        return False
    return not (match.min_b_value is not None and not any(b >= match.min_b_value for b in attrs.b_values))


def route(rules: tuple[RoutingRule, ...], attrs: SeriesAttributes) -> RoutingRule | None:
    """The first rule that fits, or None."""
    return next((r for r in rules if matches(r.match, attrs)), None)


def describe(attrs: SeriesAttributes) -> str:
    """A one-line, PHI-free summary for the 'no rule matched' reason."""
    image_type = "\\".join(attrs.image_type) or "-"
    return (
        f"modality={attrs.modality or '-'} body_part={attrs.body_part or '-'} "
        f"series_description={attrs.series_description or '-'!r} image_type={image_type}"
    )
