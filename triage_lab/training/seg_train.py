"""Training the crop-grid segmenter: 4 x 4 grid crops (16x the data), gated loss, model directory writer."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from triage_lab.training.augment import AUGMENT_PRESETS, AugmentConfig, augment
from triage_lab.training.loop import TrainConfig, fit, mixed_precision_text, model_device, seed_everything
from triage_lab.training.plots import history_plot
from triage_lab.training.synthdata import iter_cases, split_seeds
from triage_node.inference.card import NOT_FOR_CLINICAL_USE, ModelCard, sha256_file
from triage_node.inference.nets import build_segmenter
from triage_node.inference.segmenter import grid_crops, normalise

log = logging.getLogger(__name__)

SEG_ANALYZER = "triage_node.inference.segmenter:CropGridSegmenter"
# The study dropped components under 1200 px on its images; at this model's ~1 mm pixels we use 30 mm^2 on the largest
# in-plane cross-section, which keeps the smallest synthetic bleeds (a few mm across) and drops speckle.
MIN_AREA_MM2 = 30.0
# The segmenter's default: the study's augmentations that helped, flips and small zoom (``--augment full`` adds
# rotation, shift, shear and blur).
SEG_AUGMENT = AUGMENT_PRESETS["flips-zoom"]


@dataclass(frozen=True)
class SegRecipe:
    base: int = 16
    size: int = 256
    grid: int = 4
    batch_size: int = 32
    n_train: int = 360
    n_val: int = 40
    kind: str = "ct_windows"
    cls_weight: float = 0.5
    neg_per_pos: float = 1.0
    hard_negatives: bool = False  # volumes without lesion give 24 crops, half the brightest


@dataclass
class CropSet:
    """``x`` uint8 (N, C, h, w), ``m`` uint8 (N, 1, h, w) lesion masks."""

    x: torch.Tensor
    m: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])


def crops_from_volumes(
    volumes: Iterable[tuple[np.ndarray, np.ndarray]], recipe: SegRecipe, rng: np.random.Generator
) -> CropSet:
    """All lesion crops plus a random sample of tissue crops without lesion from (pixels, mask bool) volumes."""
    xs, ms = [], []
    for pixels, mask in volumes:
        x = normalise(pixels, recipe.kind, recipe.size)
        m = torch.from_numpy(mask.astype(np.float32))[:, None]
        if m.shape[-1] != recipe.size or m.shape[-2] != recipe.size:
            s = max(m.shape[-2:])
            pad = torch.zeros(m.shape[0], 1, s, s)
            y0, x0 = (s - m.shape[-2]) // 2, (s - m.shape[-1]) // 2
            pad[..., y0 : y0 + m.shape[-2], x0 : x0 + m.shape[-1]] = m
            m = F.interpolate(pad, size=(recipe.size, recipe.size), mode="nearest")
        cx, cm = grid_crops(x, recipe.grid), grid_crops(m, recipe.grid)
        pos = cm.sum(dim=(1, 2, 3)) > 0
        tissue = cx[:, 0].mean(dim=(1, 2)) > 0.03
        neg_idx = np.flatnonzero((~pos & tissue).numpy())
        if recipe.hard_negatives and not bool(pos.any()):
            # A volume without lesion: more crops, half of them the brightest (where false positives come from).
            n_neg = min(len(neg_idx), 24)
            bright = cx[neg_idx, 0].flatten(1).quantile(0.99, dim=1).numpy()
            hard = neg_idx[np.argsort(-bright)[: n_neg // 2]]
            rest = np.setdiff1d(neg_idx, hard)
            pick = np.concatenate([hard, rng.choice(rest, min(len(rest), n_neg - len(hard)), replace=False)])
        else:
            n_neg = min(len(neg_idx), max(8, int(pos.sum() * recipe.neg_per_pos)))
            pick = rng.choice(neg_idx, n_neg, replace=False)
        take = np.concatenate([np.flatnonzero(pos.numpy()), pick]).astype(np.int64)
        xs.append((cx[take] * 255).round().to(torch.uint8))
        ms.append(cm[take].to(torch.uint8))
    return CropSet(torch.cat(xs), torch.cat(ms))


def synthetic_crops(cache: Path, seeds: list[int], recipe: SegRecipe, seed: int) -> CropSet:
    rng = np.random.default_rng(seed)
    return crops_from_volumes(((c.hu, c.hemorrhage) for c in iter_cases(cache, seeds)), recipe, rng)


def seg_loss(seg: torch.Tensor, cls: torch.Tensor, m: torch.Tensor, cls_weight: float) -> torch.Tensor:
    """Weighted BCE of the gate + BCE and soft Dice of the segmentation (Dice over the batch's lesion crops)."""
    m = m.float()
    has = (m.sum(dim=(1, 2, 3)) > 0).float()
    l_cls = F.binary_cross_entropy_with_logits(cls.float(), has)
    l_bce = F.binary_cross_entropy_with_logits(seg.float(), m, pos_weight=torch.tensor(2.0, device=m.device))
    p = torch.sigmoid(seg.float())
    inter = (p * m).sum()
    l_dice = 1 - (2 * inter + 1) / (p.sum() + m.sum() + 1)
    return cls_weight * l_cls + l_bce + l_dice


def resize_crops(x: torch.Tensor, m: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crops ``x`` float (N, C, h, w) and masks ``m`` 0/1 (N, 1, h, w) resampled to (size, size).

    The image is area-averaged when it shrinks and bilinear when it grows; the mask goes the same way and is
    thresholded at 0.5, so it stays binary and keeps the lesion where the image has it.
    """
    if x.shape[-1] == size and x.shape[-2] == size:
        return x, m
    mode = "area" if size < x.shape[-1] else "bilinear"
    kw: dict[str, Any] = {} if mode == "area" else {"align_corners": False}
    x = F.interpolate(x, size=(size, size), mode=mode, **kw)
    m = (F.interpolate(m.float(), size=(size, size), mode=mode, **kw) >= 0.5).to(m.dtype)
    return x, m


def check_sizes(sizes: tuple[int, ...], crop: int) -> None:
    """Progressive resizing for the segmenter: crop sizes, each a multiple of 4 (two poolings), ending at ``crop``."""
    bad = [s for s in sizes if s <= 0 or s % 4]
    if bad:
        raise ValueError(f"sizes {list(sizes)}: segmenter crop sizes must be positive multiples of 4, not {bad}")
    if sizes and sizes[-1] != crop:
        raise ValueError(f"sizes {list(sizes)}: the last size must be the crop size {crop} the model runs at")


def crop_batches(data: CropSet, batch_size: int, aug: AugmentConfig) -> Any:
    """The ``batches(epoch, size, generator)`` callable for :func:`fit`: shuffled crops, augmented (image and mask
    together), then resized to ``size`` when progressive resizing asks for another size than the crops'."""

    def gen(epoch: int, size: int | None, g: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(data), generator=g)
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            x, m = augment(data.x[idx].float() / 255.0, aug, g, data.m[idx].float())
            assert m is not None
            if size is not None:
                x, m = resize_crops(x, m, size)
            yield x, m

    return gen


def make_validate(data: CropSet, recipe: SegRecipe) -> Any:
    """``validate(model)`` for :func:`fit`: loss and crop Dice on ``data``; batches go to the model's device and the
    network's outputs come back to the CPU for the metrics."""

    @torch.inference_mode()
    def validate(model: torch.nn.Module) -> dict[str, float]:
        dev = model_device(model)
        losses, inter, total = [], 0.0, 0.0
        for i in range(0, len(data), 128):
            x = data.x[i : i + 128].float() / 255.0
            m = data.m[i : i + 128].float()
            seg, cls = (t.float().cpu() for t in model(x.to(dev, non_blocking=True)))
            losses.append(float(seg_loss(seg, cls, m, recipe.cls_weight)) * len(x))
            pred = (torch.sigmoid(seg) >= 0.5).float() * (torch.sigmoid(cls) >= 0.5).float()[:, None, None, None]
            inter += float((pred * m).sum())
            total += float(pred.sum() + m.sum())
        return {"val_loss": sum(losses) / len(data), "val_dice_crops": 2 * inter / max(total, 1.0)}

    return validate


def write_model_dir(
    out: Path,
    state: dict[str, torch.Tensor],
    recipe: SegRecipe,
    training: dict[str, Any],
    version: str,
    name: str = "ct_segmenter",
    finding_label: str = "hemorrhage",
) -> ModelCard:
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    sha = sha256_file(weights)
    in_ch = 3 if recipe.kind == "ct_windows" else 1
    card = ModelCard.from_dict(
        {
            "name": name,
            "version": version,
            "analyzer": SEG_ANALYZER,
            "weights": weights.name,
            "sha256": sha,
            "architecture": {
                "net": "crop-grid encoder-decoder (dilations 1/2/4) with linear+sigmoid gate",
                "in_channels": in_ch,
                "base": recipe.base,
                "framework": "torch + monai.networks.blocks",
            },
            "input": {
                "kind": recipe.kind,
                "size": recipe.size,
                "windows": ["brain 40/80", "subdural 80/200", "bone 600/2800"] if in_ch == 3 else [],
                "resize": "pad to square, resample to size; mask resampled back to the original grid",
            },
            "classes": (finding_label,),
            "thresholds": {"gate": 0.5, "segmentation": 0.5},
            "intended_use": (
                f"Outlines the extent of {finding_label} and estimates its volume on slices of a series flagged by the "
                "triage pipeline, for display in DICOM SEG. " + NOT_FOR_CLINICAL_USE
            ),
            "postprocess": {
                "grid": recipe.grid,
                "flip_tta": True,
                "max_components": 1,
                "components": "3-D, face-connected (scipy.ndimage.label default)",
                "min_area_mm2": MIN_AREA_MM2,
                "finding_label": finding_label,
            },
            "training": training,
        },
        out / "model.yaml",
    )
    card.save(out / "model.yaml")
    return card


def train_segmenter(
    cache: Path,
    out: Path,
    recipe: SegRecipe,
    cfg: TrainConfig,
    version: str = "1.0.0",
    nifti_dir: Path | None = None,
    aug: AugmentConfig = SEG_AUGMENT,
    sets: tuple[CropSet, CropSet] | None = None,
    data_desc: str | None = None,
) -> ModelCard:
    """Train on the synthetic cache (or NIfTI image/mask pairs, or ready ``sets`` described by ``data_desc``) and write
    ``out``. On a GPU the training crops move there whole.

    ``cfg.sizes`` (progressive resizing) are crop sizes and must end at the crop size ``recipe.size // recipe.grid``.
    """
    check_sizes(cfg.sizes, recipe.size // recipe.grid)
    torch.set_num_threads(cfg.threads)
    if sets is not None:
        train, val = sets
        data_desc = data_desc or "crops built in memory"
    elif nifti_dir is not None:
        from triage_lab.training.nifti import split_pairs

        tr_vols, va_vols = split_pairs(nifti_dir)
        rng = np.random.default_rng(cfg.seed)
        train = crops_from_volumes(tr_vols, recipe, rng)
        val = crops_from_volumes(va_vols, recipe, rng)
        data_desc = f"NIfTI image/mask pairs from {nifti_dir}"
    else:
        tr_seeds, va_seeds = split_seeds("train", recipe.n_train), split_seeds("val", recipe.n_val)
        train = synthetic_crops(cache, tr_seeds, recipe, cfg.seed)
        val = synthetic_crops(cache, va_seeds, recipe, cfg.seed + 1)
        data_desc = (
            f"synthetic, domain-randomised: {len(tr_seeds)} cases (seeds {tr_seeds[0]}-{tr_seeds[-1]}, 45% normal "
            "heads with calcification, dense-sinus and tentorium mimics) rendered by triage_lab.synth.randomise from "
            "the invesalius head CT and an MNI152 pseudo-CT; all lesion crops plus as many tissue crops"
            + (", and 24 crops of each normal head, half of them the brightest (hard negatives)"
               if recipe.hard_negatives else "")
        )
    if torch.device(cfg.device).type != "cpu":
        train = CropSet(train.x.to(cfg.device), train.m.to(cfg.device))
    log.info("segmenter: %d training crops, %d validation crops", len(train), len(val))
    seed_everything(cfg.seed)  # the initial weights follow --seed too, whatever ran before in this process
    model = build_segmenter(int(train.x.shape[1]), recipe.base)

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, mask = batch
        seg, cls = m(x)
        return seg_loss(seg, cls, mask, recipe.cls_weight)

    hist, best = fit(
        model,
        crop_batches(train, recipe.batch_size, aug),
        len(train) // recipe.batch_size,
        loss_fn,
        make_validate(val, recipe),
        cfg,
    )
    training = {
        "data": data_desc,
        "crops": len(train),
        "recipe": {
            "optimizer": f"AdamW lr {cfg.lr} weight_decay {cfg.weight_decay}",
            "schedule": "one-cycle" if cfg.one_cycle else "constant",
            "epochs": cfg.epochs,
            "batch_size": recipe.batch_size,
            "progressive_sizes": list(cfg.sizes),
            "mixed_precision": mixed_precision_text(cfg),
            "augmentation": aug.describe(),
            "loss": f"{recipe.cls_weight} x BCE(gate) + BCE(seg, pos_weight 2) + soft Dice(seg)",
            "seed": cfg.seed,
            "init_from": str(cfg.init_from) if cfg.init_from else None,
        },
        "seconds": round(hist.seconds, 1),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(hist.to_json(), indent=1))
    history_plot(out / "train_history.png", hist.to_json())
    return write_model_dir(out, best, recipe, training, version)
