"""The segmenter's augmentation and progressive resizing: the full set (flips, rotation, zoom, shift, shear, blur,
contrast) moves image and mask together, masks stay binary, and crops are resized to the epoch's size."""

from __future__ import annotations

import pytest
import torch

from triage_lab.training.augment import AUGMENT_PRESETS, AugmentConfig
from triage_lab.training.loop import seed_everything
from triage_lab.training.seg_train import SEG_AUGMENT, CropSet, check_sizes, crop_batches, resize_crops


def _crops(n: int = 16, size: int = 64) -> CropSet:
    """Crops whose every image channel is bright exactly where the mask is (a rectangle per crop)."""
    g = torch.Generator().manual_seed(0)
    m = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    for i in range(n):
        y0, x0 = (int(v) for v in torch.randint(8, size // 2, (2,), generator=g))
        m[i, :, y0 : y0 + 20, x0 : x0 + 14] = 1
    x = (m.repeat(1, 3, 1, 1) * 230 + 10).to(torch.uint8)
    return CropSet(x, m)


def _disagreement(x: torch.Tensor, m: torch.Tensor) -> float:
    """Share of pixels where the thresholded image and the mask disagree."""
    return float(((x[:, 0] > 0.5).float() - m[:, 0]).abs().mean())


def test_the_full_preset_has_every_augmentation_the_issue_lists() -> None:
    full = AUGMENT_PRESETS["full"]
    assert full.hflip and full.rotate_deg == 15.0
    assert full.zoom > 0 and full.shift > 0 and full.shear > 0 and full.blur_p > 0 and full.contrast > 0
    assert full.describe() == (
        "horizontal flip, rotation +-15 deg, zoom +-10%, shift +-6%, shear +-0.05, 3x3 blur p=0.2, "
        "contrast/brightness +-10%"
    )
    assert AUGMENT_PRESETS["off"] == AugmentConfig.off() and AugmentConfig.off().describe() == "off"
    assert AUGMENT_PRESETS["flips-zoom"] == SEG_AUGMENT and SEG_AUGMENT.rotate_deg == 0.0


def test_full_augmentation_moves_image_and_mask_together_and_keeps_masks_binary() -> None:
    data = _crops()
    g = seed_everything(3)
    x, m = next(crop_batches(data, 16, AUGMENT_PRESETS["full"])(0, None, g))
    plain = data.x.float() / 255.0
    assert x.shape == (16, 3, 64, 64) and m.shape == (16, 1, 64, 64)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(m, data.m.float())  # the geometry did change
    assert not torch.allclose(x, plain)
    assert _disagreement(x, m) < 0.01  # ...and the mask followed the image
    # Blur and contrast touch the image only: the mask equals the geometry-only result from the same draws.
    g1, g2 = seed_everything(3), seed_everything(3)
    geometric = AugmentConfig(**{**AUGMENT_PRESETS["full"].__dict__, "blur_p": 0.0, "contrast": 0.0})
    _, m_full = next(crop_batches(data, 16, AUGMENT_PRESETS["full"])(0, None, g1))
    _, m_geo = next(crop_batches(data, 16, geometric)(0, None, g2))
    assert torch.equal(m_full, m_geo)


def test_progressive_resizing_resizes_image_and_mask_to_the_epoch_size() -> None:
    data = _crops()
    for size in (32, 48, 64, 80):
        x, m = next(crop_batches(data, 8, AUGMENT_PRESETS["full"])(0, size, seed_everything(1)))
        assert x.shape == (8, 3, size, size) and m.shape == (8, 1, size, size)
        assert set(m.unique().tolist()) <= {0.0, 1.0}
        assert _disagreement(x, m) < 0.02
    x0, m0 = data.x.float() / 255.0, data.m.float()
    x1, m1 = resize_crops(x0, m0, 64)
    assert x1 is x0 and m1 is m0  # the crop size itself: untouched
    _, half = resize_crops(x0, m0, 32)
    assert float(half.sum()) == pytest.approx(float(m0.sum()) / 4, rel=0.15)  # a quarter of the area, edges aside


def test_segmenter_sizes_must_be_multiples_of_4_ending_at_the_crop_size() -> None:
    check_sizes((), 64)
    check_sizes((32, 48, 64), 64)
    with pytest.raises(ValueError, match="multiples of 4, not \\[30\\]"):
        check_sizes((30, 64), 64)
    with pytest.raises(ValueError, match="crop size 64"):
        check_sizes((32, 48), 64)
