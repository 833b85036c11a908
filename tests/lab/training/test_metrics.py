"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from triage_lab.training.metrics import (
    dice,
    gap_middle,
    iou,
    lesion_matches,
    lesion_scores,
    roc_auc,
    sens_spec,
    unpack_lesions,
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
    # J is best for any cut in (0.6, 0.7]: the threshold is the middle of that gap, not a case's own score
    assert youden_threshold(y, p) == pytest.approx(0.65)


def test_thresholds_sit_in_the_middle_of_the_gap_not_on_a_cases_score() -> None:
    """A threshold equal to a validation positive's score loses that case when it scores a hair lower elsewhere
    (bf16 on another CPU): both operating-point rules keep a margin on each side."""
    from triage_lab.training.evaluate import precision_threshold

    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    p = np.array([0.1, 0.3, 0.848, 0.916, 0.95, 0.97, 0.2, 0.99])
    t = youden_threshold(y, p)
    assert t == pytest.approx((0.848 + 0.916) / 2)
    assert sens_spec(y, p - 1e-3, t) == (1.0, 1.0)
    assert sens_spec(y, p + 1e-3, t) == (1.0, 1.0)
    # precision >= 0.8 holds down to 0.848 (4 of 5 right): the subtype cut goes between 0.848 and 0.3
    assert precision_threshold(y, p) == pytest.approx((0.848 + 0.3) / 2)
    assert gap_middle(p, 0.1) == 0.1  # nothing below the lowest score


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
    assert lesion_matches([a], b) == (1, 1, 0)


def _box(shape: tuple[int, int, int], z: slice, y: slice, x: slice) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[z, y, x] = True
    return m


def test_fragmented_truth_lesion_counts_once() -> None:
    # One drawn lesion in three separate pieces (like subarachnoid sulcal bits); the prediction finds one piece.
    shape = (4, 20, 20)
    lesion = _box(shape, slice(0, 2), slice(0, 3), slice(0, 3))
    lesion |= _box(shape, slice(0, 1), slice(10, 12), slice(10, 12))
    lesion[3, 18, 18] = True
    pred = _box(shape, slice(0, 2), slice(0, 3), slice(0, 3))
    assert lesion_matches([lesion], pred) == (1, 0, 0)
    assert lesion_matches([lesion], np.zeros(shape, bool)) == (0, 0, 1)


def test_prediction_touching_two_lesions_finds_both() -> None:
    shape = (2, 20, 20)
    left = _box(shape, slice(0, 2), slice(5, 10), slice(0, 5))
    right = _box(shape, slice(0, 2), slice(5, 10), slice(6, 11))
    pred = _box(shape, slice(0, 2), slice(6, 9), slice(2, 9))  # one component bridging both
    assert lesion_matches([left, right], pred) == (2, 0, 0)


def test_false_positive_and_miss() -> None:
    shape = (3, 20, 20)
    found = _box(shape, slice(0, 3), slice(0, 4), slice(0, 4))
    missed = _box(shape, slice(1, 2), slice(15, 18), slice(0, 3))
    pred = _box(shape, slice(0, 3), slice(1, 3), slice(1, 3)) | _box(shape, slice(2, 3), slice(10, 12), slice(15, 17))
    assert lesion_matches([found, missed], pred) == (1, 1, 1)
    assert lesion_matches([np.zeros(shape, bool)], pred) == (0, 2, 0)  # an empty drawn mask is no lesion
    assert lesion_scores(1, 1, 1) == {"precision": 0.5, "recall": 0.5, "f1": 0.5}
    assert lesion_scores(0, 0, 0) == {"precision": None, "recall": None, "f1": None}


def test_unpack_lesions_one_mask_per_bit() -> None:
    bits = np.zeros((1, 2, 2), np.uint8)
    bits[0, 0, 0] = 0b101
    bits[0, 1, 1] = 0b100
    masks = unpack_lesions(bits)
    assert len(masks) == 2
    assert masks[0].sum() == 1 and masks[1].sum() == 2
