"""Key-image rendering: grey levels, outline, Grad-CAM blend, masks.npz lookup."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from triage_node.inference.types import ModelOutput
from triage_node.results.masks import masks_path, save_masks
from triage_node.worklist.key_images import (
    OUTLINE_RGB,
    Overlay,
    RenderError,
    compose,
    encode_png,
    inside,
    load_overlay,
    outline,
    to_gray,
)


def test_ct_brain_window() -> None:
    gray = to_gray(np.array([[-1000.0, 0.0, 40.0, 80.0, 1000.0]]), "CT")
    assert gray.dtype == np.uint8
    assert gray.tolist() == [[0, 0, 128, 255, 255]]


def test_mr_percentile_stretch() -> None:
    pixels = np.linspace(0, 1000, 101, dtype=np.float32).reshape(1, -1)
    gray = to_gray(pixels, "MR")
    assert gray[0, 0] == 0 and gray[0, -1] == 255


def test_outline_is_the_border_only() -> None:
    mask = np.zeros((7, 7), dtype=bool)
    mask[2:5, 2:5] = True
    border = outline(mask)
    assert border.sum() == 8 and not border[3, 3]


def test_compose_draws_outline_over_heat_and_keeps_grey_elsewhere() -> None:
    gray = np.full((8, 8), 100, dtype=np.uint8)
    mask = np.zeros((8, 8), dtype=bool)
    mask[2:6, 2:6] = True
    heat = np.zeros((8, 8), dtype=np.uint8)
    heat[3:5, 3:5] = 255
    rgb = compose(gray, Overlay(mask=mask, heatmap=heat))
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[2, 2]) == OUTLINE_RGB
    assert rgb[3, 3, 0] > rgb[3, 3, 2]  # hot = red end of the ramp
    assert tuple(rgb[0, 0]) == (100, 100, 100)


def test_compose_resizes_masks_of_another_matrix() -> None:
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 1:3] = True
    rgb = compose(np.zeros((8, 8), dtype=np.uint8), Overlay(mask=mask))
    assert (rgb == OUTLINE_RGB).all(axis=-1).sum() > 0


def test_encode_png_scales_down_only() -> None:
    rgb = np.zeros((600, 300, 3), dtype=np.uint8)
    assert Image.open(io.BytesIO(encode_png(rgb, 256))).size == (128, 256)
    assert Image.open(io.BytesIO(encode_png(rgb[:100, :50], 256))).size == (50, 100)


def test_load_overlay_by_label_or_all_labels(tmp_path: Path) -> None:
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[1, 1, 1] = True
    other = np.zeros((2, 4, 4), dtype=bool)
    other[1, 2, 2] = True
    heat = np.full((2, 4, 4), 7.5 / 255.0)  # stored as uint8 7
    path = masks_path(tmp_path)
    save_masks(path, ["1.1", "1.2"], [ModelOutput("ich", "1.0.0", (), {"ich": masks, "sdh": other}, {"ich": heat})])
    ich = load_overlay(path, "1.2", "ich")
    assert ich.mask is not None and ich.mask.sum() == 1 and ich.mask[1, 1]
    union = load_overlay(path, "1.2", "any_hemorrhage")
    assert union.mask is not None and union.mask.sum() == 2
    assert union.heatmap is not None and union.heatmap.max() == 7
    assert load_overlay(path, "9.9", None) == Overlay()
    assert load_overlay(tmp_path / "missing.npz", "1.2", None) == Overlay()


def test_a_corrupt_masks_file_is_a_render_error(tmp_path: Path) -> None:
    path = tmp_path / "masks.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(RenderError, match="cannot read masks file"):
        load_overlay(path, "1.2", None)


def test_inside_refuses_paths_that_leave_the_base(tmp_path: Path) -> None:
    assert inside(tmp_path, "a/b.dcm") == tmp_path.resolve() / "a" / "b.dcm"
    with pytest.raises(RenderError, match="leaves"):
        inside(tmp_path, "../etc/passwd")
