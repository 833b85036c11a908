"""Microbleed detection: network shapes, candidates, patches, merging, the analyzer, and the shipped weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from triage_node.inference.card import ModelCard
from triage_node.inference.cmb import (
    CandidateConfig,
    CmbAnalyzer,
    CmbDetector,
    CmbNet,
    analyze_with,
    extract_patches,
    find_candidates,
    merge_detections,
)
from triage_node.preprocess.volume import Volume

MODELS = Path(__file__).resolve().parents[2] / "models"


def _volume(pixels: np.ndarray, spacing: tuple[float, float, float]) -> Volume:
    return Volume(pixels.astype(np.float32), spacing, (-100.0, -120.0, -50.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
                  tuple(f"1.2.3.{i}" for i in range(pixels.shape[0])), "MR")


def _phantom(spots: list[tuple[int, int, int]]) -> np.ndarray:
    """A smooth bright ellipsoid 'brain' with small dark spheres at ``spots`` (voxel z, y, x; 1 mm voxels)."""
    z, y, x = np.mgrid[:40, :96, :96]
    brain = ((z - 20) / 18.0) ** 2 + ((y - 48) / 44.0) ** 2 + ((x - 48) / 40.0) ** 2 <= 1.0
    img = np.where(brain, 600.0, 0.0)
    for c in spots:
        d2 = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2
        img = np.where(d2 <= 4, img * 0.2, img)
    rng = np.random.default_rng(0)
    return (img + rng.normal(0, 5, img.shape)).astype(np.float32)


def test_net_has_five_blocks_and_one_logit_per_patch() -> None:
    net = CmbNet(widths=(4, 4, 8, 8, 8), hidden=8)
    assert len(net.blocks) == 5
    convs = [m for m in net.blocks.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.stride == (1, 1) and c.padding == (1, 1) for c in convs)
    assert net(torch.zeros(5, 3, 32, 32)).shape == (5,)
    with pytest.raises(ValueError, match="five blocks"):
        CmbNet(widths=(4, 4))


def test_candidates_find_dark_spots_in_a_phantom() -> None:
    spots = [(20, 30, 30), (15, 60, 50), (25, 48, 70)]
    img = _phantom(spots)
    cands = find_candidates(img, (1.0, 1.0, 1.0), CandidateConfig())
    for s in spots:
        assert np.linalg.norm(cands.centres - np.asarray(s), axis=1).min() <= 1.5
    patches = extract_patches(img, (1.0, 1.0, 1.0), cands.centres[:3], cands.scale, CandidateConfig())
    assert patches.shape == (3, 3, 32, 32) and patches.dtype == np.float32
    assert patches[0, 1, 16, 16] < -0.5  # the candidate centre is dark relative to the brain median


def test_merge_keeps_the_strongest_of_close_detections() -> None:
    c = np.array([[10.0, 10, 10], [10, 10, 12], [30, 30, 30]])
    keep = merge_detections(c, np.array([0.6, 0.9, 0.7]), (1.0, 1.0, 1.0), merge_mm=6.0)
    assert list(keep) == [1, 2]


def test_analyzer_output_with_random_weights() -> None:
    torch.manual_seed(0)
    det = CmbDetector(CmbNet(widths=(4, 4, 8, 8, 8), hidden=8).eval(), CandidateConfig(), threshold=0.0)
    img = _phantom([(20, 30, 30)])
    out = analyze_with(det, _volume(img, (1.0, 1.0, 1.0)), "cmb", "0")
    f = out.findings[0]
    assert f.label == "microbleed" and f.count == len(f.positions) and out.masks["microbleed"].shape == img.shape
    assert 0.0 <= f.probability <= 1.0


@pytest.fixture(scope="module")
def shipped() -> CmbAnalyzer:
    path = MODELS / "cmb" / "model.yaml"
    if not path.exists():
        pytest.fail(f"shipped model missing: {path}")
    return CmbAnalyzer(ModelCard.load(path))


def test_shipped_model_counts_three_microbleeds_and_locates_them(shipped: CmbAnalyzer) -> None:
    """A held-out synthetic SWI (seed never used in training) with three bleeds: count 3, positions within 3 mm.

    One fixed seed only shows the model works end to end; the rate over many held-out seeds is in models/cmb/eval.json.
    """
    from triage_lab.synth.mr import make_swi_case, swi_volume

    case = make_swi_case(CMB_TEST_SEED, n_bleeds=3, source="mni")
    v = swi_volume(case)
    out = shipped.analyze(v)
    f = out.findings[0]
    assert f.present and f.count == 3
    truth = v.voxel_to_patient(case.centres)
    pred = np.asarray(f.positions)
    for t in truth:
        assert np.linalg.norm(pred - t, axis=1).min() <= 3.0
    assert out.masks["microbleed"].any()


CMB_TEST_SEED = 900_001


class _TwoHitsOnOneSpot:
    """A detector stand-in that reports two detections 8 mm apart (beyond the merge distance) on the two ends of one
    elongated dark spot: both refine to the same centre."""

    cfg = CandidateConfig()

    def candidates(self, img: np.ndarray, spacing: tuple[float, float, float]) -> tuple[object, np.ndarray, None]:
        from types import SimpleNamespace

        return SimpleNamespace(scale=float(np.median(img[img > 0]))), np.array([0.9, 0.8]), None

    def select(
        self, cands: object, probs: np.ndarray, spacing: object, patches: object = None
    ) -> tuple[np.ndarray, np.ndarray]:
        return np.array([[20.0, 48.0, 44.0], [20.0, 48.0, 52.0]]), probs


def test_one_dark_spot_is_counted_once_even_when_two_detections_refine_onto_it() -> None:
    z, y, x = np.mgrid[:40, :96, :96]
    img = _phantom([])
    img[(np.abs(z - 20) <= 1) & (np.abs(y - 48) <= 1) & (np.abs(x - 48) <= 5)] *= 0.2  # one 11 mm dark bar
    out = analyze_with(_TwoHitsOnOneSpot(), _volume(img, (1.0, 1.0, 1.0)), "cmb", "0")  # type: ignore[arg-type]
    assert out.findings[0].count == 1 and len(out.findings[0].positions) == 1
