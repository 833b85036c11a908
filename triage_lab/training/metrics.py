"""Evaluation metrics (pure numpy): AUC, operating points, RSNA weighted log loss, calibration, Dice, IoU, lesion F1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

# RSNA 2019 weights: "any" counts twice.
RSNA_WEIGHTS = np.array([2.0, 1.0, 1.0, 1.0, 1.0, 1.0])


def roc_auc(y: np.ndarray, p: np.ndarray) -> float | None:
    """Area under the ROC curve by the rank statistic (ties averaged); None when only one class is present."""
    y = np.asarray(y, bool)
    n1, n0 = int(y.sum()), int((~y).sum())
    if n1 == 0 or n0 == 0:
        return None
    from scipy.stats import rankdata

    r = rankdata(p)
    return float((r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def roc_curve(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) with thresholds descending."""
    y = np.asarray(y, bool)
    order = np.argsort(-p, kind="mergesort")
    ps, ys = p[order], y[order]
    distinct = np.r_[np.flatnonzero(np.diff(ps)), len(ps) - 1]
    tps = np.cumsum(ys)[distinct]
    fps = (distinct + 1) - tps
    tpr = np.r_[0.0, tps / max(y.sum(), 1)]
    fpr = np.r_[0.0, fps / max((~y).sum(), 1)]
    return fpr, tpr, np.r_[np.inf, ps[distinct]]


def sens_spec(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    y = np.asarray(y, bool)
    pred = p >= threshold
    sens = float((pred & y).sum() / y.sum()) if y.any() else None
    spec = float((~pred & ~y).sum() / (~y).sum()) if (~y).any() else None
    return sens, spec


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """A threshold maximising sensitivity + specificity - 1 (0.5 when only one class is present).

    J is flat between the lowest score the best cut includes and the highest score it leaves out; the threshold is
    the middle of that gap, not its upper end. A threshold equal to a validation case's score sits on a knife edge:
    the same case scored a hair lower (another precision, another machine) falls below it."""
    y = np.asarray(y, bool)
    p = np.asarray(p, float)
    if y.all() or not y.any():
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    i = int(np.argmax(tpr - fpr))
    return float(np.clip(gap_middle(p, float(thr[i])), 1e-4, 1 - 1e-4))


def gap_middle(p: np.ndarray, cut: float) -> float:
    """The middle between ``cut`` (a score that a threshold must include) and the highest score below it; ``cut``
    itself when no score lies below. Every threshold in that gap classifies ``p`` exactly as ``cut`` does."""
    below = np.asarray(p, float)[np.asarray(p, float) < cut]
    return (cut + float(below.max())) / 2.0 if below.size and np.isfinite(cut) else cut


def weighted_log_loss(y: np.ndarray, p: np.ndarray, weights: np.ndarray = RSNA_WEIGHTS) -> float:
    """RSNA 2019 metric: per-sample weighted mean of the binary cross-entropies, averaged. Inputs (N, 6)."""
    p = np.clip(p, 1e-7, 1 - 1e-7)
    bce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(((bce * weights).sum(axis=1) / weights.sum()).mean())


def calibration_bins(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed fraction, count) per equal-width probability bin (empty bins give NaN)."""
    edges = np.linspace(0, 1, n_bins + 1)
    b = np.clip(np.digitize(p, edges) - 1, 0, n_bins - 1)
    cnt = np.bincount(b, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mp = np.bincount(b, weights=p, minlength=n_bins) / cnt
        obs = np.bincount(b, weights=np.asarray(y, float), minlength=n_bins) / cnt
    return mp, obs, cnt


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two bool masks; 1.0 when both are empty."""
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    u = (a | b).sum()
    return 1.0 if u == 0 else float((a & b).sum() / u)


def unpack_lesions(bits: np.ndarray) -> list[np.ndarray]:
    """One bool mask (z, y, x) per set bit of a uint8 bit-packed lesion volume (``CachedCase.lesions``: bit i is the
    lesion drawn for subtype i); bits never set give no mask."""
    bits = np.asarray(bits, np.uint8)
    masks = [(bits >> i) & 1 for i in range(8)]
    return [m.astype(bool) for m in masks if m.any()]


def lesion_matches(truth: Sequence[np.ndarray], pred: np.ndarray) -> tuple[int, int, int]:
    """Lesion-wise (true positives, false positives, false negatives) of a predicted mask against drawn lesions.

    ``truth``: one bool mask (z, y, x) per drawn lesion, however many pieces it falls into (a subarachnoid lesion is
    many sulcal bits, still one lesion); empty masks are ignored. ``pred``: the bool mask the model ships; a predicted
    lesion is one of its 3-D face-connected components. Matching rule (any overlap, as ISLES 2022's lesion-wise F1):
    a truth lesion is a true positive when at least one voxel of it is predicted, a false negative otherwise; a
    predicted component that shares no voxel with any truth lesion is a false positive. One prediction touching two
    lesions therefore gives two true positives; a lesion found by two predicted pieces gives one. Feed the counts to
    :func:`lesion_scores`.
    """
    masks = [np.asarray(m, bool) for m in truth if np.any(m)]
    pred = np.asarray(pred, bool)
    tp = sum(bool((m & pred).any()) for m in masks)
    lab, n_pred = ndimage.label(pred)
    union = np.zeros(pred.shape, bool)
    for m in masks:
        union |= m
    hit = len(np.setdiff1d(np.unique(lab[union]), [0]))
    return tp, n_pred - hit, len(masks) - tp


def lesion_scores(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    """Precision TP / (TP + FP), recall TP / (TP + FN) and F1 2TP / (2TP + FP + FN) from :func:`lesion_matches`
    counts (summed over cases); None where the denominator is 0."""

    def ratio(a: int, b: int) -> float | None:
        return round(a / b, 4) if b else None

    return {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn)}
