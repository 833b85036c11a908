"""MR training code runs: a few steps of the cmb CNN and the DWI crop-grid segmenter on tiny data, the FROC
bookkeeping, and the laterality rules of the direct location baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from triage_lab.training.loop import TrainConfig, fit
from triage_lab.training.mr_cmb import (
    PatchSet,
    augment_patches,
    balanced_batches,
    froc,
    parse_seeds,
    pick_threshold,
    subject_counts,
)
from triage_lab.training.mr_infarct import DirectLocationNet, class_index, class_name
from triage_node.inference.atlas import Region
from triage_node.inference.cmb import CandidateConfig, CmbDetector, CmbNet


def _patches(n: int, rng: np.random.Generator) -> PatchSet:
    x = rng.normal(0, 0.05, (n, 3, 32, 32)).astype(np.float32)
    y = (np.arange(n) % 4 == 0).astype(np.float32)
    x[y > 0, :, 14:18, 14:18] -= 0.8  # positives: a dark centre
    return PatchSet(torch.from_numpy(x).half(), torch.from_numpy(y))


def test_cmb_training_runs_a_few_steps() -> None:
    data = _patches(64, np.random.default_rng(0))
    net = CmbNet(widths=(4, 4, 8, 8, 8), hidden=8)

    def loss_fn(m: torch.nn.Module, b: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(m(b[0]).float(), b[1])

    hist, best = fit(
        net,
        balanced_batches(data, 16, 0.25, augment=True),
        3,
        loss_fn,
        None,
        TrainConfig(epochs=2, progress=False, amp=False),
    )
    assert len(hist.train_loss) == 2 and all(np.isfinite(hist.train_loss))
    assert set(best) == set(net.state_dict())


def test_patch_augmentation_keeps_shape_and_is_seeded() -> None:
    x = torch.randn(6, 3, 32, 32)
    a = augment_patches(x, torch.Generator().manual_seed(1))
    b = augment_patches(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)


def test_subject_counts_and_froc_bookkeeping() -> None:
    net = CmbNet(widths=(4, 4, 8, 8, 8), hidden=8)
    det = CmbDetector(net, CandidateConfig())
    rec = {
        "centres": np.array([[10.0, 10, 10], [30, 30, 30], [50, 50, 50]], np.float32),
        "truth": np.array([[10.0, 11, 10], [70, 70, 70]], np.float32),
        "radii": np.array([2.0, 2.0], np.float32),
        "spacing": np.array([1.0, 1.0, 1.0], np.float32),
        "patches": np.zeros((3, 3, 32, 32), np.float16),
    }
    n_true, found, fp = subject_counts(det, rec, np.array([0.9, 0.8, 0.1]), 0.5)
    assert (n_true, found, fp) == (2, 1, 1)
    curve = froc(det, [rec], [0.0, 1.0])["curve"]
    assert curve[-1]["fp_per_subject"] == 0.0
    assert pick_threshold(curve, 0.5)["threshold"] == 1.0


def test_seed_ranges() -> None:
    assert parse_seeds("0-2,10") == (0, 1, 2, 10)


def test_dwi_segmenter_training_runs_a_few_steps() -> None:
    from triage_lab.training.seg_train import SEG_AUGMENT, SegRecipe, crop_batches, crops_from_volumes, seg_loss
    from triage_node.inference.nets import build_segmenter

    rng = np.random.default_rng(0)
    vol = rng.normal(500, 20, (4, 64, 64)).astype(np.float32)
    mask = np.zeros(vol.shape, bool)
    mask[1:3, 20:30, 36:44] = True
    vol[mask] += 600
    recipe = SegRecipe(base=4, size=64, kind="zscore", batch_size=4)
    crops = crops_from_volumes([(vol, mask)], recipe, rng)
    net = build_segmenter(1, 4)

    def loss_fn(m: torch.nn.Module, b: tuple[torch.Tensor, ...]) -> torch.Tensor:
        seg, cls = m(b[0])
        return seg_loss(seg, cls, b[1], 0.5)

    hist, _ = fit(
        net, crop_batches(crops, 4, SEG_AUGMENT), 2, loss_fn, None, TrainConfig(epochs=1, progress=False, amp=False)
    )
    assert np.isfinite(hist.train_loss[0])


def test_direct_baseline_classes_keep_side_and_never_flip_horizontally() -> None:
    assert class_name(class_index(Region.THALAMUS, "right")) == "right thalamus"
    assert class_name(class_index(Region.THALAMUS, "left")) == "left thalamus"
    assert len({class_index(r, s) for r in Region for s in ("right", "left")}) == 22
    assert DirectLocationNet()(torch.zeros(2, 1, 128, 128)).shape == (2, 22)
    from triage_lab.training.augment import augment
    from triage_lab.training.mr_infarct import direct_augment

    # A horizontal flip would need the side label swapped: the baseline's augmentation must never mirror. A bright
    # spot on the right must stay right of centre through many random draws.
    x = torch.zeros(64, 1, 32, 32)
    x[:, :, 14:18, 24:28] = 1.0
    g = torch.Generator().manual_seed(0)
    out, _ = augment(x, direct_augment(), g)
    cols = out[:, 0].sum(dim=1)  # (n, x)
    assert bool((cols[:, 16:].sum(dim=1) > cols[:, :16].sum(dim=1)).all())


def test_operating_point_sweep_gates_like_the_analyzer(tmp_path: Path) -> None:
    """The validation sweep scores each gate on one network pass; at the card's gate it must equal the analyzer."""
    from triage_lab.training.mr_cards import write_infarct_dir
    from triage_lab.training.mr_infarct import InfarctRecipe, gated_probability, ungated_probabilities
    from triage_node.inference.card import ModelCard
    from triage_node.inference.infarct import InfarctAnalyzer
    from triage_node.inference.nets import build_segmenter

    torch.manual_seed(0)
    card = write_infarct_dir(tmp_path, build_segmenter(1, 4).state_dict(), InfarctRecipe(size=64, base=4), {}, "0")
    seg = InfarctAnalyzer(ModelCard.load(card.directory / "model.yaml")).segmenter
    rng = np.random.default_rng(0)
    px = np.zeros((3, 50, 70), np.float32)
    px[:, 5:45, 8:62] = rng.normal(500, 60, (3, 40, 54))
    raw, gates = ungated_probabilities(seg, px)
    for gate in (0.0, float(np.median(gates.numpy())), 1.1):
        seg.gate_threshold = gate
        expected, _ = seg.probabilities(px)
        np.testing.assert_allclose(gated_probability(raw, gates, gate, seg.grid, (50, 70)), expected, atol=1e-6)


