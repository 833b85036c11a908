"""Coding of finding labels, sites, laterality and priority."""

from __future__ import annotations

import pytest

from triage_node.results import codes


def test_known_and_unknown_lesion_labels() -> None:
    assert codes.lesion_class("subarachnoid").finding_type.value == "21454007"
    assert codes.lesion_class("infarct").segment_type.value == "55641003"
    fallback = codes.lesion_class("new_thing")
    assert (fallback.finding_type, fallback.phrase) == (codes.LESION, "new thing")


def test_finding_site_parses_laterality_from_the_location_text() -> None:
    assert codes.finding_site("right thalamus", None) == (codes.SITES["thalamus"], codes.LATERALITY["right"])
    assert codes.finding_site("frontal lobe", "left") == (codes.SITES["frontal lobe"], codes.LATERALITY["left"])
    assert codes.finding_site(None, "bilateral") == (codes.BRAIN, codes.LATERALITY["bilateral"])
    assert codes.finding_site("somewhere odd", None) == (codes.BRAIN, None)
    assert codes.finding_site(None, None) is None


def test_every_atlas_region_has_a_site_code() -> None:
    from triage_node.inference.atlas import REGION_NAMES

    assert set(REGION_NAMES.values()) <= set(codes.SITES)


def test_priority_codes() -> None:
    assert codes.priority_code("critical").value == "25876001"
    with pytest.raises(ValueError, match=r"priority must be one of \['critical', 'none', 'routine', 'urgent'\]"):
        codes.priority_code("stat")
