"""Training the ich slice classifier and writing its model directory (weights, card, history)."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from triage_lab.synth.cases import CLASSES
from triage_lab.training.augment import AugmentConfig
from triage_lab.training.ich_data import SliceSet, batches, synthetic_slices
from triage_lab.training.loop import (
    TrainConfig,
    autocast,
    fit,
    mixed_precision_text,
    model_device,
    seed_everything,
)
from triage_lab.training.metrics import RSNA_WEIGHTS, roc_auc
from triage_lab.training.plots import history_plot
from triage_lab.training.synthdata import split_seeds
from triage_node.inference.card import NOT_FOR_CLINICAL_USE, ModelCard, sha256_file
from triage_node.inference.nets import build_classifier

log = logging.getLogger(__name__)

ICH_ANALYZER = "triage_node.inference.ich:IchAnalyzer"
AGGREGATION = "top2_mean"


@dataclass(frozen=True)
class IchRecipe:
    arch: str = "resnet18"
    width: float = 0.5
    size: int = 128
    context: int = 0
    batch_size: int = 32
    n_train: int = 360
    n_val: int = 40


def weighted_bce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """BCE with the RSNA class weights (any x2), the quantity the RSNA metric scores."""
    w = torch.as_tensor(RSNA_WEIGHTS, dtype=torch.float32, device=logits.device)
    loss = F.binary_cross_entropy_with_logits(logits.float(), y, reduction="none")
    return (loss * w).sum(dim=1).mean() / w.sum()


@torch.inference_mode()
def predict_slices(
    model: torch.nn.Module,
    data: SliceSet,
    context: int,
    batch: int = 128,
    amp: bool = False,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Sigmoid probabilities (N, 6) float32 for every slice of ``data``.

    Batches go to ``device`` (default: where the model's parameters are); probabilities come back to the CPU.
    """
    dev = model_device(model) if device is None else torch.device(device)
    model.eval()
    out = []
    for i in range(0, len(data), batch):
        idx = torch.arange(i, min(i + batch, len(data)))
        x = data.inputs(idx, context).to(dev, non_blocking=True)
        with autocast(dev, amp):
            out.append(torch.sigmoid(model(x).float()).cpu())
    return torch.cat(out).numpy()


def make_validate(data: SliceSet, context: int) -> Any:
    """``validate(model)`` for :func:`fit`: RSNA-weighted loss and AUCs on ``data``, run on the model's device."""

    def validate(model: torch.nn.Module) -> dict[str, float]:
        p = predict_slices(model, data, context, device=model_device(model))
        y = data.y.numpy()
        pt = torch.from_numpy(np.log(np.clip(p, 1e-7, 1)) - np.log(np.clip(1 - p, 1e-7, 1)))
        aucs = [roc_auc(y[:, i], p[:, i]) for i in range(len(CLASSES))]
        return {
            "val_loss": float(weighted_bce(pt, data.y)),
            "val_auc_any": float(aucs[0] or 0.0),
            "val_auc_mean": float(np.mean([a for a in aucs if a is not None])),
        }

    return validate


def write_model_dir(
    out: Path,
    state: dict[str, torch.Tensor],
    recipe: IchRecipe,
    cfg: TrainConfig,
    training: dict[str, Any],
    version: str,
    thresholds: dict[str, float] | None = None,
) -> ModelCard:
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights))
    sha = sha256_file(weights)
    card = ModelCard.from_dict(
        {
            "name": "ich",
            "version": version,
            "analyzer": ICH_ANALYZER,
            "weights": weights.name,
            "sha256": sha,
            "architecture": {
                "net": recipe.arch,
                "width": recipe.width,
                "in_channels": 3 * (2 * recipe.context + 1),
                "num_classes": len(CLASSES),
                "framework": "monai.networks.nets",
            },
            "input": {
                "size": recipe.size,
                "windows": ["brain 40/80", "subdural 80/200", "bone 600/2800"],
                "context": recipe.context,
                "resize": "pad to square with air, window, area-average to size",
            },
            "classes": CLASSES,
            "thresholds": thresholds or dict.fromkeys(CLASSES, 0.5),
            "intended_use": (
                "Flags head CT series that may contain acute intracranial hemorrhage (any and five RSNA subtypes) for "
                "worklist prioritisation in a research triage pipeline. " + NOT_FOR_CLINICAL_USE
            ),
            "postprocess": {"aggregation": AGGREGATION, "gradcam_layer": "layer4", "gradcam_max_slices": 12},
            "training": training,
        },
        out / "model.yaml",
    )
    card.save(out / "model.yaml")
    return card


