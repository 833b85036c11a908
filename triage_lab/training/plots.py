"""Evaluation plots (PNG, matplotlib Agg): ROC per class, confusion matrices, loss curves, calibration."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from triage_lab.training.metrics import calibration_bins, roc_auc, roc_curve


def roc_plot(path: Path, y: np.ndarray, p: np.ndarray, classes: Sequence[str], title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 6))
    for i, c in enumerate(classes):
        auc = roc_auc(y[:, i], p[:, i])
        if auc is None:
            continue
        fpr, tpr, _ = roc_curve(y[:, i], p[:, i])
        ax.plot(fpr, tpr, label=f"{c} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def confusion_plot(path: Path, matrices: Mapping[str, np.ndarray], title: str) -> None:
    n = len(matrices)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 2.8))
    axes = np.atleast_1d(axes)
    for ax, (name, m) in zip(axes, matrices.items(), strict=True):
        ax.imshow(m, cmap="Blues")
        for (r, c), v in np.ndenumerate(m):
            ax.text(c, r, str(int(v)), ha="center", va="center", fontsize=9)
        ax.set_xticks([0, 1], ["pred -", "pred +"])
        ax.set_yticks([0, 1], ["true -", "true +"])
        ax.set_title(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def history_plot(path: Path, history: Mapping[str, Any]) -> None:
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(range(1, len(history["train_loss"]) + 1), history["train_loss"], label="train loss")
    val = history.get("val") or []
    if val and "val_loss" in val[0]:
        ax[0].plot(range(1, len(val) + 1), [v["val_loss"] for v in val], label="validation loss")
    ax[0].set(xlabel="epoch", ylabel="loss")
    ax[0].legend()
    for key in sorted({k for v in val for k in v} - {"val_loss"}):
        ax[1].plot(range(1, len(val) + 1), [v.get(key, np.nan) for v in val], label=key)
    ax[1].set(xlabel="epoch", ylabel="validation metric")
    if val:
        ax[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def calibration_plot(path: Path, y: np.ndarray, p: np.ndarray, classes: Sequence[str], title: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 6))
    for i, c in enumerate(classes):
        mp, obs, cnt = calibration_bins(y[:, i], p[:, i])
        ok = cnt > 0
        ax.plot(mp[ok], obs[ok], "o-", ms=3, label=c)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="mean predicted probability", ylabel="observed fraction", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def lr_plot(path: Path, lrs: Sequence[float], losses: Sequence[float], suggestion: float) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx(lrs, losses)
    ax.axvline(suggestion, color="r", ls="--", label=f"suggested {suggestion:.2e}")
    ax.set(xlabel="learning rate", ylabel="smoothed loss", title="LR finder")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def seg_plots(out_dir: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Dice histogram, predicted vs true volume, and the case-level detection confusion matrix."""
    pos = [r for r in rows if r["positive"]]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].hist([r["dice"] for r in pos], bins=20, range=(0, 1), color="tab:blue", alpha=0.8, label="shipped")
    ax[0].hist([r["dice_all_components"] for r in pos], bins=20, range=(0, 1), histtype="step", color="k",
               label="all components")
    ax[0].set(xlabel="Dice per positive case", ylabel="cases", title="segmenter Dice (held-out synthetic)")
    ax[0].legend(fontsize=8)
    t = [r["true_ml"] for r in pos]
    p = [r["pred_ml"] for r in pos]
    ax[1].scatter(t, p, s=10)
    hi = max(t + p + [1.0])
    ax[1].plot([0, hi], [0, hi], "k:", lw=0.8)
    ax[1].set(xlabel="true volume (ml)", ylabel="predicted volume (ml)", title="hemorrhage volume")
    fig.tight_layout()
    fig.savefig(out_dir / "dice_volume.png", dpi=90)
    plt.close(fig)
    tr = np.array([r["positive"] for r in rows])
    pr = np.array([r["pred_any"] for r in rows])
    m = np.array([[(~tr & ~pr).sum(), (~tr & pr).sum()], [(tr & ~pr).sum(), (tr & pr).sum()]])
    confusion_plot(out_dir / "confusion_cases.png", {"hemorrhage present": m}, "segmenter case-level detection")
