"""Post-processing is tuned on validation cases: the grid covers every combination and the rule chosen is the most
restrictive one near the best Dice; the card records it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from triage_node.inference.card import ModelCard
from triage_node.inference.nets import build_segmenter
from triage_node.synth.cases import make_ct_case
from triage_node.training.evaluate import tune_segmenter_postprocess, write_postprocess_to_card
from triage_node.training.seg_train import SegRecipe, write_model_dir
from triage_node.training.synthdata import write_case


@pytest.fixture
def seg_and_cache(tmp_path: Path) -> tuple[Path, Path]:
    torch.manual_seed(0)
    write_model_dir(tmp_path / "seg", build_segmenter(3, 4).state_dict(), SegRecipe(base=4, size=64),
                    {"data": "random weights"}, "0.0.1")
    cache = tmp_path / "cache"
    cache.mkdir()
    write_case(cache, 500000, make_ct_case(7, ("subdural",), "mni", n_slices=4))
    write_case(cache, 500001, make_ct_case(8, (), "mni", n_slices=4))
    return tmp_path / "seg", cache


def test_tune_postprocess_and_write_card(seg_and_cache: tuple[Path, Path]) -> None:
    model_dir, cache = seg_and_cache
    tuned = tune_segmenter_postprocess(model_dir, cache, [500000, 500001], thresholds=(0.4, 0.6),
                                       max_components=(1, 0), min_areas_mm2=(0.0, 30.0), precision="fp32")
    assert tuned["positive_cases"] == 1  # the negative case has no lesion to score
    assert len(tuned["grid"]) == 8
    best = tuned["grid"][0]["dice_mean"]
    chosen = tuned["chosen"]
    assert chosen["dice_mean"] >= best - tuned["tolerance"]
    write_postprocess_to_card(model_dir, tuned)
    card = ModelCard.load(model_dir / "model.yaml")
    assert card.thresholds["segmentation"] == chosen["threshold"]
    assert card.postprocess["max_components"] == chosen["max_components"]
    assert "500000-500001" in card.postprocess["chosen_on"]


def test_tune_needs_a_positive_case(seg_and_cache: tuple[Path, Path]) -> None:
    model_dir, cache = seg_and_cache
    with pytest.raises(ValueError, match="no positive case"):
        tune_segmenter_postprocess(model_dir, cache, [500001], precision="fp32")


def test_tune_refuses_test_seeds(seg_and_cache: tuple[Path, Path]) -> None:
    model_dir, cache = seg_and_cache
    with pytest.raises(ValueError, match="test seeds"):
        tune_segmenter_postprocess(model_dir, cache, [500000, 900000], precision="fp32")
