"""Held-out evaluation: JSON report and PNG plots for the ich classifier and the crop-grid segmenter.

The held-out cases come from the ``test`` seed range (900 000 and up), never used in training or threshold choice.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from triage_node.inference.card import ModelCard
from triage_node.inference.ich import aggregate
from triage_node.synth.cases import CLASSES
from triage_node.training.export import record_int8_metrics
from triage_node.training.metrics import roc_auc, sens_spec, weighted_log_loss, youden_threshold
from triage_node.training.plots import calibration_plot, confusion_plot, history_plot, roc_plot

log = logging.getLogger(__name__)


def series_scores(
    p: np.ndarray, y: np.ndarray, case: np.ndarray, how: str = "top2_mean"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-case aggregated probabilities and labels: (cases, 6) each, from slice arrays (N, 6) and case ids (N,)."""
    ids = np.unique(case)
    sp = np.stack([aggregate(p[case == i], how) for i in ids])
    sy = np.stack([y[case == i].max(axis=0) for i in ids])
    return sp, sy


def youden_thresholds(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {c: round(youden_threshold(y[:, i], p[:, i]), 4) for i, c in enumerate(CLASSES)}


def _classification_report(y: np.ndarray, p: np.ndarray, thresholds: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, c in enumerate(CLASSES):
        auc = roc_auc(y[:, i], p[:, i])
        sens, spec = sens_spec(y[:, i], p[:, i], thresholds[c])
        out[c] = {
            "auc": None if auc is None else round(auc, 4),
            "sensitivity": None if sens is None else round(sens, 4),
            "specificity": None if spec is None else round(spec, 4),
            "threshold": thresholds[c],
            "positives": int(y[:, i].sum()),
            "negatives": int((1 - y[:, i]).sum()),
        }
    return out


def _confusions(y: np.ndarray, p: np.ndarray, thresholds: dict[str, float]) -> dict[str, np.ndarray]:
    m = {}
    for i, c in enumerate(CLASSES):
        t = y[:, i] > 0.5
        q = p[:, i] >= thresholds[c]
        m[c] = np.array([[(~t & ~q).sum(), (~t & q).sum()], [(t & ~q).sum(), (t & q).sum()]])
    return m


def evaluate_ich(
    model_dir: Path, cache: Path, seeds: Sequence[int], out_dir: Path | None = None, precision: str = "auto"
) -> dict[str, Any]:
    """Evaluate the ich model in ``model_dir`` on cached cases ``seeds``; write eval.json and plots to ``out_dir``."""
    from triage_node.inference.ich import IchAnalyzer
    from triage_node.training.synthdata import iter_cases

    out_dir = out_dir or model_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    card = ModelCard.load(model_dir / "model.yaml")
    an = IchAnalyzer(card, threads=2, precision=precision)
    ps, ys, cs = [], [], []
    n_slices, seconds = 0, 0.0
    for i, c in enumerate(iter_cases(cache, seeds)):
        t = time.perf_counter()
        p = an.slice_probabilities(c.hu.astype(np.float32))
        seconds += time.perf_counter() - t
        n_slices += p.shape[0]
        ps.append(p)
        ys.append(c.labels.astype(np.float32))
        cs.append(np.full(p.shape[0], i))
    p, y, case = np.concatenate(ps), np.concatenate(ys), np.concatenate(cs)
    sp, sy = series_scores(p, y, case, an.aggregation)
    thresholds = dict(card.thresholds)
    slice_thr = dict.fromkeys(CLASSES, 0.5)
    report: dict[str, Any] = {
        "model": card.name,
        "version": card.version,
        "sha256": card.sha256,
        "held_out": {"seeds": f"{min(seeds)}-{max(seeds)}", "cases": len(seeds), "slices": int(len(p)),
                     "positive_cases": int(sy[:, 0].sum())},
        "slice_level": _classification_report(y, p, slice_thr),
        "series_level": _classification_report(sy, sp, thresholds),
        "rsna_weighted_log_loss_slice": round(weighted_log_loss(y, p), 4),
        "aggregation": an.aggregation,
        "slices_per_second_2_threads": round(n_slices / seconds, 1),
        "precision": an.precision,
    }
    if an.precision == "int8":  # the export's figures go next to the float model's, never over them
        record_int8_metrics(model_dir, report)
        return report
    roc_plot(out_dir / "roc_slice.png", y, p, CLASSES, "ich ROC per class, slice level (held-out synthetic)")
    roc_plot(out_dir / "roc_series.png", sy, sp, CLASSES, "ich ROC per class, series level (held-out synthetic)")
    confusion_plot(out_dir / "confusion_series.png", _confusions(sy, sp, thresholds),
                   "series-level confusion at card thresholds")
    calibration_plot(out_dir / "calibration_slice.png", y, p, CLASSES, "calibration, slice level")
    hist = model_dir / "history.json"
    if hist.exists():
        history_plot(out_dir / "train_history.png", json.loads(hist.read_text()))
    (out_dir / "eval.json").write_text(json.dumps(report, indent=1))
    return report


def evaluate_segmenter(
    model_dir: Path, cache: Path, seeds: Sequence[int], out_dir: Path | None = None, precision: str = "auto"
) -> dict[str, Any]:
    """Evaluate the crop-grid segmenter on cached cases: Dice, IoU, lesion-wise F1, false-positive rate, volume error.

    Dice and IoU are per positive case in 3-D against the union of all hemorrhage masks; they are reported for the
    shipped post-processing (``max_components`` from the card) and, for comparison, keeping every component and
    keeping only the largest (the source study's rule).
    """
    from triage_node.inference.cropgrid import keep_components
    from triage_node.inference.segmenter import CropGridSegmenter
    from triage_node.training.metrics import dice, iou, lesion_matches
    from triage_node.training.plots import seg_plots
    from triage_node.training.synthdata import iter_cases

    out_dir = out_dir or model_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    card = ModelCard.load(model_dir / "model.yaml")
    an = CropGridSegmenter(card, threads=2, precision=precision)
    rows: list[dict[str, Any]] = []
    n_slices, seconds = 0, 0.0
    for c in iter_cases(cache, seeds):
        t = time.perf_counter()
        prob, gates = an.probabilities(c.hu.astype(np.float32))
        raw = prob >= an.seg_threshold
        shipped = keep_components(raw, c.spacing, an.min_area_mm2, an.max_components)
        seconds += time.perf_counter() - t
        n_slices += c.hu.shape[0]
        every = keep_components(raw, c.spacing, an.min_area_mm2, 0)
        largest = keep_components(raw, c.spacing, an.min_area_mm2, 1)  # the source study's rule, for comparison
        truth = c.hemorrhage
        vox_ml = float(np.prod(c.spacing)) / 1000.0
        tp, fp, fn = lesion_matches(truth, every)
        rows.append({
            "seed": c.seed, "positive": bool(truth.any()), "n_lesion_types": int(c.labels[:, 1:].any(axis=0).sum()),
            "dice": dice(truth, shipped), "iou": iou(truth, shipped), "dice_all_components": dice(truth, every),
            "iou_all_components": iou(truth, every), "dice_largest_component": dice(truth, largest),
            "pred_any": bool(shipped.any()),
            "true_ml": float(truth.sum()) * vox_ml, "pred_ml": float(shipped.sum()) * vox_ml,
            "lesion_tp": tp, "lesion_fp": fp, "lesion_fn": fn,
        })
    pos = [r for r in rows if r["positive"]]
    neg = [r for r in rows if not r["positive"]]
    single = [r for r in pos if r["n_lesion_types"] == 1]
    tp = sum(r["lesion_tp"] for r in rows)
    fp = sum(r["lesion_fp"] for r in rows)
    fn = sum(r["lesion_fn"] for r in rows)
    prec = tp / max(tp + fp, 1)
    rec = tp / max(tp + fn, 1)

    def mean(key: str, rs: list[dict[str, Any]]) -> float | None:
        return round(float(np.mean([r[key] for r in rs])), 4) if rs else None

    report: dict[str, Any] = {
        "model": card.name,
        "version": card.version,
        "sha256": card.sha256,
        "held_out": {"seeds": f"{min(seeds)}-{max(seeds)}", "cases": len(rows), "positive_cases": len(pos)},
        "postprocess": {"max_components": an.max_components, "min_area_mm2": an.min_area_mm2, "flip_tta": an.tta},
        "dice_mean_positive_cases": mean("dice", pos),
        "dice_median_positive_cases": round(float(np.median([r["dice"] for r in pos])), 4) if pos else None,
        "iou_mean_positive_cases": mean("iou", pos),
        "dice_mean_single_lesion_cases": mean("dice", single),
        "dice_mean_all_components": mean("dice_all_components", pos),
        "iou_mean_all_components": mean("iou_all_components", pos),
        "dice_mean_largest_component_only": mean("dice_largest_component", pos),
        "lesion_wise": {"precision": round(prec, 4), "recall": round(rec, 4),
                        "f1": round(2 * prec * rec / max(prec + rec, 1e-9), 4), "tp": tp, "fp": fp, "fn": fn},
        "false_positive_rate_negative_cases": mean("pred_any", neg),
        "detection_sensitivity_positive_cases": mean("pred_any", pos),
        "volume_abs_error_ml_mean": round(float(np.mean([abs(r["pred_ml"] - r["true_ml"]) for r in pos])), 2)
        if pos else None,
        "slices_per_second_2_threads": round(n_slices / seconds, 1),
        "precision": an.precision,
    }
    if an.precision == "int8":  # the export's figures go next to the float model's, never over them
        record_int8_metrics(model_dir, {k: v for k, v in report.items() if k != "cases"})
        return report
    seg_plots(out_dir, rows)
    hist = model_dir / "history.json"
    if hist.exists():
        history_plot(out_dir / "train_history.png", json.loads(hist.read_text()))
    (out_dir / "eval.json").write_text(json.dumps(report, indent=1))
    (out_dir / "eval_cases.json").write_text(json.dumps(rows, indent=0))
    return report


def write_metrics_to_card(model_dir: Path, report: dict[str, Any]) -> None:
    """Copy the headline figures of an evaluation report into ``model.yaml`` (the weights and hash are untouched)."""
    import dataclasses

    card = ModelCard.load(model_dir / "model.yaml")
    if "series_level" in report:
        metrics: dict[str, Any] = {
            "held_out": report["held_out"],
            "series_level_auc": {k: v["auc"] for k, v in report["series_level"].items()},
            "series_level_sensitivity": {k: v["sensitivity"] for k, v in report["series_level"].items()},
            "series_level_specificity": {k: v["specificity"] for k, v in report["series_level"].items()},
            "slice_level_auc": {k: v["auc"] for k, v in report["slice_level"].items()},
            "rsna_weighted_log_loss_slice": report["rsna_weighted_log_loss_slice"],
            "slices_per_second_2_threads": report["slices_per_second_2_threads"],
            "precision": report.get("precision", "fp32"),
        }
    else:
        metrics = {k: v for k, v in report.items() if k not in ("model", "version", "sha256")}
    metrics["report"] = "eval.json (plots: *.png next to it)"
    metrics["caveat"] = "Held-out synthetic cases from the same two base heads; not patient data."
    dataclasses.replace(card, metrics=metrics).save(model_dir / "model.yaml")  # type: ignore[arg-type]


def tune_segmenter_postprocess(
    model_dir: Path,
    cache: Path,
    seeds: Sequence[int],
    thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6),
    max_components: Sequence[int] = (1, 2, 3, 4, 6, 0),
    min_areas_mm2: Sequence[float] = (0.0, 15.0, 30.0, 60.0, 100.0),
    precision: str = "auto",
    tolerance: float = 0.005,
) -> dict[str, Any]:
    """Choose the segmenter's post-processing (segmentation threshold, how many of the largest 3-D components to
    keep, minimum cross-section) by mean Dice over the positive cases of ``seeds`` - validation seeds, never the test
    set. The network runs once per case; every combination is scored on the same probabilities.

    Returns ``{"chosen": {...}, "grid": [{threshold, max_components, min_area_mm2, dice_mean}, ...]}`` (grid sorted
    best first). The chosen rule is the most restrictive one within ``tolerance`` of the best Dice.
    """
    from triage_node.inference.cropgrid import keep_components
    from triage_node.inference.segmenter import CropGridSegmenter
    from triage_node.training.metrics import dice
    from triage_node.training.synthdata import SPLIT_SEED_BASE, iter_cases

    if any(s >= SPLIT_SEED_BASE["test"] for s in seeds):
        raise ValueError("tune: held-out test seeds (900000..) must never choose the post-processing")
    card = ModelCard.load(model_dir / "model.yaml")
    an = CropGridSegmenter(card, threads=2, precision=precision)
    cases = []
    for c in iter_cases(cache, seeds):
        truth = c.hemorrhage
        if truth.any():
            prob, _ = an.probabilities(c.hu.astype(np.float32))
            cases.append((prob, truth, c.spacing))
    if not cases:
        raise ValueError("no positive case among the tuning seeds")
    grid = []
    for thr in thresholds:
        raws = [(prob >= thr, truth, spacing) for prob, truth, spacing in cases]
        for k in max_components:
            for area in min_areas_mm2:
                d = [dice(truth, keep_components(raw, spacing, area, k)) for raw, truth, spacing in raws]
                grid.append({"threshold": thr, "max_components": k, "min_area_mm2": area,
                             "dice_mean": round(float(np.mean(d)), 4)})
    grid.sort(key=lambda r: -r["dice_mean"])
    # Within ``tolerance`` of the best Dice, prefer the most restrictive rule: fewer kept components (0 = all is the
    # least restrictive), then a larger minimum size, then the higher Dice.
    near = [r for r in grid if r["dice_mean"] >= grid[0]["dice_mean"] - tolerance]
    chosen = min(near, key=lambda r: (r["max_components"] or 10**6, -r["min_area_mm2"], -r["dice_mean"]))
    return {"seeds": f"{min(seeds)}-{max(seeds)}", "positive_cases": len(cases), "precision": an.precision,
            "tolerance": tolerance, "chosen": chosen, "grid": grid}


def write_postprocess_to_card(model_dir: Path, tuned: dict[str, Any]) -> None:
    """Write the chosen post-processing into ``model.yaml`` (thresholds.segmentation and postprocess), noting the
    validation seeds it was chosen on. Weights and hash are untouched."""
    import dataclasses

    card = ModelCard.load(model_dir / "model.yaml")
    best = tuned["chosen"]
    thresholds = {**dict(card.thresholds), "segmentation": best["threshold"]}
    post = {
        **dict(card.postprocess),
        "max_components": best["max_components"],
        "min_area_mm2": best["min_area_mm2"],
        "chosen_on": f"`triage-node tune-postprocess`: the most restrictive rule within {tuned['tolerance']} of the "
        f"best mean Dice over the {tuned['positive_cases']} positive validation cases (seeds {tuned['seeds']})",
    }
    dataclasses.replace(card, thresholds=thresholds, postprocess=post).save(  # type: ignore[arg-type]
        model_dir / "model.yaml"
    )
