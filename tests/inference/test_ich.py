"""The ich analyzer with tiny random weights: aggregation, thresholds, key slices, Grad-CAM alignment."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pytest

from triage_lab.synth.cases import CLASSES
from triage_node.inference import slices
from triage_node.inference.card import ModelCard
from triage_node.inference.ich import IchAnalyzer, aggregate, key_slices
from triage_node.preprocess.volume import Volume


def test_aggregate_and_key_slices() -> None:
    p = np.array([[0.1, 0.9], [0.8, 0.2], [0.6, 0.1]])
    assert np.allclose(aggregate(p, "max"), [0.8, 0.9])
    assert np.allclose(aggregate(p, "top2_mean"), [0.7, 0.55])
    assert aggregate(np.zeros((0, 6)), "max").shape == (6,)
    assert key_slices(p[:, 0], 0.5) == (1, 2)
    with pytest.raises(ValueError, match="aggregation must be"):
        aggregate(p, "median")


def test_analyze_shapes_and_labels(tiny_ich_dir: Path, phantom_volume: Volume) -> None:
    an = IchAnalyzer(ModelCard.load(tiny_ich_dir / "model.yaml"))
    out = an.analyze(phantom_volume)
    assert [f.label for f in out.findings] == list(CLASSES)
    assert out.model == "ich" and out.model_version == "0.0.1"
    for f in out.findings:
        assert 0.0 <= f.probability <= 1.0
        assert f.present == (f.probability >= an.card.thresholds[f.label] and out.findings[0].present)
        assert all(0 <= z < phantom_volume.pixels.shape[0] for z in f.key_slices)


def test_threshold_zero_flags_and_heatmap_is_aligned(tiny_ich_dir: Path, phantom_volume: Volume) -> None:
    card = ModelCard.load(tiny_ich_dir / "model.yaml")
    card = dataclasses.replace(card, thresholds=MappingProxyType(dict.fromkeys(CLASSES, 0.0)))
    out = IchAnalyzer(card).analyze(phantom_volume)
    assert all(f.present for f in out.findings)
    assert out.findings[0].key_slices  # every slice reaches threshold 0
    heat = out.heatmaps["any_hemorrhage"]
    assert heat.shape == phantom_volume.pixels.shape
    assert heat.dtype == np.float32
    assert heat.min() >= 0.0 and heat.max() <= 1.0


def test_threshold_one_flags_nothing(tiny_ich_dir: Path, phantom_volume: Volume) -> None:
    card = ModelCard.load(tiny_ich_dir / "model.yaml")
    card = dataclasses.replace(card, thresholds=MappingProxyType(dict.fromkeys(CLASSES, 1.0)))
    out = IchAnalyzer(card).analyze(phantom_volume)
    assert not any(f.present for f in out.findings)
    assert out.heatmaps == {}
    assert all(f.key_slices == () for f in out.findings)


def test_a_subtype_is_present_only_on_a_flagged_series(tiny_ich_dir: Path, phantom_volume: Volume) -> None:
    """Subtypes qualify the any-hemorrhage flag: below the any threshold no subtype is shown, whatever its score."""
    card = ModelCard.load(tiny_ich_dir / "model.yaml")
    card = dataclasses.replace(card, thresholds=MappingProxyType({CLASSES[0]: 1.0, **dict.fromkeys(CLASSES[1:], 0.0)}))
    out = IchAnalyzer(card).analyze(phantom_volume)
    assert not any(f.present for f in out.findings)
    assert all(f.probability > 0.0 for f in out.findings[1:])  # the scores are still recorded


def test_a_series_noisier_than_the_training_data_is_smoothed_before_the_network(
    tiny_ich_dir: Path, phantom_volume: Volume, caplog: pytest.LogCaptureFixture
) -> None:
    """``input.noise_hu_max`` (the training cases' noise, written by ``tune-postprocess ich --noise-from-train``):
    a series above it reaches the network smoothed back within it, one within it unchanged; no limit, no change."""
    card = ModelCard.load(tiny_ich_dir / "model.yaml")
    assert IchAnalyzer(card).noise_limit is None
    hu = phantom_volume.pixels
    assert IchAnalyzer(card).prepared(hu) is hu
    size = int(card.input["size"])
    noisy = hu + np.random.default_rng(0).normal(0, 60, hu.shape).astype(np.float32) * (hu > -500)
    before = slices.noise_hu(noisy, size)
    limit = before / 3
    an = IchAnalyzer(dataclasses.replace(card, input=MappingProxyType({**card.input, "noise_hu_max": limit})))
    assert an.prepared(hu) is hu or slices.noise_hu(hu, size) > limit
    with caplog.at_level("INFO", logger="triage_node.inference.slices"):
        smoothed = an.prepared(noisy)
    assert slices.noise_hu(smoothed, size) <= limit < before
    assert "above the" in caplog.text and "smoothed in-plane" in caplog.text
    assert an.analyze(dataclasses.replace(phantom_volume, pixels=noisy)).findings[0].label == "any_hemorrhage"
