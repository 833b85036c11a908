"""The crop-grid segmenter analyzer with tiny random weights: alignment, flip TTA, gating, post-processing."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import MappingProxyType

import numpy as np

from triage_node.inference.card import ModelCard
from triage_node.inference.segmenter import CropGridSegmenter, laterality
from triage_node.preprocess.volume import Volume

from .conftest import make_volume


def test_flip_tta_is_flip_equivariant(tiny_seg_dir: Path) -> None:
    an = CropGridSegmenter(ModelCard.load(tiny_seg_dir / "model.yaml"))
    an.gate_threshold = 0.0  # see the raw segmentation
    hu = np.random.default_rng(1).normal(40, 30, size=(2, 64, 64)).astype(np.float32)
    p, _ = an.probabilities(hu)
    p_flipped, _ = an.probabilities(hu[:, :, ::-1].copy())
    # Averaging f(x) with flip(f(flip(x))) makes the prediction commute with a flip of each crop; a whole-slice flip
    # also mirrors the grid, which maps crops onto crops, so the result mirrors exactly.
    assert np.allclose(p_flipped, p[:, :, ::-1], atol=1e-5)


def test_gate_zeroes_segmentation(tiny_seg_dir: Path) -> None:
    an = CropGridSegmenter(ModelCard.load(tiny_seg_dir / "model.yaml"))
    an.gate_threshold = 1.01
    p, gates = an.probabilities(np.full((2, 64, 64), 40.0, np.float32))
    assert gates.shape == (2, 16)
    assert not p.any()


def test_analyze_output_is_aligned(tiny_seg_dir: Path, phantom_volume: Volume) -> None:
    card = ModelCard.load(tiny_seg_dir / "model.yaml")
    card = dataclasses.replace(card, thresholds=MappingProxyType({"gate": 0.0, "segmentation": 0.0}),
                               postprocess=MappingProxyType({**card.postprocess, "min_area_mm2": 0.0}))
    out = CropGridSegmenter(card).analyze(phantom_volume)
    (f,) = out.findings
    mask = out.masks["hemorrhage"]
    assert mask.shape == phantom_volume.pixels.shape and mask.dtype == bool
    assert f.label == "hemorrhage" and f.present and mask.all()  # threshold 0 keeps everything: one component
    assert f.volume_ml == round(mask.sum() * phantom_volume.voxel_volume_ml, 2)
    assert len(f.key_slices) == phantom_volume.pixels.shape[0]


def test_laterality_follows_patient_axes() -> None:
    hu = np.full((2, 40, 40), -1000.0)
    hu[:, 5:35, 5:35] = 35.0
    mask = np.zeros(hu.shape, bool)
    mask[:, 15:20, 25:32] = True  # larger column index
    vol = make_volume(hu)  # row direction +x (LPS): columns increase towards the patient's left
    assert laterality(vol, mask) == "left"
    flipped = dataclasses.replace(vol, row_direction=(-1.0, 0.0, 0.0))
    assert laterality(flipped, mask) == "right"
    mask[:, 15:20, 8:15] = True
    assert laterality(vol, mask) == "bilateral"


def test_a_ct_series_noisier_than_the_training_data_is_smoothed_first(
    tiny_seg_dir: Path, phantom_volume: Volume
) -> None:
    """``input.noise_hu_max`` on a CT segmenter card: a noisier series is segmented as ``slices.match_noise`` leaves
    it, so the outline of a flagged noisy series comes from the same smoothed pixels the ich flag saw."""
    from triage_node.inference.slices import match_noise, noise_hu

    card = ModelCard.load(tiny_seg_dir / "model.yaml")
    card = dataclasses.replace(card, thresholds=MappingProxyType({**card.thresholds, "gate": 0.0}))  # every crop
    size = int(card.input["size"])
    hu = phantom_volume.pixels
    noisy = hu + np.random.default_rng(1).normal(0, 60, hu.shape).astype(np.float32) * (hu > -500)
    limit = noise_hu(noisy, size) / 3
    plain = CropGridSegmenter(card)
    limited = CropGridSegmenter(
        dataclasses.replace(card, input=MappingProxyType({**card.input, "noise_hu_max": limit}))
    )
    assert plain.noise_limit is None and limited.noise_limit == limit
    expected = plain.probabilities(match_noise(noisy, size, limit)[0])[0]
    np.testing.assert_allclose(limited.probabilities(noisy)[0], expected, atol=1e-6)
    assert not np.allclose(plain.probabilities(noisy)[0], expected, atol=1e-6)
