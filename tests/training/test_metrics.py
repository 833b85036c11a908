"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import numpy as np

from triage_node.training.metrics import (
    dice,
    iou,
    lesion_matches,
    roc_auc,
    sens_spec,
    weighted_log_loss,
    youden_threshold,
)


def test_auc() -> None:
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert roc_auc(np.ones(3), np.ones(3)) is None


def test_operating_point() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.7, 0.9])
    assert sens_spec(y, p, 0.5) == (1.0, 0.5)
    assert youden_threshold(y, p) == 0.7


def test_weighted_log_loss_weights_any_twice() -> None:
    y = np.zeros((1, 6))
    p = np.full((1, 6), 0.5)
    assert np.isclose(weighted_log_loss(y, p), np.log(2))
    p2 = p.copy()
    p2[0, 0] = 0.9  # wrong on "any" costs twice the weight of a subtype
    p3 = p.copy()
    p3[0, 1] = 0.9
    assert weighted_log_loss(y, p2) - np.log(2) > 1.9 * (weighted_log_loss(y, p3) - np.log(2))


def test_overlap_and_lesion_matching() -> None:
    a = np.zeros((1, 10, 10), bool)
    b = np.zeros_like(a)
    a[0, :4, :4] = True
    b[0, 2:4, :4] = True
    b[0, 8:, 8:] = True
    assert np.isclose(dice(a, b), 2 * 8 / (16 + 12))
    assert np.isclose(iou(a, b), 8 / 20)
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert lesion_matches(a, b) == (1, 1, 0)
