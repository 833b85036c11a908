"""The int8 path: export with calibration, load with sha256 checks, results close to float32."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from triage_lab.quantize import Recorder, export_int8
from triage_lab.training.export import EXPORT_FILE
from triage_lab.training.int8_metrics import record_int8_metrics
from triage_node.inference.card import ModelCard
from triage_node.inference.errors import ModelLoadError
from triage_node.inference.ich import IchAnalyzer
from triage_node.inference.onnxrt import OrtNet
from triage_node.inference.registry import load_analyzer
from triage_node.inference.segmenter import CropGridSegmenter
from triage_node.preprocess.volume import Volume

from .conftest import make_volume


def calibration_volumes(n: int = 3) -> list[Volume]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:80, :96]
    head = np.hypot(yy - 40, xx - 48) < 30
    vols = []
    for _ in range(n):
        hu = np.where(head, rng.normal(35, 8, (6, 80, 96)), -1000.0)
        hu[:, 30:40, 55:70] += rng.uniform(0, 40)
        vols.append(make_volume(hu))
    return vols


def exported(model_dir: Path, run: Any) -> ModelCard:
    """Export ``model_dir``'s network to int8 (calibrated by ``run(analyzer)``) and record it in its card."""
    card = ModelCard.load(model_dir / "model.yaml")
    entry = export_int8(load_analyzer(card, precision="fp32"), run, model_dir / EXPORT_FILE, keep=64)
    assert entry["file"] == EXPORT_FILE and entry["from_weights_sha256"] == card.sha256
    assert 0 < entry["calibration_inputs"] <= 64
    dataclasses.replace(card, exports={"int8": entry}).save(model_dir / "model.yaml")  # type: ignore[arg-type]
    return ModelCard.load(model_dir / "model.yaml")


def test_ich_int8_close_to_fp32(tiny_ich_dir: Path, phantom_volume: Volume) -> None:
    card = exported(tiny_ich_dir, lambda an: [an.slice_probabilities(v.pixels) for v in calibration_volumes()])
    float_an = IchAnalyzer(card, precision="fp32")
    fp32 = float_an.slice_probabilities(phantom_volume.pixels)
    int8 = IchAnalyzer(card, precision="int8")
    assert int8.precision == "int8" and isinstance(int8.net, OrtNet)
    p = int8.slice_probabilities(phantom_volume.pixels)
    assert p.dtype == np.float32 and p.shape == fp32.shape
    assert np.abs(p - fp32).max() < 0.05
    # Grad-CAM needs gradients: it runs on the float torch network, as with fp32
    heat = int8.gradcam(phantom_volume.pixels, (2, 3))
    assert heat.shape == phantom_volume.pixels.shape
    assert np.allclose(heat, float_an.gradcam(phantom_volume.pixels, (2, 3)), atol=1e-5)


def test_segmenter_int8_close_to_fp32(tiny_seg_dir: Path, phantom_volume: Volume) -> None:
    card = exported(tiny_seg_dir, lambda an: [an.probabilities(v.pixels) for v in calibration_volumes()])
    fp32, g32 = CropGridSegmenter(card, precision="fp32").probabilities(phantom_volume.pixels)
    int8, g8 = CropGridSegmenter(card, precision="int8").probabilities(phantom_volume.pixels)  # two outputs: seg, gate
    assert int8.shape == fp32.shape and g8.shape == g32.shape
    assert np.abs(int8 - fp32).mean() < 0.02 and np.abs(g8 - g32).max() < 0.05


def test_int8_refuses_missing_modified_or_stale_export(tiny_ich_dir: Path) -> None:
    card = ModelCard.load(tiny_ich_dir / "model.yaml")
    with pytest.raises(ModelLoadError, match="no int8 export.*triage-lab export ich"):
        load_analyzer(card, precision="int8")
    card = exported(tiny_ich_dir, lambda an: [an.slice_probabilities(v.pixels) for v in calibration_volumes(1)])
    path = tiny_ich_dir / EXPORT_FILE
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ModelLoadError, match="refusing to load a modified"):
        load_analyzer(card, precision="int8")
    path.unlink()
    with pytest.raises(ModelLoadError, match="is missing"):
        load_analyzer(card, precision="int8")
    path.write_bytes(good)
    entry = dict(card.exports["int8"]) | {"from_weights_sha256": "0" * 64}
    stale = dataclasses.replace(card, exports={"int8": entry})
    with pytest.raises(ModelLoadError, match="made from other weights"):
        load_analyzer(stale, precision="int8")
    assert load_analyzer(card, precision="int8").precision == "int8"  # type: ignore[attr-defined]


def test_int8_figures_go_next_to_the_float_ones(tiny_ich_dir: Path) -> None:
    card = exported(tiny_ich_dir, lambda an: [an.slice_probabilities(v.pixels) for v in calibration_volumes(1)])
    before = dict(card.metrics)
    record_int8_metrics(tiny_ich_dir, {"model": "ich", "auc": 0.5, "precision": "int8"})
    after = ModelCard.load(tiny_ich_dir / "model.yaml")
    assert dict(after.metrics) == before
    assert dict(after.exports["int8"]["metrics"]) == {"auc": 0.5, "precision": "int8"}
    assert (tiny_ich_dir / "eval_int8.json").is_file()


def test_recorder_keeps_a_bounded_uniform_sample() -> None:
    import torch

    rec = Recorder(lambda x: x * 2, keep=10)
    for i in range(20):
        out = rec(torch.full((5, 1), float(i)))
        assert torch.equal(out, torch.full((5, 1), 2.0 * i))  # forwards unchanged
    assert rec.seen == 100 and len(rec.samples) == 10
    assert len({float(s[0]) for s in rec.samples}) > 3  # drawn from across the run, not only the first batches


def test_models_listing_reports_the_int8_export(tiny_ich_dir: Path) -> None:
    from triage_node.inference.registry import list_models

    exported(tiny_ich_dir, lambda an: [an.slice_probabilities(v.pixels) for v in calibration_volumes(1)])
    (row,) = list_models(tiny_ich_dir.parent)
    assert row.status == "ok" and "int8 export model.int8.onnx verified" in row.detail
    (tiny_ich_dir / EXPORT_FILE).write_bytes(b"not onnx")
    (row,) = list_models(tiny_ich_dir.parent)
    assert row.status == "ok" and "int8 unusable" in row.detail  # the float model still loads
