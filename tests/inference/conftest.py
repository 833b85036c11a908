"""Tiny random-weight model directories for analyzer and registry tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from triage_lab.training.ich_train import IchRecipe
from triage_lab.training.ich_train import write_model_dir as write_ich
from triage_lab.training.loop import TrainConfig
from triage_lab.training.seg_train import SegRecipe
from triage_lab.training.seg_train import write_model_dir as write_seg
from triage_node.inference.nets import build_classifier, build_segmenter
from triage_node.preprocess.volume import Volume


@pytest.fixture
def tiny_ich_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    recipe = IchRecipe(arch="resnet18", width=0.125, size=32, context=1)
    net = build_classifier("resnet18", 9, 6, 0.125)
    write_ich(tmp_path / "ich", net.state_dict(), recipe, TrainConfig(), {"data": "random weights"}, "0.0.1")
    return tmp_path / "ich"


@pytest.fixture
def tiny_seg_dir(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    recipe = SegRecipe(base=4, size=64)
    net = build_segmenter(3, 4)
    write_seg(tmp_path / "ct_segmenter", net.state_dict(), recipe, {"data": "random weights"}, "0.0.1")
    return tmp_path / "ct_segmenter"


def make_volume(hu: np.ndarray, spacing: tuple[float, float, float] = (5.0, 0.9, 0.9)) -> Volume:
    return Volume(
        pixels=hu.astype(np.float32),
        spacing=spacing,
        origin=(0.0, 0.0, 0.0),
        row_direction=(1.0, 0.0, 0.0),
        col_direction=(0.0, 1.0, 0.0),
        sop_instance_uids=tuple(f"1.2.3.{i}" for i in range(hu.shape[0])),
        modality="CT",
    )


@pytest.fixture
def phantom_volume() -> Volume:
    """A 6-slice disc head: skull ring, brain at 35 HU, a 70 HU blob on the right of the image (patient left)."""
    yy, xx = np.mgrid[:80, :96]
    r = np.hypot(yy - 40, xx - 48)
    sl = np.where(r < 30, 35.0, -1000.0)
    sl = np.where((r >= 30) & (r < 34), 1200.0, sl)
    hu = np.repeat(sl[None], 6, axis=0)
    hu[2:4, 35:45, 60:70] = 70.0
    return make_volume(hu)