def test_operating_point_is_never_chosen_on_test_seeds(tmp_path: Path) -> None:
    from triage_lab.training.mr_infarct import split_seeds, tune_infarct

    with pytest.raises(ValueError, match="test seeds"):
        tune_infarct(tmp_path, tmp_path, split_seeds("test", 2), split_seeds("val_negative", 2))


def test_operating_point_search_scores_the_adc_rule_as_the_analyzer_applies_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ADC limits in the grid, a bright b=1000 blob without restricted diffusion (a normal case's shine-through)
    is dropped at a limit of 0.9 and kept without the rule; a true infarct (half the parenchyma's ADC) is kept at
    both. The search then picks the limit and writes it into the card."""
    from triage_lab.training import mr_infarct
    from triage_lab.training.mr_cards import write_infarct_dir
    from triage_lab.training.mr_infarct import (
        InfarctRecipe,
        OperatingGrid,
        split_seeds,
        tune_infarct,
        write_operating_point,
    )
    from triage_node.inference.card import ModelCard
    from triage_node.inference.nets import build_segmenter

    torch.manual_seed(0)
    write_infarct_dir(tmp_path / "m", build_segmenter(1, 4).state_dict(), InfarctRecipe(size=64, base=4), {}, "0")
    cache = tmp_path / "cache"
    cache.mkdir()
    blob = np.zeros((4, 64, 64), bool)
    blob[1:3, 20:30, 20:30] = True
    rng = np.random.default_rng(0)
    pos, neg = split_seeds("val", 2), split_seeds("val_negative", 2)
    for seed in pos + neg:
        dwi = rng.normal(400, 10, blob.shape).astype(np.float32)
        dwi[blob] = 900.0
        adc = np.full(blob.shape, 800.0, np.float32)  # parenchyma: ln(S0/S1000) = 0.8
        adc[blob] = 400.0 if seed in pos else 1000.0  # infarct restricts; shine-through does not
        np.savez(
            cache / f"dwi_{seed}.npz",
            dwi=dwi.astype(np.float16),
            adc=adc.astype(np.float16),
            mask=blob if seed in pos else np.zeros_like(blob),
            spacing=np.asarray((5.0, 1.0, 1.0), np.float32),
            region=np.int16(int(Region.THALAMUS) if seed in pos else 0),
            side=np.asarray("left" if seed in pos else ""),
        )

    def network(_segmenter: object, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        seg = torch.from_numpy((pixels > 700).astype(np.float32))  # the network outlines every bright blob
        return seg, torch.ones(pixels.shape[0], 16)

    monkeypatch.setattr(mr_infarct, "ungated_probabilities", network)
    grid = OperatingGrid(gates=(0.5,), segmentation=(0.5,), min_areas_mm2=(8.0,), max_adc_ratios=(None, 0.9))
    tuned = tune_infarct(tmp_path / "m", cache, pos, neg, grid, progress=False)
    rows = {r["max_adc_ratio"]: r for r in tuned["grid"]}
    assert rows[None]["false_positive_rate_negatives"] == 1.0 and rows[0.9]["false_positive_rate_negatives"] == 0.0
    assert rows[None]["detected"] == rows[0.9]["detected"] == 1.0
    assert tuned["chosen"]["max_adc_ratio"] == 0.9
    write_operating_point(tmp_path / "m", tuned)
    card = ModelCard.load(tmp_path / "m" / "model.yaml")
    assert card.postprocess["max_adc_ratio"] == 0.9 and "ADC limit 0.9" in card.training["operating_point"]


def test_operating_point_can_be_chosen_again_from_a_saved_grid() -> None:
    """``tune-mr --from-grid``: the same rule over the scored rows, with another false-positive budget."""
    from triage_lab.training.mr_infarct import rechoose_operating_point

    def row(gate: float, dice: float, fp: float) -> dict[str, float | None]:
        return {"gate": gate, "segmentation": 0.5, "min_area_mm2": 15.0, "max_adc_ratio": 0.8, "dice_mean": dice,
                "detected": dice, "false_positive_rate_negatives": fp}  # fmt: skip

    tuned = {"tolerance": 0.005, "max_fp_rate": 0.1, "grid": [row(0.7, 0.46, 0.1), row(0.8, 0.43, 0.02)]}
    again = rechoose_operating_point(tuned, 0.05)
    assert again["chosen"]["gate"] == 0.8 and again["max_fp_rate"] == 0.05
    assert rechoose_operating_point(tuned, 0.1)["chosen"]["gate"] == 0.7
    with pytest.raises(ValueError):
        rechoose_operating_point(tuned, 0.01)
