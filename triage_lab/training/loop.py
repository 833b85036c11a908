"""A small, explicit training loop: AdamW, one-cycle, bf16 autocast (fp16 + loss scaling on GPUs without bf16),
progressive resizing, checkpoints, tqdm."""

from __future__ import annotations

import json
import logging
import os
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
    resume: bool = False  # continue from checkpoint_dir/last.pt (same epochs and steps per epoch)
    deadline: float | None = None  # time.monotonic() by which training stops (a lent machine's limit); best is kept


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


def cuda_bf16() -> bool:
    """True when the CUDA GPU computes bf16 natively (compute capability 8.0 and later)."""
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))


def amp_dtype(device: str | torch.device) -> torch.dtype:
    """bf16 on the CPU and on GPUs with native bf16 (fp32's range: no loss scaling); fp16 on older GPUs."""
    if torch.device(device).type == "cuda" and not cuda_bf16():
        return torch.float16
    return torch.bfloat16


def autocast(device: str | torch.device, enabled: bool) -> Any:
    """Mixed precision for ``device``: bf16 autocast on the CPU and on GPUs with native bf16, fp16 on older GPUs,
    nothing elsewhere or when disabled."""
    kind = torch.device(device).type
    if not enabled or kind not in ("cuda", "cpu"):
        return nullcontext()
    return torch.autocast(kind, dtype=amp_dtype(device))


def needs_grad_scaler(device: str | torch.device, amp: bool) -> bool:
    """fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none."""
    return amp and torch.device(device).type == "cuda" and amp_dtype(device) == torch.float16


def grad_scaler(device: str | torch.device, amp: bool) -> torch.amp.GradScaler:
    """A GradScaler that scales for fp16 on a GPU without bf16 and is a pass-through everywhere else."""
    return torch.amp.GradScaler("cuda", enabled=needs_grad_scaler(device, amp))


def mixed_precision_text(cfg: TrainConfig) -> str:
    """The model card's words for ``cfg``'s mixed precision."""
    if not cfg.amp:
        return "off"
    return "fp16 autocast with loss scaling" if needs_grad_scaler(cfg.device, cfg.amp) else "bf16 autocast"


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters live (validation puts its batches there)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def train_step(
    model: nn.Module,
    batch: Batch,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    opt: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    amp: bool,
) -> torch.Tensor:
    """One optimiser step on ``batch`` (moved to ``device``); returns the detached loss (still on ``device``)."""
    batch = tuple(t.to(device, non_blocking=True) for t in batch)
    with autocast(device, amp):
        loss = loss_fn(model, batch)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss.float()).backward()
    scaler.step(opt)  # unscales first; skips the step when fp16 gradients overflowed
    scaler.update()
    return loss.detach()


