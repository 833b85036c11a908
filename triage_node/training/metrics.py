"""Evaluation metrics (pure numpy): AUC, operating points, RSNA weighted log loss, calibration, Dice, IoU, lesion F1."""

from __future__ import annotations

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
    """The threshold maximising sensitivity + specificity - 1 (0.5 when only one class is present)."""
    y = np.asarray(y, bool)
    if y.all() or not y.any():
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    i = int(np.argmax(tpr - fpr))
    return float(np.clip(thr[i], 1e-4, 1 - 1e-4))


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


def lesion_matches(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int, int]:
    """Lesion-wise (true positives, false positives, false negatives) over 3-D connected components: a component
    counts as found / correct when it overlaps any component of the other mask."""
    lt, nt = ndimage.label(truth)
    lp, np_ = ndimage.label(pred)
    found = len(np.setdiff1d(np.unique(lt[pred]), [0]))
    correct = len(np.setdiff1d(np.unique(lp[truth]), [0]))
    return found, np_ - correct, nt - found
