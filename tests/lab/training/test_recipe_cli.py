"""``triage-lab train`` / ``lr-find`` end to end on tiny data: the segmenter honours ``--augment`` and ``--sizes``,
runs are reproducible from ``--seed``, bad ``--sizes`` are usage errors, and lr-find prints a suggestion and a plot."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from triage_lab.synth.cases import CLASSES, CTCase
from triage_lab.training import seg_train
from triage_lab.training.augment import AUGMENT_PRESETS, AugmentConfig
from triage_lab.training.ct_commands import AUGMENT_CHOICES, SEG_CROP, register
from triage_lab.training.synthdata import write_case


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="triage-node")
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def _head(rng: np.random.Generator, n: int = 3, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A crude head in HU (air, skull ring, brain) with a 70 HU bleed; (hu (z, y, x), mask bool (z, y, x))."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot((yy - size / 2) / (size * 0.42), (xx - size / 2) / (size * 0.36))
    hu = np.where(r < 1.0, 1000.0, -1000.0)
    hu = np.where(r < 0.9, 35.0, hu) + rng.normal(0, 4, (n, size, size))
    cy, cx = rng.integers(size // 3, 2 * size // 3, 2)
    mask = np.zeros((n, size, size), bool)
    mask[:, cy - 6 : cy + 6, cx - 5 : cx + 5] = True
    hu[mask] = 70.0
    return hu.astype(np.float32), mask


def _nifti_pairs(folder: Path, n: int) -> Path:
    import nibabel as nib

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        hu, mask = _head(rng)
        aff = np.diag([0.9, 0.9, 5.0, 1.0])
        nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), aff), str(folder / f"s{i}_image.nii.gz"))
        nib.save(nib.Nifti1Image(mask.transpose(2, 1, 0).astype(np.uint8), aff), str(folder / f"s{i}_mask.nii.gz"))
    return folder


def test_cli_choices_match_the_code_they_name() -> None:
    assert set(AUGMENT_CHOICES) == set(AUGMENT_PRESETS)
    assert seg_train.SegRecipe().size // seg_train.SegRecipe().grid == SEG_CROP


@pytest.mark.parametrize(
    ("argv", "default"),
    [([], "flips-zoom"), (["--augment", "full"], "full"), (["--no-augment"], "off"), (["--augment", "off"], "off")],
)
def test_the_segmenter_gets_the_augmentation_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], default: str
) -> None:
    got: dict[str, Any] = {}

    def fake_train(*args: Any, **kw: Any) -> Any:
        got.update(kw)
        raise SystemExit(0)  # stop before any data is touched

    monkeypatch.setattr(seg_train, "train_segmenter", fake_train)
    a = _parser().parse_args(["train", "ct_segmenter", "--out", str(tmp_path), "--nifti-dir", str(tmp_path), *argv])
    with pytest.raises(SystemExit):
        a.func(a)
    assert got["aug"] == AUGMENT_PRESETS[default]


@pytest.mark.parametrize(("argv", "hard"), [([], False), (["--hard-negatives"], True)])
def test_the_segmenter_gets_hard_negatives_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, argv: list[str], hard: bool
) -> None:
    got: list[Any] = []

    def fake_train(cache: Any, out: Any, recipe: Any, *args: Any, **kw: Any) -> Any:
        got.append(recipe)
        raise SystemExit(0)

    monkeypatch.setattr(seg_train, "train_segmenter", fake_train)
    a = _parser().parse_args(["train", "ct_segmenter", "--out", str(tmp_path), "--nifti-dir", str(tmp_path), *argv])
    with pytest.raises(SystemExit):
        a.func(a)
    assert got[0].hard_negatives is hard


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ct_segmenter", "--sizes", "30,64"], "multiples of 4"),
        (["ct_segmenter", "--sizes", "32,48"], "crop size 64"),
        (["ich", "--size", "128", "--sizes", "96,112"], "must equal --size 128"),
    ],
)
def test_sizes_that_cannot_work_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    a = _parser().parse_args(["train", *argv[:1], "--out", str(tmp_path), *argv[1:]])
    assert a.func(a) == 2
    err = capsys.readouterr().err
    assert "triage-lab train: error: --sizes" in err and message in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_sizes_that_are_not_numbers_are_argparse_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        _parser().parse_args(["train", "ich", "--out", str(tmp_path), "--sizes", "96,big"])
    assert exc.value.code == 2 and "--sizes" in capsys.readouterr().err


def test_segmenter_training_honours_augment_and_sizes_and_repeats_from_its_seed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three tiny runs on NIfTI pairs: --augment full and --sizes 32,64 reach the batches (spied on), the card
    records them, the same seed writes the same weights and another seed other weights."""
    pairs = _nifti_pairs(tmp_path / "nifti", 3)
    seen_aug: list[AugmentConfig] = []
    seen_shapes: list[tuple[int, tuple[int, ...]]] = []
    real_augment, real_fit = seg_train.augment, seg_train.fit

    def spy_augment(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator, mask: Any = None) -> Any:
        seen_aug.append(cfg)
        return real_augment(x, cfg, g, mask)

    def spy_fit(model: Any, batches: Callable[..., Iterator[Any]], *args: Any, **kw: Any) -> Any:
        def watched(epoch: int, size: int | None, g: torch.Generator) -> Iterator[Any]:
            for x, m in batches(epoch, size, g):
                seen_shapes.append((epoch, tuple(x.shape[-2:])))
                assert m.shape[-2:] == x.shape[-2:]
                yield x, m

        return real_fit(model, watched, *args, **kw)

    monkeypatch.setattr(seg_train, "augment", spy_augment)
    monkeypatch.setattr(seg_train, "fit", spy_fit)

    def train(out: str, seed: int) -> dict[str, Any]:
        argv = [
            "train",
            "ct_segmenter",
            "--out",
            str(tmp_path / out),
            "--nifti-dir",
            str(pairs),
            "--epochs",
            "2",
            "--batch-size",
            "4",
            "--base",
            "4",
            "--max-steps-per-epoch",
            "2",
            "--sizes",
            "32,64",
            "--augment",
            "full",
            "--no-progress",
            "--seed",
            str(seed),
        ]
        a = _parser().parse_args(argv)
        assert a.func(a) == 0
        return dict(yaml.safe_load((tmp_path / out / "model.yaml").read_text()))

    first = train("a", 0)
    assert set(seen_aug) == {AUGMENT_PRESETS["full"]}
    assert set(seen_shapes) == {(0, (32, 32)), (1, (64, 64))}  # epoch 1 at 32 px, epoch 2 at the crop size
    recipe = first["training"]["recipe"]
    assert recipe["progressive_sizes"] == [32, 64]
    assert "rotation +-15 deg" in recipe["augmentation"] and "blur" in recipe["augmentation"]
    assert recipe["mixed_precision"] == "bf16 autocast"
    assert (tmp_path / "a" / "checkpoints" / "last.pt").exists()
    assert len(json.loads((tmp_path / "a" / "history.json").read_text())["train_loss"]) == 2
    assert train("b", 0)["sha256"] == first["sha256"]
    assert train("c", 1)["sha256"] != first["sha256"]


