"""The shipped MR models load through the registry like the daemon loads them, match their sha256, and pass synthetic
negatives: an SWI without microbleeds, a DWI without infarct (held-out seeds, never used in training). Their weights'
sha256 is checked with the CT models' in test_shipped.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from triage_lab.synth.mr import dwi_volume, make_dwi_case, make_swi_case, swi_volume
from triage_lab.training.mr_cmb import SPLIT_BASE as CMB_SPLIT
from triage_lab.training.mr_infarct import SPLIT_BASE as INFARCT_SPLIT
from triage_node.inference.card import ModelCard
from triage_node.inference.registry import load_analyzers

MODELS = Path(__file__).resolve().parents[2] / "models"
# Test-range seeds past the ones the cards' evaluations used (cmb 200000-200039, infarct negatives 300000-300009).
SWI_NEGATIVE_SEEDS = (CMB_SPLIT["test"] + 100, CMB_SPLIT["test"] + 101)
DWI_NEGATIVE_SEED = INFARCT_SPLIT["test_negative"] + 50


@pytest.fixture(scope="module")
def analyzers():  # type: ignore[no-untyped-def]
    return load_analyzers(MODELS, ["cmb", "infarct"], threads=2, precision="auto")


def test_registry_builds_the_card_analyzers(analyzers) -> None:  # type: ignore[no-untyped-def]
    for name in ("cmb", "infarct"):
        card = ModelCard.load(MODELS / name / "model.yaml")
        an = analyzers[name]
        assert type(an).__module__ + ":" + type(an).__name__ == card.analyzer
        assert (an.name, an.version, an.device_uid) == (card.name, card.version, card.device_uid)


@pytest.mark.parametrize("seed", SWI_NEGATIVE_SEEDS)
@pytest.mark.parametrize("source", ["mni", "ct"])
def test_cmb_passes_an_swi_without_microbleeds(analyzers, seed: int, source: str) -> None:  # type: ignore[no-untyped-def]
    case = make_swi_case(seed, n_bleeds=0, source=source)
    assert len(case.centres) == 0
    f = analyzers["cmb"].analyze(swi_volume(case)).findings[0]
    assert f.label == "microbleed"
    assert f.count is not None and f.count <= 1  # the card's operating point allows <= 0.5 false positives a case


def test_infarct_passes_a_dwi_without_infarct(analyzers) -> None:  # type: ignore[no-untyped-def]
    case = make_dwi_case(DWI_NEGATIVE_SEED, infarct=False)
    assert not case.mask.any()
    out = analyzers["infarct"].analyze(dwi_volume(case))
    f = out.findings[0]
    assert f.label == "infarct"
    assert not f.present and f.location is None
    assert not out.masks["infarct"].any()
