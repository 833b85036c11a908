"""Crop-grid cutting/reassembly and connected-component post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from triage_node.inference.cropgrid import cut_grid, keep_components, pad_to_multiple, reassemble_grid
from triage_node.inference.segmenter import grid_crops, grid_join


def test_cut_and_reassemble_round_trip() -> None:
    img = np.random.default_rng(0).normal(size=(2, 3, 64, 48))
    crops = cut_grid(img, 4)
    assert crops.shape == (2, 3, 16, 16, 12)
    assert np.array_equal(crops[0, 0, 1], img[0, 0, :16, 12:24])  # row-major: crop 1 is top row, second column
    assert np.array_equal(reassemble_grid(crops, 4), img)


def test_torch_grid_matches_numpy() -> None:
    img = torch.randn(2, 3, 32, 32)
    crops = grid_crops(img, 4)
    assert crops.shape == (32, 3, 8, 8)
    ref = cut_grid(img.numpy(), 4)  # (2, 3, 16, 8, 8)
    assert np.allclose(crops.reshape(2, 16, 3, 8, 8).numpy(), np.moveaxis(ref, 2, 1))
    assert torch.equal(grid_join(crops, 4), img)


def test_cut_rejects_indivisible_and_pad_fixes_it() -> None:
    img = np.zeros((30, 30))
    with pytest.raises(ValueError, match="divisible by the grid size 4"):
        cut_grid(img, 4)
    padded, orig = pad_to_multiple(img, 4)
    assert padded.shape == (32, 32) and orig == (30, 30)


def test_keep_largest_component_and_min_area() -> None:
    m = np.zeros((3, 40, 40), bool)
    m[1, 2:12, 2:12] = True  # 100 px
    m[1, 20:25, 20:25] = True  # 25 px
    kept = keep_components(m, (5.0, 1.0, 1.0), min_area_mm2=50, max_components=1)
    assert kept.sum() == 100 and kept[1, 5, 5]
    both = keep_components(m, (5.0, 1.0, 1.0), min_area_mm2=20, max_components=0)
    assert both.sum() == 125
    # 100 px at 0.5 mm pixels is 25 mm^2: under a 30 mm^2 minimum the only kept component is dropped too.
    assert not keep_components(m, (5.0, 0.5, 0.5), min_area_mm2=30, max_components=1).any()
    assert not keep_components(np.zeros((2, 4, 4), bool), (1.0, 1.0, 1.0), 0.0).any()


def test_a_rejected_large_component_does_not_hide_an_accepted_smaller_one() -> None:
    m = np.zeros((3, 40, 40), bool)
    m[1, 2:12, 2:12] = True  # 100 px: rejected (a mimic)
    m[1, 20:25, 20:25] = True  # 25 px: accepted
    m[1, 30:33, 30:33] = True  # 9 px: accepted, but only one component is kept
    judged: list[int] = []

    def accept(c: np.ndarray) -> bool:
        judged.append(int(c.sum()))
        return not c[1, 5, 5]

    kept = keep_components(m, (5.0, 1.0, 1.0), min_area_mm2=5, max_components=1, accept=accept)
    assert kept.sum() == 25 and kept[1, 22, 22]
    assert judged == [100, 25]  # largest first, and no further than needed
    assert keep_components(m, (5.0, 1.0, 1.0), 5, max_components=0, accept=accept).sum() == 34
    # Without a test the rule is the old one: the largest, then the size rules.
    assert keep_components(m, (5.0, 1.0, 1.0), 5, max_components=1).sum() == 100
