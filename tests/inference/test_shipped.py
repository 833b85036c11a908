"""The shipped CT models: weights match their cards, load, flag a synthetic bleed and pass normal heads (the MNI
pseudo-CT and the real invesalius head, whose hyperdense structures drew false positives before the segmenter's
post-processing was tuned with a false-positive budget)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from triage_lab.synth.cases import CTCase, make_ct_case
from triage_node.inference.card import ModelCard, sha256_file
from triage_node.inference.registry import load_analyzers

from .conftest import make_volume

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def analyzers():  # type: ignore[no-untyped-def]
    return load_analyzers(MODELS, ["ich", "ct_segmenter"], threads=2)


@pytest.fixture(scope="module")
def positive() -> CTCase:
    # Held-out seed range (900 000+), never used in training.
    return make_ct_case(900_900, ("subdural", "intraparenchymal"), source="mni", n_slices=24)


@pytest.fixture(scope="module")
def negative() -> CTCase:
    return make_ct_case(900_901, (), source="mni", n_slices=24)


@pytest.mark.parametrize("name", ["ich", "ct_segmenter", "cmb", "infarct"])
def test_card_hash_matches_weights(name: str) -> None:
    card = ModelCard.load(MODELS / name / "model.yaml")
    assert sha256_file(card.weights_path) == card.sha256
    assert card.weights_path.stat().st_size < 20_000_000
    assert "not for clinical use" in card.limitations.lower()
    assert "synthetic" in card.limitations.lower()


def test_ich_flags_positive_and_passes_negative(analyzers, positive: CTCase, negative: CTCase) -> None:  # type: ignore[no-untyped-def]
    ich = analyzers["ich"]
    pos = {f.label: f for f in ich.analyze(make_volume(positive.hu, positive.spacing)).findings}
    assert pos["any_hemorrhage"].present
    assert set(pos["any_hemorrhage"].key_slices) & set(np.flatnonzero(positive.labels[:, 0]).tolist())
    neg = {f.label: f for f in ich.analyze(make_volume(negative.hu, negative.spacing)).findings}
    assert not neg["any_hemorrhage"].present


def test_segmenter_outlines_positive_and_passes_negative(analyzers, positive: CTCase, negative: CTCase) -> None:  # type: ignore[no-untyped-def]
    seg = analyzers["ct_segmenter"]
    out = seg.analyze(make_volume(positive.hu, positive.spacing))
    mask = out.masks["hemorrhage"]
    assert out.findings[0].present and out.findings[0].volume_ml > 1.0
    assert (mask & positive.hemorrhage).sum() > 0.5 * mask.sum()  # mostly on true blood
    out = seg.analyze(make_volume(negative.hu, negative.spacing))
    assert not out.findings[0].present and not out.masks["hemorrhage"].any()


@pytest.mark.parametrize("seed", [900_902, 900_903, 900_904])
def test_segmenter_passes_the_real_head_without_bleed(analyzers, seed: int) -> None:  # type: ignore[no-untyped-def]
    """Normal invesalius heads at their drawn slice count (5, 2.5 and 3 mm slices): the post-processing before the
    false-positive budget (gate 0.5, segmentation 0.5, 3 components >= 30 mm^2) left false components of 0.83, 0.26
    and 0.25 ml on these three; the tuned rule leaves nothing. The legacy rendering (the one ct_segmenter 1.2.0 was
    trained on): on randomised heads full of calcification mimics it marks some of them, which is one reason it only
    runs behind the ich gate (models.gates)."""
    case = make_ct_case(seed, (), source="invesalius", profile="legacy")
    out = analyzers["ct_segmenter"].analyze(make_volume(case.hu, case.spacing))
    assert not out.findings[0].present
    assert not out.masks["hemorrhage"].any()
