from __future__ import annotations

import numpy as np
import torch

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
