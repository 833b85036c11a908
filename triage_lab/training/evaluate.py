"""Held-out evaluation: JSON report and PNG plots for the ich classifier and the crop-grid segmenter.

The held-out cases come from the ``test`` seed range (900 000 and up), never used in training or threshold choice.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from triage_lab.synth.cases import CLASSES
from triage_lab.training.int8_metrics import record_int8_metrics
from triage_lab.training.metrics import gap_middle, roc_auc, sens_spec, weighted_log_loss, youden_threshold
from triage_lab.training.plots import calibration_plot, confusion_plot, history_plot, roc_plot
from triage_node.inference.card import NEVER_PRESENT, ModelCard
from triage_node.inference.ich import aggregate

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


MIN_SUBTYPE_PRECISION = 0.8


def precision_threshold(y: np.ndarray, p: np.ndarray, min_precision: float = MIN_SUBTYPE_PRECISION) -> float:
    """The lowest threshold whose precision on (``y``, ``p``) is at least ``min_precision`` and stays so above it
    (the most sensitive operating point that is still right four times in five), placed in the middle of the gap to
    the next lower score (:func:`gap_middle`). With no such point, a threshold above every score: the subtype is never
    shown "present"."""
    order = np.argsort(-p, kind="stable")
    ys, ps = y[order].astype(bool), p[order]
    tp = np.cumsum(ys)
    precision = tp / np.arange(1, len(ys) + 1)
    ok = precision >= min_precision
    # Only cut where the score changes, and only where every higher cut is also precise enough.
    best = None
    for k in range(len(ps)):
        if not ok[k]:
            break
        if k + 1 == len(ps) or ps[k + 1] < ps[k]:
            best = k
    if best is None or tp[best] == 0:
        return NEVER_PRESENT
    return gap_middle(p, float(ps[best]))


def operating_thresholds(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """``any_hemorrhage``: Youden J (the worklist flag); subtypes: :func:`precision_threshold` (shown "present" only
    where at least 80% precise on the validation cases)."""
    out = {CLASSES[0]: round(youden_threshold(y[:, 0], p[:, 0]), 4)}
    for i, c in enumerate(CLASSES[1:], start=1):
        out[c] = round(precision_threshold(y[:, i], p[:, i]), 4)
    return out


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
    from triage_lab.training.synthdata import iter_cases
    from triage_node.inference.ich import IchAnalyzer

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
        "held_out": {
            "seeds": f"{min(seeds)}-{max(seeds)}",
            "cases": len(seeds),
            "slices": int(len(p)),
            "positive_cases": int(sy[:, 0].sum()),
        },
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
    confusion_plot(
        out_dir / "confusion_series.png", _confusions(sy, sp, thresholds), "series-level confusion at card thresholds"
    )
    calibration_plot(out_dir / "calibration_slice.png", y, p, CLASSES, "calibration, slice level")
    hist = model_dir / "history.json"
    if hist.exists():
        history_plot(out_dir / "train_history.png", json.loads(hist.read_text()))
    (out_dir / "eval.json").write_text(json.dumps(report, indent=1))
    return report


NOISE_PERCENTILE = 95.0


def training_noise_limit(
    cache: Path, seeds: Sequence[int], size: int, percentile: float = NOISE_PERCENTILE
) -> dict[str, Any]:
    """The noise (HU at the network's input ``size``, :func:`~triage_node.inference.slices.noise_hu`) that bounds
    ``percentile`` % of the training cases ``seeds``: the card's ``input.noise_hu_max``, above which the analyzer
    smooths a series back into what the network has seen. Read from the training cases only."""
    from triage_lab.training.synthdata import iter_cases
    from triage_node.inference.slices import noise_hu, noise_sample

    values = np.array([noise_hu(noise_sample(c.hu.astype(np.float32)), size) for c in iter_cases(cache, seeds)])
    values = values[np.isfinite(values)]
    return {
        "noise_hu_max": round(float(np.percentile(values, percentile)), 2),
        "percentile": percentile,
        "cases": int(values.size),
        "seeds": f"{min(seeds)}-{max(seeds)}",
        "median": round(float(np.median(values)), 2),
        "max": round(float(values.max()), 2),
    }


def write_noise_limit_to_card(model_dir: Path, limit: dict[str, Any]) -> None:
    """Write a :func:`training_noise_limit` result into ``model.yaml``'s ``input`` (weights untouched)."""
    path = model_dir / "model.yaml"
    d = ModelCard.load(path).to_dict()
    d["input"] = {
        **d["input"],
        "noise_hu_max": limit["noise_hu_max"],
        "noise_from": (
            f"the {limit['percentile']:g}th percentile of the training cases' soft-tissue pixel noise at the input "
            f"size (seeds {limit['seeds']}, {limit['cases']} cases; median {limit['median']}, highest "
            f"{limit['max']} HU); a noisier series is smoothed in-plane until it is within it (slices.match_noise)"
        ),
    }
    ModelCard.from_dict(d, path).save(path)


def tune_ich_thresholds(
    model_dir: Path, cache: Path, seeds: Sequence[int], precision: str = "auto", threads: int = 1
) -> dict[str, Any]:
    """Choose the ich card's thresholds again on validation cases, from the scores the daemon's analyzer computes
    (its aggregation, at ``precision``; ``auto`` is what the daemon runs), with :func:`operating_thresholds`.

    Training chooses them from the training loop's own predictions (another precision, another device); this reads
    them off what is deployed. Returns the chosen thresholds, the previous ones and sensitivity / specificity at each,
    per class."""
    from triage_lab.training.synthdata import iter_cases
    from triage_node.inference.ich import IchAnalyzer

    card = ModelCard.load(model_dir / "model.yaml")
    an = IchAnalyzer(card, threads=threads, precision=precision)
    sp, sy = [], []
    for case in iter_cases(cache, seeds):
        sp.append(aggregate(an.slice_probabilities(case.hu.astype(np.float32)), an.aggregation))
        sy.append(case.labels.any(axis=0))
    p, y = np.stack(sp), np.stack(sy).astype(np.float32)
    chosen = operating_thresholds(y, p)
    previous = {c: float(card.thresholds.get(c, 0.5)) for c in CLASSES}
    per_class: dict[str, Any] = {}
    for i, c in enumerate(CLASSES):
        before, after = sens_spec(y[:, i], p[:, i], previous[c]), sens_spec(y[:, i], p[:, i], chosen[c])
        per_class[c] = {
            "auc": roc_auc(y[:, i], p[:, i]),
            "positives": int(y[:, i].sum()),
            "previous": {"threshold": previous[c], "sensitivity": before[0], "specificity": before[1]},
            "chosen": {"threshold": chosen[c], "sensitivity": after[0], "specificity": after[1]},
        }
    return {
        "seeds": f"{min(seeds)}-{max(seeds)}",
        "cases": len(seeds),
        "positive_cases": int(y[:, 0].sum()),
        "precision": an.precision,
        "aggregation": an.aggregation,
        "chosen": chosen,
        "previous": previous,
        "per_class": per_class,
    }


def write_ich_thresholds_to_card(model_dir: Path, tuned: dict[str, Any], version: str | None = None) -> None:
    """Write a :func:`tune_ich_thresholds` result into ``model.yaml`` (thresholds, how they were chosen, the new
    ``version`` when given) and ``tune_thresholds.json`` next to it. Weights and hash are untouched."""
    card = ModelCard.load(model_dir / "model.yaml")
    d = card.to_dict()
    any_c = tuned["per_class"][CLASSES[0]]["chosen"]
    training = {
        **d.get("training", {}),
        "thresholds_from": (
            f"`triage-lab tune-postprocess ich` on the randomised validation cases (seeds {tuned['seeds']}, "
            f"{tuned['positive_cases']} with hemorrhage), from the scores the daemon's analyzer computes "
            f"({tuned['aggregation']}, precision {tuned['precision']}): any_hemorrhage by Youden J, each subtype at "
            "the lowest threshold with precision >= 0.8 (never shown present when none reaches it); each threshold "
            "in the middle of the gap between the scores it separates, never on a case's own score. Validation at "
            f"the chosen any_hemorrhage threshold: sensitivity {any_c['sensitivity']:.3f}, specificity "
            f"{any_c['specificity']:.3f} (tune_thresholds.json)"
        ),
    }
    path = model_dir / "model.yaml"
    new = {**d, "thresholds": dict(tuned["chosen"]), "training": training, **({"version": version} if version else {})}
    ModelCard.from_dict(new, path).save(path)
    (model_dir / "tune_thresholds.json").write_text(json.dumps(tuned, indent=1))


def evaluate_segmenter(
    model_dir: Path, cache: Path, seeds: Sequence[int], out_dir: Path | None = None, precision: str = "auto"
) -> dict[str, Any]:
    """Evaluate the crop-grid segmenter on cached cases: Dice, IoU, lesion-wise F1, false-positive rate, volume error.

    Every figure is for the shipped output (the card's gate and segmentation thresholds, ``max_components`` and
    ``min_area_mm2``, ``min_extent_mm``) unless its key says otherwise. Dice and IoU are per positive case in 3-D
    against the union of the drawn lesions; for comparison they are also given keeping every component and keeping only
    the largest (the source study's rule). Lesion-wise precision / recall / F1 follow
    :func:`~triage_lab.training.metrics.lesion_matches`: a truth lesion is one drawn lesion, a predicted lesion a 3-D
    component of the shipped mask, matched on any overlap. The false-positive rate is the fraction of negative cases
    with any shipped voxel, also given per head source.
    """
    from triage_lab.training.metrics import dice, iou, lesion_matches, lesion_scores, unpack_lesions
    from triage_lab.training.plots import seg_plots
    from triage_lab.training.synthdata import iter_cases
    from triage_node.inference.cropgrid import keep_components
    from triage_node.inference.segmenter import CropGridSegmenter

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
        shipped = keep_components(raw, c.spacing, an.min_area_mm2, an.max_components, an.min_extent_mm)
        seconds += time.perf_counter() - t
        n_slices += c.hu.shape[0]
        every = keep_components(raw, c.spacing, an.min_area_mm2, 0, an.min_extent_mm)
        largest = keep_components(raw, c.spacing, an.min_area_mm2, 1)  # the source study's rule, for comparison
        truth = c.hemorrhage
        vox_ml = float(np.prod(c.spacing)) / 1000.0
        tp, fp, fn = lesion_matches(unpack_lesions(c.lesions), shipped)
        rows.append(
            {
                "seed": c.seed,
                "source": c.source,
                "positive": bool(truth.any()),
                "n_lesion_types": int(c.labels[:, 1:].any(axis=0).sum()),
                "dice": dice(truth, shipped),
                "iou": iou(truth, shipped),
                "dice_all_components": dice(truth, every),
                "iou_all_components": iou(truth, every),
                "dice_largest_component": dice(truth, largest),
                "pred_any": bool(shipped.any()),
                "true_ml": float(truth.sum()) * vox_ml,
                "pred_ml": float(shipped.sum()) * vox_ml,
                "lesion_tp": tp,
                "lesion_fp": fp,
                "lesion_fn": fn,
            }
        )
    pos = [r for r in rows if r["positive"]]
    neg = [r for r in rows if not r["positive"]]
    single = [r for r in pos if r["n_lesion_types"] == 1]
    counts = {k: sum(r[f"lesion_{k}"] for r in rows) for k in ("tp", "fp", "fn")}

    def mean(key: str, rs: list[dict[str, Any]]) -> float | None:
        return round(float(np.mean([r[key] for r in rs])), 4) if rs else None

    report: dict[str, Any] = {
        "model": card.name,
        "version": card.version,
        "sha256": card.sha256,
        "held_out": {"seeds": f"{min(seeds)}-{max(seeds)}", "cases": len(rows), "positive_cases": len(pos)},
        "postprocess": {
            "gate_threshold": an.gate_threshold,
            "segmentation_threshold": an.seg_threshold,
            "max_components": an.max_components,
            "min_area_mm2": an.min_area_mm2,
            "min_extent_mm": an.min_extent_mm,
            "flip_tta": an.tta,
        },
        "dice_mean_positive_cases": mean("dice", pos),
        "dice_median_positive_cases": round(float(np.median([r["dice"] for r in pos])), 4) if pos else None,
        "iou_mean_positive_cases": mean("iou", pos),
        "dice_mean_single_lesion_cases": mean("dice", single),
        "dice_mean_all_components": mean("dice_all_components", pos),
        "iou_mean_all_components": mean("iou_all_components", pos),
        "dice_mean_largest_component_only": mean("dice_largest_component", pos),
        "lesion_wise": {
            **lesion_scores(counts["tp"], counts["fp"], counts["fn"]),
            **counts,
            "rule": "truth lesion = one drawn lesion; predicted lesion = 3-D component of the shipped "
            "mask; matched on any overlap (ISLES 2022)",
        },
        "false_positive_rate_negative_cases": mean("pred_any", neg),
        "negative_cases": len(neg),
        "false_positive_rate_by_source": {
            src: {"cases": len(rs), "rate": mean("pred_any", rs)}
            for src in sorted({r["source"] for r in neg})
            for rs in [[r for r in neg if r["source"] == src]]
        },
        "detection_sensitivity_positive_cases": mean("pred_any", pos),
        "volume_abs_error_ml_mean": round(float(np.mean([abs(r["pred_ml"] - r["true_ml"]) for r in pos])), 2)
        if pos
        else None,
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


SHIFTED_KEY = "held_out_shifted_settings"


def write_metrics_to_card(model_dir: Path, report: dict[str, Any], split: str = "test") -> None:
    """Copy the headline figures of an evaluation report into ``model.yaml`` (the weights and hash are untouched).

    ``split="test"`` replaces the card's metrics (keeping the shifted-settings figures); ``"test_shifted"`` writes only
    ``metrics.held_out_shifted_settings``.
    """

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
    if split == "test_shifted":
        metrics["report"] = "shifted/eval.json (plots next to it)"
        metrics["settings"] = ("acquisitions drawn outside every training range (tilt, head size, slice thickness, "
                               "pixel size, warp, noise, blur) and a stored-pixel encoding drawn per case")
        new = dict(card.metrics) | {SHIFTED_KEY: metrics}
    else:
        metrics["report"] = "eval.json (plots: *.png next to it)"
        metrics["caveat"] = "Held-out synthetic cases from the same two base heads; not patient data."
        new = metrics | ({SHIFTED_KEY: card.metrics[SHIFTED_KEY]} if SHIFTED_KEY in card.metrics else {})
    path = model_dir / "model.yaml"
    ModelCard.from_dict({**card.to_dict(), "metrics": new}, path).save(path)


GRID_ROWS_KEPT = 200


@dataclass(frozen=True)
class PostprocessGrid:
    """Candidate post-processing for the CT segmenter and the rule's parameters.

    ``gates``: crop-gate thresholds; ``thresholds``: segmentation thresholds; ``max_components``: how many of the
    largest 3-D components to keep (0 = all); ``min_areas_mm2``: the minimum largest in-plane cross-section of a kept
    component; ``min_extents_mm``: the minimum through-plane extent of a kept component (slices spanned x slice spacing:
    the false positives on the real head are single-slice blobs); ``max_fp_rate``: the largest admissible fraction of
    negative validation cases with any output; ``tolerance``: how much mean Dice may be given up for fewer false
    positives and a more restrictive rule.
    """

    gates: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
    thresholds: tuple[float, ...] = (0.4, 0.5, 0.6)
    max_components: tuple[int, ...] = (1, 2, 3, 4, 0)
    min_areas_mm2: tuple[float, ...] = (0.0, 30.0, 60.0, 100.0)
    min_extents_mm: tuple[float, ...] = (0.0, 5.0, 7.5, 10.0, 12.5, 15.0)
    max_fp_rate: float = 0.10
    tolerance: float = 0.005

    def __post_init__(self) -> None:
        for name in ("gates", "thresholds"):
            values = getattr(self, name)
            if not values or any(not 0.0 <= v <= 1.0 for v in values):
                raise ValueError(f"PostprocessGrid.{name} must be non-empty values in [0, 1], got {values}")
        if not self.max_components or any(k < 0 for k in self.max_components):
            raise ValueError(
                f"PostprocessGrid.max_components must be non-empty counts >= 0 (0 = all), got {self.max_components}"
            )
        for name in ("min_areas_mm2", "min_extents_mm"):
            values = getattr(self, name)
            if not values or any(v < 0 for v in values):
                raise ValueError(f"PostprocessGrid.{name} must be non-empty sizes >= 0, got {values}")
        if not 0.0 <= self.max_fp_rate <= 1.0:
            raise ValueError(f"PostprocessGrid.max_fp_rate must be in [0, 1], got {self.max_fp_rate}")
        if self.tolerance < 0:
            raise ValueError(f"PostprocessGrid.tolerance must be >= 0, got {self.tolerance}")


@dataclass(frozen=True)
class Components:
    """The 3-D face-connected components of one thresholded case, largest first (ties in label order), as
    :func:`~triage_node.inference.cropgrid.keep_components` ranks them; every array has one entry per component.

    ``size``: voxels; ``area_px``: largest in-plane cross-section in pixels; ``slices``: how many slices it spans;
    ``on_truth``: voxels inside the union of
    the drawn lesions; ``hits``: bool (components, lesions), the component touches that drawn lesion.
    """

    size: np.ndarray
    area_px: np.ndarray
    slices: np.ndarray
    on_truth: np.ndarray
    hits: np.ndarray
    truth_voxels: int
    spacing: tuple[float, float, float]

    @classmethod
    def of(cls, raw: np.ndarray, lesions: Sequence[np.ndarray], spacing: tuple[float, float, float]) -> Components:
        """From a thresholded probability bool (z, y, x) and the drawn lesions (one bool (z, y, x) mask each)."""
        from scipy import ndimage

        lab, n = ndimage.label(raw)
        area = np.zeros(n + 1, np.int64)
        slices = np.zeros(n + 1, np.int64)
        for z in range(lab.shape[0]):
            per = np.bincount(lab[z].ravel(), minlength=n + 1)
            np.maximum(area, per, out=area)
            slices += per > 0
        union = np.zeros(raw.shape, bool)
        for m in lesions:
            union |= m
        size = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        order = np.argsort(-size, kind="stable")
        hits = np.zeros((n, len(lesions)), bool)
        for j, m in enumerate(lesions):
            hits[:, j] = np.bincount(lab[m], minlength=n + 1)[1:] > 0
        on_truth = np.bincount(lab[union], minlength=n + 1)[1:]
        return cls(
            size[order], area[1:][order], slices[1:][order], on_truth[order], hits[order], int(union.sum()), spacing
        )

    def kept(self, max_components: int, min_area_mm2: float, min_extent_mm: float = 0.0) -> np.ndarray:
        """Indices of the components :func:`~triage_node.inference.cropgrid.keep_components` keeps."""
        idx = np.arange(len(self.size))
        if max_components > 0:
            idx = idx[:max_components]
        dz, dy, dx = self.spacing
        return idx[(self.area_px[idx] * (dy * dx) >= min_area_mm2) & (self.slices[idx] * dz >= min_extent_mm)]

    def score(
        self, max_components: int, min_area_mm2: float, min_extent_mm: float = 0.0
    ) -> tuple[float, int, int, int, bool]:
        """(Dice against the union of the drawn lesions, lesion TP, FP, FN, any output) for one rule."""
        k = self.kept(max_components, min_area_mm2, min_extent_mm)
        pred = int(self.size[k].sum())
        total = self.truth_voxels + pred
        d = 1.0 if total == 0 else 2.0 * float(self.on_truth[k].sum()) / total
        found = int(self.hits[k].any(axis=0).sum())
        fp = int((~self.hits[k].any(axis=1)).sum())
        return d, found, fp, self.hits.shape[1] - found, len(k) > 0


def tune_segmenter_postprocess(
    model_dir: Path,
    cache: Path,
    seeds: Sequence[int],
    grid: PostprocessGrid = PostprocessGrid(),
    precision: str = "auto",
    flag_model_dir: Path | None = None,
) -> dict[str, Any]:
    """Choose the segmenter's post-processing (crop-gate threshold, segmentation threshold, how many of the largest 3-D
    components to keep, minimum cross-section, minimum through-plane extent) on the cases of ``seeds`` - validation
    seeds, never the test set.

    Rule: among the rules whose false-positive rate on the negative cases (any output on a case without hemorrhage) is
    at most ``grid.max_fp_rate``, the highest mean Dice over the positive cases (a missed case scores 0); within
    ``grid.tolerance`` of it, the lowest false-positive rate, then the most restrictive rule (fewer kept components,
    larger minimum cross-section, larger minimum extent, higher gate, higher segmentation threshold). The network runs
    once per case; every rule is scored on the same outputs.

    ``flag_model_dir``: the ich model whose any-hemorrhage flag gates the segmenter in the daemon
    (``models.gates: {ct_segmenter: any_hemorrhage}``). With it, the rule is tuned as it is deployed: a negative case
    counts as a false positive only when the flag opens the gate there too (the ungated rate is kept in every row as
    ``false_positive_rate_ungated``). Without it, every negative counts, as for a segmenter that runs alone.

    Returns ``{"chosen": {...}, "grid": [...], ...}``, each grid row with the rule, ``dice_mean``,
    ``false_positive_rate_negatives``, ``detected`` (positive cases with any output) and lesion-wise F1; the grid is
    sorted by Dice, best first.
    """
    from triage_lab.training.metrics import lesion_scores, unpack_lesions
    from triage_lab.training.mr_infarct import gated_probability, ungated_probabilities
    from triage_lab.training.synthdata import SPLIT_SEED_BASE, iter_cases
    from triage_node.inference.segmenter import CropGridSegmenter

    if any(s >= SPLIT_SEED_BASE["test"] for s in seeds):
        raise ValueError("tune: held-out test seeds (900000..) must never choose the post-processing")
    card = ModelCard.load(model_dir / "model.yaml")
    an = CropGridSegmenter(card, threads=2, precision=precision)
    flagger = None
    if flag_model_dir is not None:
        from triage_node.inference.ich import IchAnalyzer, aggregate

        flagger = IchAnalyzer(ModelCard.load(flag_model_dir / "model.yaml"), threads=2, precision=precision)
    pairs = [(g, t) for g in grid.gates for t in grid.thresholds]
    comps: dict[tuple[float, float], list[Components]] = {p: [] for p in pairs}
    positive: list[bool] = []
    flagged: list[bool] = []
    for c in iter_cases(cache, seeds):
        lesions = unpack_lesions(c.lesions)
        positive.append(bool(lesions))
        if flagger is not None:
            series = aggregate(flagger.slice_probabilities(c.hu.astype(np.float32)), flagger.aggregation)
            flagged.append(bool(series[0] >= flagger.thresholds[0]))
        else:
            flagged.append(True)
        seg, gates = ungated_probabilities(an, c.hu.astype(np.float32))
        for g in grid.gates:
            prob = gated_probability(seg, gates, g, an.grid, c.hu.shape[1:])
            for t in grid.thresholds:
                comps[(g, t)].append(Components.of(prob >= t, lesions, c.spacing))
    n_pos = sum(positive)
    n_neg = len(positive) - n_pos
    if n_pos == 0:
        raise ValueError("no positive case among the tuning seeds")
    if n_neg == 0:
        raise ValueError(
            "no negative case among the tuning seeds: the false-positive budget needs cases without "
            "hemorrhage (generate more validation seeds)"
        )
    rows: list[dict[str, Any]] = []
    for g, t in pairs:
        for k, area, ext in itertools.product(grid.max_components, grid.min_areas_mm2, grid.min_extents_mm):
            scores = [cs.score(k, area, ext) for cs in comps[(g, t)]]
            pos = [s for s, p in zip(scores, positive, strict=True) if p]
            neg = [s for s, p in zip(scores, positive, strict=True) if not p]
            neg_open = [f for f, p in zip(flagged, positive, strict=True) if not p]
            tp, fp, fn = sum(s[1] for s in scores), sum(s[2] for s in scores), sum(s[3] for s in scores)
            rows.append(
                {
                    "gate": g,
                    "threshold": t,
                    "max_components": k,
                    "min_area_mm2": area,
                    "min_extent_mm": ext,
                    "dice_mean": round(float(np.mean([s[0] for s in pos])), 4),
                    "detected": round(float(np.mean([s[4] for s in pos])), 4),
                    "false_positive_rate_negatives": round(
                        float(np.mean([s[4] and f for s, f in zip(neg, neg_open, strict=True)])), 4
                    ),
                    "false_positive_rate_ungated": round(float(np.mean([s[4] for s in neg])), 4),
                    "lesion_f1": lesion_scores(tp, fp, fn)["f1"],
                }
            )
    rows.sort(key=lambda r: (-r["dice_mean"], r["false_positive_rate_negatives"]))
    ok = [r for r in rows if r["false_positive_rate_negatives"] <= grid.max_fp_rate]
    if not ok:
        lowest = min(r["false_positive_rate_negatives"] for r in rows)
        raise ValueError(
            f"no rule in the grid has a validation false-positive rate <= {grid.max_fp_rate} "
            f"(lowest {lowest}): widen the grid or raise --max-fp-rate"
        )
    near = [r for r in ok if r["dice_mean"] >= ok[0]["dice_mean"] - grid.tolerance]
    chosen = min(
        near,
        key=lambda r: (
            r["false_positive_rate_negatives"],
            r["max_components"] or 10**6,
            -r["min_area_mm2"],
            -r["min_extent_mm"],
            -r["gate"],
            -r["threshold"],
            -r["dice_mean"],
        ),
    )
    return {
        "seeds": f"{min(seeds)}-{max(seeds)}",
        "positive_cases": n_pos,
        "negative_cases": n_neg,
        "precision": an.precision,
        "max_fp_rate": grid.max_fp_rate,
        "tolerance": grid.tolerance,
        "gated_by": None
        if flagger is None
        else {
            "model": f"{flagger.name} {flagger.version}",
            "negatives_flagged": int(sum(f for f, p in zip(flagged, positive, strict=True) if not p)),
            "positives_flagged": int(sum(f for f, p in zip(flagged, positive, strict=True) if p)),
        },
        "chosen": chosen,
        "grid": rows,
    }


def _gated_phrase(tuned: dict[str, Any]) -> str:
    g = tuned.get("gated_by")
    if not g:
        return ""
    return (
        f" as deployed, behind the {g['model']} any-hemorrhage gate (a negative counts only where the gate opens: "
        f"{g['negatives_flagged']} of {tuned['negative_cases']}; ungated rate of the chosen rule "
        f"{tuned['chosen']['false_positive_rate_ungated']})"
    )


def write_postprocess_to_card(model_dir: Path, tuned: dict[str, Any]) -> None:
    """Write a :func:`tune_segmenter_postprocess` result into ``model.yaml`` (thresholds ``gate`` and ``segmentation``,
    ``postprocess.max_components`` / ``min_area_mm2`` / ``min_extent_mm`` and how they were chosen) and the whole grid
    into ``tune_postprocess.json`` next to it (the ``GRID_ROWS_KEPT`` best rows). Weights, hash and exports are
    untouched."""

    card = ModelCard.load(model_dir / "model.yaml")
    best = tuned["chosen"]
    previous = {k: v for k, v in card.postprocess.items() if k != "tuned_behind_gate"}
    thresholds = {**dict(card.thresholds), "gate": best["gate"], "segmentation": best["threshold"]}
    post = {
        **previous,
        "max_components": best["max_components"],
        "min_area_mm2": best["min_area_mm2"],
        "min_extent_mm": best["min_extent_mm"],
        **({"tuned_behind_gate": "any_hemorrhage"} if tuned.get("gated_by") else {}),
        "chosen_on": f"`triage-lab tune-postprocess` on validation seeds {tuned['seeds']} only "
        f"({tuned['positive_cases']} positive, {tuned['negative_cases']} negative cases, precision "
        f"{tuned['precision']}): the highest mean Dice with a false-positive rate <= {tuned['max_fp_rate']} on the "
        f"negative cases{_gated_phrase(tuned)}; within {tuned['tolerance']} of it the lowest false-positive rate, "
        f"then the most restrictive rule. Validation: Dice {best['dice_mean']}, false-positive rate "
        f"{best['false_positive_rate_negatives']}, lesion-wise F1 {best['lesion_f1']} (tune_postprocess.json)",
    }
    path = model_dir / "model.yaml"
    ModelCard.from_dict({**card.to_dict(), "thresholds": thresholds, "postprocess": post}, path).save(path)
    # The whole grid runs to thousands of rows; the model directory keeps the best ones (``--out`` writes them all).
    kept = {**tuned, "grid": tuned["grid"][:GRID_ROWS_KEPT], "grid_rows": len(tuned["grid"])}
    (model_dir / "tune_postprocess.json").write_text(json.dumps(kept, indent=1))