def train_ich(
    cache: Path,
    out: Path,
    recipe: IchRecipe,
    cfg: TrainConfig,
    aug: AugmentConfig,
    version: str = "1.0.0",
    train_seeds: list[int] | None = None,
    val_seeds: list[int] | None = None,
    sets: tuple[SliceSet, SliceSet] | None = None,
) -> ModelCard:
    """Train on the synthetic cache; write ``out`` (model.safetensors, model.yaml, history.json, train_history.png).

    ``sets`` (training, validation), when given, were built from ``train_seeds``/``val_seeds`` elsewhere (e.g. by
    :mod:`triage_lab.training.device_ct`, in memory) and replace reading the cache. On a GPU the training set moves
    there whole, so batches are cut and augmented on the device; validation batches go there one at a time.
    """
    train_seeds = train_seeds if train_seeds is not None else split_seeds("train", recipe.n_train)
    val_seeds = val_seeds if val_seeds is not None else split_seeds("val", recipe.n_val)
    torch.set_num_threads(cfg.threads)
    if sets is None:
        train = synthetic_slices(cache, train_seeds, recipe.size)
        val = synthetic_slices(cache, val_seeds, recipe.size)
    else:
        train, val = sets
    if torch.device(cfg.device).type != "cpu":
        train = train.to(cfg.device)
    log.info("ich: %d training slices, %d validation slices", len(train), len(val))
    seed_everything(cfg.seed)  # the initial weights follow --seed too, whatever ran before in this process
    model = build_classifier(recipe.arch, 3 * (2 * recipe.context + 1), len(CLASSES), recipe.width)

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return weighted_bce(m(x), y)

    hist, best = fit(
        model,
        batches(train, recipe.batch_size, aug, recipe.context),
        len(train) // recipe.batch_size,
        loss_fn,
        make_validate(val, recipe.context),
        cfg,
    )
    model.load_state_dict(best)
    # Series-level thresholds are chosen on the validation cases, never on the test set.
    from triage_lab.training.evaluate import operating_thresholds, series_scores

    model.to(cfg.device)
    p = predict_slices(model, val, recipe.context)
    sp, sy = series_scores(p, val.y.numpy(), val.case.numpy())
    thresholds = operating_thresholds(sy, sp)
    training = {
        "data": (
            f"synthetic, domain-randomised: {len(train_seeds)} cases (seeds {min(train_seeds)}-{max(train_seeds)}, "
            "45% normal heads) rendered by triage_lab.synth.randomise from the invesalius head CT (axial) and an "
            "MNI152 pseudo-CT: pose, tilt, size, elastic deformation, atrophy, tissue densities, slab thickness "
            "0.6-5 mm, FOV/matrix 256-512, kernel and noise texture, HU offset +-10, beam hardening, streaks, motion, "
            "pixel storage, lesion age/edge/texture; calcification, dense-sinus and tentorium mimics in every kind "
            "of head"
        ),
        "slices": len(train),
        "validation": f"{len(val_seeds)} cases (seeds {min(val_seeds)}-{max(val_seeds)})",
        "recipe": {
            "optimizer": f"AdamW lr {cfg.lr} weight_decay {cfg.weight_decay}",
            "schedule": "one-cycle" if cfg.one_cycle else "constant",
            "epochs": cfg.epochs,
            "batch_size": recipe.batch_size,
            "progressive_sizes": list(cfg.sizes),
            "mixed_precision": mixed_precision_text(cfg),
            "augmentation": {k: v for k, v in vars(aug).items()},
            "loss": "RSNA-weighted BCE (any x2)",
            "seed": cfg.seed,
            "init_from": str(cfg.init_from) if cfg.init_from else None,
        },
        "seconds": round(hist.seconds, 1),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "thresholds_from": (
            "series-level scores on the randomised validation cases: any_hemorrhage by Youden J; each subtype at the "
            "lowest threshold with precision >= 0.8 (never shown present when none reaches it)"
        ),
    }
    (out).mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(hist.to_json(), indent=1))
    history_plot(out / "train_history.png", hist.to_json())
    return write_model_dir(out, best, recipe, cfg, training, version, thresholds)