def size_for_epoch(sizes: tuple[int, ...], epoch: int, epochs: int) -> int | None:
    """Progressive resizing: split the epochs evenly over ``sizes`` (small first)."""
    if not sizes:
        return None
    phase = min(len(sizes) - 1, epoch * len(sizes) // max(epochs, 1))
    return sizes[phase]


@dataclass(frozen=True)
class InitReport:
    """What :func:`load_init` did: tensor names copied, skipped for a shape mismatch, absent from the checkpoint."""

    copied: tuple[str, ...]
    shape_mismatch: tuple[str, ...]
    missing: tuple[str, ...]


def load_init(model: nn.Module, path: Path) -> InitReport:
    """Initialise from another checkpoint (transfer learning): copy every tensor whose name and shape match.

    ``path``: safetensors, a torch state dict, or a training checkpoint (``{"model": state dict, ...}``). Tensors of
    the model that the checkpoint lacks or has in another shape keep their current values and are logged. A checkpoint
    that shares no tensor with the model is an error (it is almost certainly the wrong file).
    """
    from safetensors.torch import load_file

    state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu")
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    own = model.state_dict()
    copied = tuple(k for k, v in state.items() if k in own and own[k].shape == v.shape)
    mismatch = tuple(k for k, v in state.items() if k in own and own[k].shape != v.shape)
    missing = tuple(k for k in own if k not in state)
    if not copied:
        raise ValueError(f"init-from {path}: no tensor matches the model's names and shapes (wrong checkpoint?)")
    own.update({k: state[k] for k in copied})
    model.load_state_dict(own)
    log.info("initialised %d of %d tensors from %s", len(copied), len(own), path)
    if mismatch:
        log.warning("init-from %s: %d tensors skipped for their shape: %s", path, len(mismatch), ", ".join(mismatch))
    if missing:
        log.info(
            "init-from %s: %d tensors not in the checkpoint keep their init: %s", path, len(missing), ", ".join(missing)
        )
    return InitReport(copied, mismatch, missing)


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, total_steps: int
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.OneCycleLR | None]:
    """AdamW (decoupled weight decay ``cfg.weight_decay``) over the trainable parameters, and the one-cycle schedule
    peaking at ``cfg.lr`` a quarter of the way through ``total_steps`` (None with ``one_cycle`` off: constant LR)."""
    params = [p for p in model.parameters() if p.requires_grad]  # frozen blocks (transfer learning) stay out
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = max(total_steps, 1)
    # OneCycleLR divides by (pct_start * total_steps - 1): a run of exactly 4 steps would divide by zero.
    pct_start = 0.5 if total == 4 else 0.25
    sched = (
        torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=pct_start)
        if cfg.one_cycle
        else None
    )
    return opt, sched


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary name, fsync, rename: a crash never leaves a half-written ``last.pt``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def checkpoint_path(cfg: TrainConfig) -> Path | None:
    return None if cfg.checkpoint_dir is None else cfg.checkpoint_dir / "last.pt"


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

    ``batches(epoch, size, generator)`` yields the epoch's batches (CPU tensors), already augmented and resized to
    ``size``; each is moved to ``cfg.device``. ``validate(model)`` finds the model on that device and must put its own
    batches there. With ``cfg.checkpoint_dir``, ``last.pt`` is written after every epoch (model, optimiser, schedule,
    loss scaler, random state, history, best weights); ``cfg.resume`` continues from it exactly where it stopped.
    """
    from tqdm import tqdm

    torch.set_num_threads(cfg.threads)
    # Trained weights drift into denormal floats, which x86 CPUs compute 10-100x slower; flush them to zero.
    torch.set_flush_denormal(True)
    g = seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    ckpt = checkpoint_path(cfg)
    if cfg.resume and ckpt is None:
        raise ValueError("resume needs a checkpoint_dir")
    if cfg.init_from is not None and not cfg.resume:
        load_init(model, cfg.init_from)
    model.to(device)
    steps = steps_per_epoch if cfg.max_steps_per_epoch is None else min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = cfg.epochs * steps
    opt, sched = make_optimizer(model, cfg, total_steps)
    scaler = grad_scaler(device, cfg.amp)
    hist = History()
    best: dict[str, torch.Tensor] | None = None
    best_score: float | None = None
    first_epoch = 0
    if cfg.resume:
        assert ckpt is not None
        if not ckpt.exists():
            raise FileNotFoundError(f"resume: no checkpoint at {ckpt}")
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("total_steps") != total_steps:
            raise ValueError(
                f"resume: {ckpt} was written for {state.get('total_steps')} steps in all, this run has {total_steps} "
                "(epochs x steps per epoch must match to continue the schedule)"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None:
            sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        g.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        hist = History(**state["history"])
        best, best_score = state["best"], state["best_score"]
        first_epoch = int(state["epoch"]) + 1
        log.info("resumed from %s after epoch %d", ckpt, first_epoch)
    t0 = time.monotonic() - hist.seconds
    for epoch in range(first_epoch, cfg.epochs):
        model.train()
        size = size_for_epoch(cfg.sizes, epoch, cfg.epochs)
        running, count = 0.0, 0
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{cfg.epochs}" + (f" @{size}" if size else ""),
            disable=not cfg.progress,
            leave=False,
        )
        for i, batch in enumerate(batches(epoch, size, g)):
            if i >= steps:
                break
            loss = train_step(model, batch, loss_fn, opt, scaler, device, cfg.amp)
            if sched is not None:
                sched.step()
            running += float(loss)
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
        hist.seconds = time.monotonic() - t0
        if ckpt is not None:
            save_checkpoint(
                ckpt,
                {
                    "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "scaler": scaler.state_dict(),
                    "generator": g.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                    "epoch": epoch,
                    "total_steps": total_steps,
                    "history": hist.to_json(),
                    "best": best,
                    "best_score": best_score,
                },
            )
        if cfg.deadline is not None and epoch + 1 < cfg.epochs:
            per_epoch = hist.seconds / max(len(hist.train_loss), 1)
            if time.monotonic() + per_epoch > cfg.deadline:
                log.warning("stopping after epoch %d of %d: the next would pass the deadline", epoch + 1, cfg.epochs)
                print(f"deadline: stopped after epoch {epoch + 1} of {cfg.epochs}", flush=True)
                break
    hist.seconds = time.monotonic() - t0
    if best is None:
        raise ValueError(f"nothing trained: epochs={cfg.epochs}, steps per epoch={steps}")
    return hist, best
