"""Held-out evaluation writes its JSON report and PNG plots; the card takes the figures; the segmenter's
post-processing is tuned on validation cases within a false-positive budget and the card records it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from triage_lab.synth.cases import CLASSES, make_ct_case
from triage_lab.training.evaluate import (
    Components,
    PostprocessGrid,
    evaluate_ich,
    evaluate_segmenter,
    training_noise_limit,
    tune_ich_thresholds,
    tune_segmenter_postprocess,
    write_ich_thresholds_to_card,
    write_metrics_to_card,
    write_noise_limit_to_card,
    write_postprocess_to_card,
)
from triage_lab.training.ich_train import IchRecipe
from triage_lab.training.ich_train import write_model_dir as write_ich
from triage_lab.training.loop import TrainConfig
from triage_lab.training.metrics import dice, lesion_matches, sens_spec
from triage_lab.training.seg_train import SegRecipe
from triage_lab.training.seg_train import write_model_dir as write_seg
from triage_lab.training.synthdata import write_case
from triage_node.inference.card import ModelCard, sha256_file
from triage_node.inference.cropgrid import keep_components
from triage_node.inference.nets import build_classifier, build_segmenter

HISTORY = {
    "train_loss": [0.9, 0.5],
    "val": [{"val_loss": 0.8, "val_dice": 0.3}, {"val_loss": 0.6, "val_dice": 0.5}],
    "lr": [1e-3, 1e-4],
    "seconds": 1.0,
}
TEST_SEEDS = [900000, 900001, 900002]


@pytest.fixture(scope="module")
def test_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small held-out cases: one lesion, none, two lesions (MNI head, 4 slices)."""
    cache = tmp_path_factory.mktemp("cache")
    for seed, subtypes in zip(TEST_SEEDS, [("subdural",), (), ("intraparenchymal", "epidural")], strict=True):
        write_case(cache, seed, make_ct_case(seed, subtypes, "mni", n_slices=4))
    return cache


@pytest.fixture
def ich_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    recipe = IchRecipe(arch="resnet18", width=0.125, size=32, context=1)
    write_ich(
        tmp_path / "ich",
        build_classifier("resnet18", 9, 6, 0.125).state_dict(),
        recipe,
        TrainConfig(),
        {"data": "random weights"},
        "0.0.1",
    )
    (tmp_path / "ich" / "history.json").write_text(json.dumps(HISTORY))
    return tmp_path / "ich"


@pytest.fixture
def seg_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    write_seg(
        tmp_path / "seg",
        build_segmenter(3, 4).state_dict(),
        SegRecipe(base=4, size=64),
        {"data": "random weights"},
        "0.0.1",
    )
    (tmp_path / "seg" / "history.json").write_text(json.dumps(HISTORY))
    return tmp_path / "seg"


def _add_export(model_dir: Path) -> None:
    """A stand-in ``exports`` section, to check the card save keeps it."""
    import dataclasses

    card = ModelCard.load(model_dir / "model.yaml")
    dataclasses.replace(card, exports={"int8": {"file": "model.int8.onnx"}}).save(  # type: ignore[arg-type]
        model_dir / "model.yaml"
    )


