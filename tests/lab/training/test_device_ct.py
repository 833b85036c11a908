"""The one-run CT trainer for a lent GPU machine (triage_lab.training.device_ct), on the CPU at the smallest size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from triage_lab.synth.headct import DEFAULT_PATH
from triage_lab.training.device_ct import epochs_within, main, render_case, render_sets
from triage_lab.training.ich_data import from_volumes
from triage_lab.training.seg_train import SegRecipe, crops_from_volumes
from triage_lab.training.synthdata import source_for_seed

needs_head = pytest.mark.skipif(not DEFAULT_PATH.exists(), reason="invesalius-examples not installed")


def test_epochs_fit_the_time_left_with_a_tenth_spare() -> None:
    assert epochs_within(100.0, 9.0, most=16) == 10
    assert epochs_within(1000.0, 9.0, most=16) == 16
    assert epochs_within(1.0, 9.0, most=16) == 1  # at least one epoch


@needs_head
def test_a_rendered_case_gives_the_same_slices_and_crops_as_the_cache_route() -> None:
    from triage_lab.synth.cases import make_ct_case

    recipe = SegRecipe()
    seed, win, labels, cx, cm = render_case((7, 64, recipe))
    case = make_ct_case(7, source=source_for_seed(7), matrix=None)
    ref = from_volumes([(case.hu, case.labels)], 64)
    assert seed == 7 and torch.equal(win, ref.x) and np.array_equal(labels, case.labels)
    lesion = np.zeros(case.hu.shape, bool)
    for m in case.masks.values():
        lesion |= m
    crops = crops_from_volumes([(case.hu, lesion)], recipe, np.random.default_rng(7))
    assert torch.equal(cx, crops.x) and torch.equal(cm, crops.m)


@needs_head
def test_rendering_stops_at_the_deadline_with_a_prefix_of_the_seeds() -> None:
    seeds, slices, crops = render_sets([3, 4, 5], 1, 32, SegRecipe(), deadline=0.0)
    assert seeds == [3]
    assert int(slices.case.max()) == 0 and len(crops) > 0


@needs_head
def test_a_small_run_writes_both_model_directories_and_the_run_record(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["--out", str(out), "--n-train", "2", "--n-val", "2", "--jobs", "2", "--budget-s", "300"]
    argv += ["--ich-epochs", "1", "--seg-epochs", "1", "--ich-batch", "8", "--seg-batch", "8", "--threads", "1"]
    assert main(argv) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["cases"] == {"train": 2, "val": 2} and run["ich"]["epochs"] == 1
    for name in ("ich", "ct_segmenter"):
        assert (out / name / "model.safetensors").is_file()
        assert "seeds 0-1" in (out / name / "model.yaml").read_text()