def test_lr_find_prints_a_suggestion_and_writes_the_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    hu, mask = _head(np.random.default_rng(1), n=8)
    labels = np.zeros((8, len(CLASSES)), bool)
    labels[2:6, 0] = labels[2:6, 5] = True
    case = CTCase(
        seed=0,
        source="mni",
        hu=hu.astype(np.int16),
        spacing=(5.0, 0.9, 0.9),
        masks={"subdural": mask & labels[:, :1, None]},
        labels=labels,
        tissue=np.zeros(hu.shape, np.uint8),
        acquisition=None,
    )  # type: ignore[arg-type]
    write_case(cache, 0, case)  # seed 0 is the first training seed: lr-find finds it and generates nothing
    png = tmp_path / "lr.png"
    argv = [
        "lr-find",
        "ich",
        "--cache",
        str(cache),
        "--n-train",
        "1",
        "--steps",
        "12",
        "--batch-size",
        "2",
        "--size",
        "32",
        "--width",
        "0.125",
        "--out",
        str(png),
    ]
    a = _parser().parse_args(argv)
    assert a.func(a) == 0
    out = capsys.readouterr().out
    assert "suggested learning rate" in out and str(png) in out
    sugg = float(out.split("suggested learning rate ")[1].split()[0])
    assert 1e-6 <= sugg <= 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