def test_evaluate_ich_writes_report_and_plots(ich_dir: Path, test_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = evaluate_ich(ich_dir, test_cache, TEST_SEEDS, out, precision="fp32")
    saved = json.loads((out / "eval.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["held_out"]["cases"] == 3 and saved["held_out"]["positive_cases"] == 2
    anyh = saved["series_level"]["any_hemorrhage"]
    assert 0.0 <= anyh["auc"] <= 1.0  # two positive and one negative case: defined
    assert anyh["sensitivity"] in (0.0, 0.5, 1.0) and anyh["specificity"] in (0.0, 1.0)
    assert anyh["threshold"] == 0.5 and anyh["positives"] == 2 and anyh["negatives"] == 1
    assert saved["series_level"]["epidural"]["positives"] == 1
    assert set(saved["slice_level"]) == set(CLASSES)
    assert saved["rsna_weighted_log_loss_slice"] > 0
    for png in (
        "roc_slice.png",
        "roc_series.png",
        "confusion_series.png",
        "calibration_slice.png",
        "train_history.png",
    ):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


def test_evaluate_segmenter_writes_report_and_plots(seg_dir: Path, test_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = evaluate_segmenter(seg_dir, test_cache, TEST_SEEDS, out, precision="fp32")
    saved = json.loads((out / "eval.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["held_out"] == {"seeds": "900000-900002", "cases": 3, "positive_cases": 2}
    for key in ("dice_mean_positive_cases", "iou_mean_positive_cases", "dice_mean_all_components"):
        assert 0.0 <= saved[key] <= 1.0, key
    lw = saved["lesion_wise"]
    assert lw["tp"] + lw["fn"] == 3  # three drawn lesions over the two positive cases, however fragmented
    assert lw["f1"] is None or 0.0 <= lw["f1"] <= 1.0
    assert saved["false_positive_rate_negative_cases"] in (0.0, 1.0) and saved["negative_cases"] == 1
    assert saved["false_positive_rate_by_source"]["mni"]["cases"] == 1
    assert saved["postprocess"]["gate_threshold"] == 0.5 and saved["postprocess"]["min_extent_mm"] == 0.0
    cases = json.loads((out / "eval_cases.json").read_text())
    assert [c["seed"] for c in cases] == TEST_SEEDS
    for png in ("dice_volume.png", "confusion_cases.png", "train_history.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png


@pytest.mark.parametrize("which", ["ich", "seg"])
def test_write_metrics_to_card_round_trip(which: str, ich_dir: Path, seg_dir: Path, test_cache: Path) -> None:
    model_dir = ich_dir if which == "ich" else seg_dir
    _add_export(model_dir)
    before = ModelCard.load(model_dir / "model.yaml")
    run = evaluate_ich if which == "ich" else evaluate_segmenter
    report = run(model_dir, test_cache, TEST_SEEDS, None, "fp32")
    write_metrics_to_card(model_dir, report)
    card = ModelCard.load(model_dir / "model.yaml")
    assert card.sha256 == before.sha256 == sha256_file(card.weights_path)
    assert card.device_uid == before.device_uid
    assert card.exports["int8"]["file"] == "model.int8.onnx"
    assert card.metrics["held_out"]["seeds"] == "900000-900002"
    if which == "ich":
        assert card.metrics["series_level_auc"]["any_hemorrhage"] == report["series_level"]["any_hemorrhage"]["auc"]
        assert card.metrics["rsna_weighted_log_loss_slice"] == report["rsna_weighted_log_loss_slice"]
    else:
        assert card.metrics["dice_mean_positive_cases"] == report["dice_mean_positive_cases"]
        assert card.metrics["lesion_wise"]["f1"] == report["lesion_wise"]["f1"]
        assert card.metrics["false_positive_rate_negative_cases"] == report["false_positive_rate_negative_cases"]


def test_components_score_matches_keep_components() -> None:
    """The tuner's per-component scoring gives what keep_components + dice + lesion_matches give on the mask."""
    rng = np.random.default_rng(3)
    shape = (6, 40, 40)
    raw = np.zeros(shape, bool)
    truth = [np.zeros(shape, bool), np.zeros(shape, bool)]
    truth[0][1:4, 5:15, 5:15] = True
    truth[1][2:3, 30:33, 30:33] = True
    raw[1:4, 6:16, 6:14] = True  # on lesion 0
    raw[2, 29:31, 29:31] = True  # touches lesion 1
    raw[5, 20:27, 20:27] = True  # a false positive, one slice
    raw |= rng.random(shape) > 0.995  # specks
    spacing = (3.0, 0.8, 0.8)
    comps = Components.of(raw, truth, spacing)
    union = truth[0] | truth[1]
    for k, area, extent in itertools.product((1, 2, 3, 0), (0.0, 10.0, 30.0), (0.0, 5.0, 10.0)):
        mask = keep_components(raw, spacing, area, k, extent)
        d, tp, fp, fn, flagged = comps.score(k, area, extent)
        assert np.isclose(d, dice(union, mask)), (k, area, extent)
        assert (tp, fp, fn) == lesion_matches(truth, mask), (k, area, extent)
        assert flagged == bool(mask.any())
    # The one-slice false positive (3 mm) goes at a 5 mm minimum extent; the 3-slice lesion stays.
    clean = truth[0] | truth[1]
    clean[5, 20:27, 20:27] = True
    assert keep_components(clean, spacing, 30.0, 0)[5].any()
    kept = keep_components(clean, spacing, 30.0, 0, min_extent_mm=5.0)
    assert not kept[5].any() and kept[1:4, 10, 10].all()


@pytest.fixture
def val_cache(tmp_path: Path) -> Path:
    cache = tmp_path / "val_cache"
    cache.mkdir()
    write_case(cache, 500000, make_ct_case(7, ("subdural",), "mni", n_slices=4))
    write_case(cache, 500001, make_ct_case(8, (), "mni", n_slices=4))
    return cache


SMALL = {
    "gates": (0.0, 0.5, 1.0),
    "thresholds": (0.4, 0.6),
    "max_components": (1, 0),
    "min_areas_mm2": (0.0, 30.0),
    "min_extents_mm": (0.0, 10.0),
}


def test_tune_postprocess_and_write_card(seg_dir: Path, val_cache: Path) -> None:
    _add_export(seg_dir)
    grid = PostprocessGrid(**SMALL, max_fp_rate=1.0)  # type: ignore[arg-type]
    tuned = tune_segmenter_postprocess(seg_dir, val_cache, [500000, 500001], grid, precision="fp32")
    assert tuned["positive_cases"] == 1 and tuned["negative_cases"] == 1
    assert len(tuned["grid"]) == 3 * 2 * 2 * 2 * 2
    best = tuned["grid"][0]["dice_mean"]
    chosen = tuned["chosen"]
    assert chosen["dice_mean"] >= best - tuned["tolerance"]
    write_postprocess_to_card(seg_dir, tuned)
    card = ModelCard.load(seg_dir / "model.yaml")
    assert card.thresholds["segmentation"] == chosen["threshold"]
    assert card.thresholds["gate"] == chosen["gate"]
    assert card.postprocess["max_components"] == chosen["max_components"]
    assert card.postprocess["min_area_mm2"] == chosen["min_area_mm2"]
    assert card.postprocess["min_extent_mm"] == chosen["min_extent_mm"]
    assert "500000-500001" in card.postprocess["chosen_on"] and "1 negative" in card.postprocess["chosen_on"]
    assert "tuned_behind_gate" not in card.postprocess
    assert card.exports["int8"]["file"] == "model.int8.onnx"
    assert json.loads((seg_dir / "tune_postprocess.json").read_text())["chosen"] == chosen


def test_ich_thresholds_are_chosen_again_from_the_analyzers_scores(ich_dir: Path, val_cache: Path) -> None:
    """``tune-postprocess ich``: the thresholds come from what the daemon's analyzer scores on validation cases, and
    the card records them, how they were chosen and its new version; the weights are untouched."""
    from triage_node.inference.ich import IchAnalyzer, aggregate

    sha = ModelCard.load(ich_dir / "model.yaml").sha256
    tuned = tune_ich_thresholds(ich_dir, val_cache, [500000, 500001], precision="fp32")
    assert tuned["cases"] == 2 and tuned["positive_cases"] == 1 and tuned["precision"] == "fp32"
    an = IchAnalyzer(ModelCard.load(ich_dir / "model.yaml"), precision="fp32")
    from triage_lab.training.synthdata import load

    scores = [aggregate(an.slice_probabilities(load(val_cache, s).hu.astype(np.float32)), an.aggregation)[0]
              for s in (500000, 500001)]
    t = tuned["chosen"]["any_hemorrhage"]
    truth = np.array([True, False])  # 500000 has the subdural

    def youden(cut: float) -> float:
        sens, spec = sens_spec(truth, np.array(scores), cut)
        return float(sens + spec - 1)  # type: ignore[operator]

    assert youden(t) == max(youden(c) for c in [*scores, np.inf])  # the best cut on the analyzer's own scores
    assert all(abs(t - x) > 1e-6 for x in scores)  # and never on a case's own score
    write_ich_thresholds_to_card(ich_dir, tuned, "0.0.2")
    card = ModelCard.load(ich_dir / "model.yaml")
    assert card.version == "0.0.2" and card.sha256 == sha
    assert dict(card.thresholds) == tuned["chosen"]
    assert "500000-500001" in card.training["thresholds_from"]
    assert json.loads((ich_dir / "tune_thresholds.json").read_text())["chosen"] == tuned["chosen"]


def test_the_noise_limit_is_read_off_the_training_cases_and_written_into_the_card(
    ich_dir: Path, test_cache: Path
) -> None:
    """``tune-postprocess ich --noise-from-train``: the card's ``input.noise_hu_max`` is a percentile of the cases'
    own noise at the network's input size, and the analyzer then smooths only what lies above it."""
    from triage_lab.training.synthdata import load
    from triage_node.inference.ich import IchAnalyzer
    from triage_node.inference.slices import noise_hu, noise_sample

    size = int(ModelCard.load(ich_dir / "model.yaml").input["size"])
    limit = training_noise_limit(test_cache, TEST_SEEDS, size, percentile=100.0)
    values = [noise_hu(noise_sample(load(test_cache, s).hu.astype(np.float32)), size) for s in TEST_SEEDS]
    assert limit["noise_hu_max"] == pytest.approx(max(values), abs=0.01) and limit["cases"] == 3
    sha = ModelCard.load(ich_dir / "model.yaml").sha256
    write_noise_limit_to_card(ich_dir, limit)
    card = ModelCard.load(ich_dir / "model.yaml")
    assert card.input["noise_hu_max"] == limit["noise_hu_max"] and card.sha256 == sha
    assert "900000-900002" in card.input["noise_from"]
    an = IchAnalyzer(card)
    for s in TEST_SEEDS:  # every case it was read off is within it: nothing the network was shown is smoothed
        hu = load(test_cache, s).hu.astype(np.float32)
        assert an.prepared(hu) is hu


def test_tune_respects_the_false_positive_budget(seg_dir: Path, val_cache: Path) -> None:
    # gate 1.0 passes no crop, so the grid always holds a rule with no false positive.
    tuned = tune_segmenter_postprocess(
        seg_dir, val_cache, [500000, 500001], PostprocessGrid(**SMALL, max_fp_rate=0.0), precision="fp32"
    )  # type: ignore[arg-type]
    assert tuned["chosen"]["false_positive_rate_negatives"] == 0.0
    with pytest.raises(ValueError, match="false-positive rate <= 0.0"):
        tune_segmenter_postprocess(
            seg_dir,
            val_cache,
            [500000, 500001],
            PostprocessGrid(gates=(0.0,), thresholds=(0.0,), max_fp_rate=0.0),
            precision="fp32",
        )


def test_tune_as_deployed_counts_a_negative_only_where_the_ich_flag_opens_the_gate(
    seg_dir: Path, ich_dir: Path, val_cache: Path
) -> None:
    """Behind an ich model that flags nothing, a segmenter that outlines every negative has no deployed false
    positive; the ungated rate is still reported, and the card says how the rule was chosen."""
    card = ModelCard.load(ich_dir / "model.yaml")
    path = ich_dir / "model.yaml"
    ModelCard.from_dict({**card.to_dict(), "thresholds": {**card.thresholds, "any_hemorrhage": 1.0}}, path).save(path)
    grid = PostprocessGrid(gates=(0.0,), thresholds=(0.0,), max_fp_rate=0.0)
    tuned = tune_segmenter_postprocess(
        seg_dir, val_cache, [500000, 500001], grid, precision="fp32", flag_model_dir=ich_dir
    )
    assert tuned["gated_by"] == {"model": f"ich {card.version}", "negatives_flagged": 0, "positives_flagged": 0}
    assert tuned["chosen"]["false_positive_rate_negatives"] == 0.0
    assert tuned["chosen"]["false_positive_rate_ungated"] == 1.0
    write_postprocess_to_card(seg_dir, tuned)
    post = ModelCard.load(seg_dir / "model.yaml").postprocess
    assert "as deployed, behind the ich" in post["chosen_on"] and "0 of 1" in post["chosen_on"]
    assert post["tuned_behind_gate"] == "any_hemorrhage"  # the daemon warns when it runs without that gate


def test_tune_needs_positive_and_negative_cases(seg_dir: Path, val_cache: Path) -> None:
    with pytest.raises(ValueError, match="no positive case"):
        tune_segmenter_postprocess(seg_dir, val_cache, [500001], precision="fp32")
    with pytest.raises(ValueError, match="no negative case"):
        tune_segmenter_postprocess(seg_dir, val_cache, [500000], precision="fp32")


def test_tune_refuses_test_seeds(seg_dir: Path, val_cache: Path) -> None:
    with pytest.raises(ValueError, match="test seeds"):
        tune_segmenter_postprocess(seg_dir, val_cache, [500000, 900000], precision="fp32")


def test_postprocess_grid_validates() -> None:
    with pytest.raises(ValueError, match=r"max_fp_rate must be in \[0, 1\], got 1.5"):
        PostprocessGrid(max_fp_rate=1.5)
    with pytest.raises(ValueError, match="gates must be non-empty"):
        PostprocessGrid(gates=())


def test_shifted_settings_figures_live_beside_the_test_figures(ich_dir: Path, test_cache: Path) -> None:
    from triage_lab.training.evaluate import SHIFTED_KEY

    report = evaluate_ich(ich_dir, test_cache, TEST_SEEDS, ich_dir / "shifted", "fp32")
    write_metrics_to_card(ich_dir, report, "test_shifted")
    card = ModelCard.load(ich_dir / "model.yaml")
    assert card.metrics[SHIFTED_KEY]["series_level_auc"] == {k: v["auc"] for k, v in report["series_level"].items()}
    assert "outside every training range" in card.metrics[SHIFTED_KEY]["settings"]
    write_metrics_to_card(ich_dir, report)  # a new test-split evaluation keeps the shifted figures
    card = ModelCard.load(ich_dir / "model.yaml")
    assert SHIFTED_KEY in card.metrics and card.metrics["held_out"]["seeds"] == "900000-900002"


def test_tune_postprocess_noise_only_writes_the_limit_and_nothing_else(ich_dir: Path, tmp_path: Path) -> None:
    """``triage-lab tune-postprocess ich --noise-from-train N --noise-only --update-card``: the card gets the training
    cases' noise limit, and its thresholds are left as they were."""
    from triage_lab.cli import main

    before = ModelCard.load(ich_dir / "model.yaml")
    rc = main(["tune-postprocess", "ich", "--model-dir", str(ich_dir), "--cache", str(tmp_path / "cache"),
               "--n-val", "1", "--noise-from-train", "1", "--noise-only", "--update-card"])
    after = ModelCard.load(ich_dir / "model.yaml")
    assert rc == 0 and after.input["noise_hu_max"] > 0 and "seeds 0-0" in after.input["noise_from"]
    assert dict(after.thresholds) == dict(before.thresholds) and after.version == before.version
