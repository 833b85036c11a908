"""Inference precision: ``auto`` resolves by CPU capability, and bf16 autocast stays close to float32."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from triage_node.inference.card import ModelCard
from triage_node.inference.ich import IchAnalyzer
from triage_node.inference.precision import native_bf16, resolve
from triage_node.inference.segmenter import CropGridSegmenter
from triage_node.preprocess.volume import Volume


def test_resolve() -> None:
    assert resolve("fp32") == "fp32"
    assert resolve("bf16") == "bf16"
    assert resolve("auto") == ("bf16" if native_bf16() else "fp32")
    assert resolve("auto", "cuda") == "fp32"
    with pytest.raises(ValueError, match="precision must be auto, fp32, bf16 or int8"):
        resolve("fp16")


def test_bf16_ich_probabilities_close_to_fp32(tiny_ich_dir: Path, phantom_volume: Volume) -> None:
    card = ModelCard.load(tiny_ich_dir / "model.yaml")
    fp32 = IchAnalyzer(card, precision="fp32").slice_probabilities(phantom_volume.pixels)
    bf16 = IchAnalyzer(card, precision="bf16")
    assert bf16.precision == "bf16"
    p = bf16.slice_probabilities(phantom_volume.pixels)
    assert p.dtype == np.float32
    assert np.abs(p - fp32).max() < 0.02


def test_bf16_segmenter_probabilities_close_to_fp32(tiny_seg_dir: Path, phantom_volume: Volume) -> None:
    card = ModelCard.load(tiny_seg_dir / "model.yaml")
    fp32, _ = CropGridSegmenter(card, precision="fp32").probabilities(phantom_volume.pixels)
    bf16, _ = CropGridSegmenter(card, precision="bf16").probabilities(phantom_volume.pixels)
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - fp32).mean() < 0.01
