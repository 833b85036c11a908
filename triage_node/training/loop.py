"""A small, explicit training loop: AdamW, one-cycle, bf16/fp16 autocast, progressive resizing, checkpoints, tqdm."""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    lr: float = 2e-3
    weight_decay: float = 0.01
    one_cycle: bool = True
    amp: bool = True
    device: str = "cpu"
    seed: int = 0
    threads: int = 1
    sizes: tuple[int, ...] = ()  # progressive resizing: input size per epoch phase (empty: the dataset's own size)
    checkpoint_dir: Path | None = None
    init_from: Path | None = None
    progress: bool = True
    max_steps_per_epoch: int | None = None


@dataclass
class History:
    train_loss: list[float] = field(default_factory=list)
    val: list[dict[str, float]] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def autocast(device: str, enabled: bool) -> Any:
    if not enabled:
        return nullcontext()
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    return torch.autocast("cpu", dtype=torch.bfloat16)


def size_for_epoch(sizes: tuple[int, ...], epoch: int, epochs: int) -> int | None:
    """Progressive resizing: split the epochs evenly over ``sizes`` (small first)."""
    if not sizes:
        return None
    phase = min(len(sizes) - 1, epoch * len(sizes) // max(epochs, 1))
    return sizes[phase]


def load_init(model: nn.Module, path: Path) -> None:
    """Initialise from another checkpoint (transfer learning): copy every tensor whose name and shape match."""
    from safetensors.torch import load_file

    state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu")
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = model.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    own.update(matched)
    model.load_state_dict(own)
    log.info("initialised %d of %d tensors from %s", len(matched), len(own), path)


def fit(
    model: nn.Module,
    batches: Callable[[int, int | None, torch.Generator], Iterable[Batch]],
    steps_per_epoch: int,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    validate: Callable[[nn.Module], dict[str, float]] | None,
    cfg: TrainConfig,
    monitor: str = "val_loss",
    lower_is_better: bool = True,
) -> tuple[History, dict[str, torch.Tensor]]:
    """Train ``model``; returns the history and the best state dict (by ``monitor`` on validation, else the last).

    ``batches(epoch, size, generator)`` yields the epoch's batches, already augmented and resized to ``size``.
    """
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    # Trained weights drift into denormal floats, which x86 CPUs compute 10-100x slower; flush them to zero.
    torch.set_flush_denormal(True)
    g = seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    if cfg.init_from is not None:
        load_init(model, cfg.init_from)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = steps_per_epoch if cfg.max_steps_per_epoch is None else min(steps_per_epoch, cfg.max_steps_per_epoch)
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(cfg.epochs * steps, 1), pct_start=0.25)
        if cfg.one_cycle
        else None
    )
    hist = History()
    best: dict[str, torch.Tensor] | None = None
    best_score: float | None = None
    t0 = time.monotonic()
    for epoch in range(cfg.epochs):
        model.train()
        size = size_for_epoch(cfg.sizes, epoch, cfg.epochs)
        running, count = 0.0, 0
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}" + (f" @{size}" if size else ""),
                   disable=not cfg.progress, leave=False)
        for i, batch in enumerate(batches(epoch, size, g)):
            if i >= steps:
                break
            batch = tuple(t.to(device) for t in batch)
            with autocast(cfg.device, cfg.amp):
                loss = loss_fn(model, batch)
            opt.zero_grad(set_to_none=True)
            loss.float().backward()
            opt.step()
            if sched is not None:
                sched.step()
            running += float(loss.detach())
            count += 1
            bar.update(1)
            bar.set_postfix(loss=f"{running / count:.4f}")
        bar.close()
        hist.train_loss.append(running / max(count, 1))
        hist.lr.append(opt.param_groups[0]["lr"])
        metrics: dict[str, float] = {}
        if validate is not None:
            model.eval()
            metrics = validate(model)
            hist.val.append(metrics)
        log.info("epoch %d train_loss %.4f %s", epoch + 1, hist.train_loss[-1], json.dumps(metrics))
        print(f"epoch {epoch + 1} train_loss {hist.train_loss[-1]:.4f} {json.dumps(metrics)}", flush=True)
        score = metrics.get(monitor)
        if score is None or best_score is None or (score < best_score if lower_is_better else score > best_score):
            best_score = score
            best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if cfg.checkpoint_dir is not None:
            cfg.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            torch.save({"model": model.state_dict(), "epoch": epoch, "history": hist.to_json()},
                       cfg.checkpoint_dir / "last.pt")
    hist.seconds = time.monotonic() - t0
    assert best is not None
    return hist, best
