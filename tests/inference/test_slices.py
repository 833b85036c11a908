from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from triage_node.inference import slices
from triage_node.inference.slices import context_rows, window_resize, with_context


def test_context_rows_equal_the_whole_stack_row_for_row() -> None:
    win = torch.rand(7, 3, 8, 8)
    whole = with_context(win, 2)
    idx = torch.tensor([0, 3, 6])
    assert torch.equal(context_rows(win, idx, 2), whole[idx])
    assert torch.equal(context_rows(win, idx, 0), win[idx])


def test_windowing_in_chunks_equals_windowing_at_once(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    hu = np.random.default_rng(0).normal(40, 300, (37, 64, 48)).astype(np.float32)
    chunked = window_resize(hu, 32)
    monkeypatch.setattr(slices, "CHUNK", 1000)
    assert torch.allclose(chunked, window_resize(hu, 32))
    assert chunked.shape == (37, 3, 32, 32)


def _phantom(noise: float, size: int = 256, seed: int = 0) -> np.ndarray:
    """A head-like slab: a 30 HU disc in air, with white noise of ``noise`` HU."""
    yy, xx = np.mgrid[:size, :size]
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.4) ** 2
    hu = np.where(disc, 30.0, -1000.0)[None].repeat(20, axis=0).astype(np.float32)
    return hu + np.random.default_rng(seed).normal(0, noise, hu.shape).astype(np.float32) * disc


def test_noise_is_measured_at_the_model_input_size() -> None:
    # White noise of s HU averaged 256 -> 128 (2 x 2 pixels) is s / 2; the median reference takes a little more.
    for s in (4.0, 12.0, 30.0):
        assert slices.noise_hu(_phantom(s), 128) == pytest.approx(s / 2, rel=0.25)
    assert np.isnan(slices.noise_hu(np.full((4, 64, 64), -1000.0, np.float32), 32))  # no soft tissue


def test_a_series_noisier_than_the_limit_is_smoothed_within_it_and_others_are_untouched() -> None:
    quiet = _phantom(4.0)
    out, noise, sigma = slices.match_noise(quiet, 128, 8.0)
    assert out is quiet and sigma == 0.0 and noise < 8.0
    loud = _phantom(40.0)
    out, noise, sigma = slices.match_noise(loud, 128, 8.0)
    assert noise > 15.0 and sigma in slices.SMOOTHING_STEPS
    assert slices.noise_hu(out, 128) <= 8.0
    assert abs(float(out[:, 128, 128].mean()) - 30.0) < 3.0  # the tissue's density is kept
    # The smallest step that reaches the limit: one step less would not.
    i = slices.SMOOTHING_STEPS.index(sigma)
    if i > 0:
        s = slices.SMOOTHING_STEPS[i - 1] * 2
        assert slices.noise_hu(ndimage.gaussian_filter(loud, (0, s, s)), 128) > 8.0
    assert slices.match_noise(loud, 128, None)[0] is loud  # no limit on the card: nothing is done
