"""Evaluation plots for the MR models (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def froc_plot(path: Path, curve: Sequence[Mapping[str, Any]], threshold: float) -> None:
    """Sensitivity against false positives per subject over the threshold sweep; the operating point marked."""
    fp = [r["fp_per_subject"] for r in curve]
    se = [r["sensitivity"] for r in curve]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(fp, se, ".-")
    op = min(curve, key=lambda r: abs(r["threshold"] - threshold))
    ax.plot([op["fp_per_subject"]], [op["sensitivity"]], "ro", label=f"threshold {threshold:.2f}")
    ax.axhline(0.9, color="grey", ls=":")
    ax.axvline(1.0, color="grey", ls=":")
    ax.set_xlabel("false positives per subject")
    ax.set_ylabel("sensitivity (per bleed)")
    ax.set_xlim(0, max(3.0, min(max(fp), 10.0)))
    ax.set_ylim(0, 1.02)
    ax.set_title("cmb FROC, held-out synthetic SWI")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def count_plot(path: Path, counts: Sequence[tuple[int, int]]) -> None:
    """Predicted against true microbleed count per subject."""
    a = np.asarray(counts, dtype=float).reshape(-1, 2)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, a.shape)
    ax.scatter(a[:, 0] + jitter[:, 0], a[:, 1] + jitter[:, 1], s=12, alpha=0.7)
    m = float(a.max()) + 1 if len(a) else 1.0
    ax.plot([0, m], [0, m], "k:")
    ax.set_xlabel("true count")
    ax.set_ylabel("predicted count")
    ax.set_title("microbleed count per subject")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def confusion_plot(path: Path, matrix: np.ndarray, labels: Sequence[str], title: str) -> None:
    fig, ax = plt.subplots(figsize=(0.5 * len(labels) + 3, 0.5 * len(labels) + 2.5))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            if matrix[i, j]:
                ax.text(j, i, str(int(matrix[i, j])), ha="center", va="center", fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def dice_plot(path: Path, dices: Sequence[float], volumes_ml: Sequence[float]) -> None:
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    ax[0].hist(dices, bins=20, range=(0, 1))
    ax[0].set_xlabel("Dice per case")
    ax[0].set_ylabel("cases")
    ax[1].scatter(volumes_ml, dices, s=12)
    ax[1].set_xscale("log")
    ax[1].set_xlabel("true infarct volume (ml)")
    ax[1].set_ylabel("Dice")
    fig.suptitle("infarct segmentation, held-out synthetic DWI")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
