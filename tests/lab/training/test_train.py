"""Training runs a few steps on tiny synthetic data; the CLI registers its subcommands."""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import numpy as np
import torch

from triage_lab.synth.cases import CTCase, make_ct_case
from triage_lab.training.augment import AugmentConfig, augment
from triage_lab.training.ich_data import batches, from_volumes
from triage_lab.training.ich_train import make_validate, weighted_bce
from triage_lab.training.loop import TrainConfig, fit, size_for_epoch
from triage_lab.training.lrfind import lr_find
from triage_lab.training.seg_train import SEG_AUGMENT, SegRecipe, crop_batches, crops_from_volumes, seg_loss
from triage_node.inference.nets import build_classifier, build_segmenter


@functools.cache
def _cases() -> tuple[CTCase, CTCase]:
    return make_ct_case(7, ("subdural",), "mni", n_slices=6), make_ct_case(8, (), "mni", n_slices=6)


def test_ich_training_steps_reduce_nothing_break(tmp_path: Path) -> None:
    cases = _cases()
    data = from_volumes(((c.hu, c.labels) for c in cases), size=32)
    assert data.x.shape == (12, 3, 32, 32) and data.y.shape == (12, 6)
    assert data.inputs(torch.arange(3), context=1).shape == (3, 9, 32, 32)
    model = build_classifier("resnet18", 9, 6, 0.125)
    cfg = TrainConfig(epochs=2, lr=1e-3, seed=1, sizes=(24, 32), checkpoint_dir=tmp_path / "ck", progress=False)
    hist, best = fit(model, batches(data, 4, AugmentConfig(), context=1), 3,
                     lambda m, b: weighted_bce(m(b[0]), b[1]), make_validate(data, 1), cfg)
    assert len(hist.train_loss) == 2 and all(np.isfinite(hist.train_loss))
    assert "val_auc_any" in hist.val[0]
    assert (tmp_path / "ck" / "last.pt").exists()
    assert set(best) == set(model.state_dict())


def test_segmenter_training_steps() -> None:
    cases = _cases()
    crops = crops_from_volumes(((c.hu, c.hemorrhage) for c in cases), SegRecipe(size=128), np.random.default_rng(0))
    assert crops.x.shape[1:] == (3, 32, 32) and crops.m.shape[1:] == (1, 32, 32)
    assert crops.m.sum() > 0
    model = build_segmenter(3, 4)

    def loss_fn(m: torch.nn.Module, b: tuple[torch.Tensor, ...]) -> torch.Tensor:
        seg, cls = m(b[0])
        return seg_loss(seg, cls, b[1], 0.5)

    hist, _ = fit(model, crop_batches(crops, 4, SEG_AUGMENT), 2, loss_fn, None,
                  TrainConfig(epochs=1, progress=False, amp=False))
    assert np.isfinite(hist.train_loss[0])


def test_lr_finder_returns_a_suggestion() -> None:
    x = torch.rand(64, 3, 16, 16)
    y = (x.mean(dim=(1, 2, 3), keepdim=False)[:, None] > 0.5).float().repeat(1, 6)
    model = build_classifier("resnet18", 3, 6, 0.125)
    gen = ((x[i : i + 8], y[i : i + 8]) for i in range(0, 64, 8))
    lrs, losses, sugg = lr_find(model, gen, lambda m, b: weighted_bce(m(b[0]), b[1]), steps=8, amp=False)
    assert len(lrs) == len(losses) == 8
    assert lrs[0] <= sugg <= lrs[-1]


def test_augment_keeps_mask_aligned_and_is_reproducible() -> None:
    x = torch.zeros(4, 3, 32, 32)
    x[:, :, 8:16, 4:12] = 1.0
    m = (x[:, :1] > 0.5).float()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a1, m1 = augment(x, AugmentConfig(blur_p=0.0, contrast=0.0), g1, m)
    a2, _ = augment(x, AugmentConfig(blur_p=0.0, contrast=0.0), g2, m)
    assert torch.equal(a1, a2)
    assert m1 is not None
    assert ((a1[:, 0] > 0.5).float() - m1[:, 0]).abs().mean() < 0.05


def test_progressive_sizes() -> None:
    assert [size_for_epoch((96, 128), e, 4) for e in range(4)] == [96, 96, 128, 128]
    assert size_for_epoch((), 0, 4) is None


def test_cli_registers_subcommands(tmp_path: Path) -> None:
    from triage_lab.training.ct_commands import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    a = parser.parse_args(["train", "ich", "--out", str(tmp_path), "--epochs", "1", "--sizes", "96,128"])
    assert callable(a.func) and a.epochs == 1
    a = parser.parse_args(["evaluate", "ct_segmenter", "--model-dir", str(tmp_path)])
    assert callable(a.func)
    a = parser.parse_args(["lr-find", "ich"])
    assert callable(a.func)
