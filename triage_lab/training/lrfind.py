"""Leslie Smith's learning-rate range test: raise the LR exponentially for a few steps, record the smoothed loss."""

from __future__ import annotations

import argparse
import copy
import itertools
import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from triage_lab.training.loop import Batch, grad_scaler, seed_everything, train_step


def lr_find(
    model: nn.Module,
    batches: Iterable[Batch],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    steps: int = 100,
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    weight_decay: float = 0.01,
    amp: bool = True,
    device: str = "cpu",
) -> tuple[list[float], list[float], float]:
    """Returns (lrs, smoothed losses, suggestion). The suggestion is the LR of steepest descent of the smoothed loss,
    divided by 3 (a conservative pick below the minimum). The model is not modified (a copy is trained).
    Batches go to ``device``; fp16 autocast on CUDA comes with loss scaling, as in :func:`fit`."""
    dev = torch.device(device)
    m = copy.deepcopy(model).to(dev).train()
    opt = torch.optim.AdamW(m.parameters(), lr=start_lr, weight_decay=weight_decay)
    scaler = grad_scaler(dev, amp)
    gamma = (end_lr / start_lr) ** (1 / max(steps - 1, 1))
    lrs: list[float] = []
    losses: list[float] = []
    avg, best = 0.0, math.inf
    for i, batch in enumerate(batches):
        if i >= steps:
            break
        lr = start_lr * gamma**i
        for g in opt.param_groups:
            g["lr"] = lr
        loss = train_step(m, batch, loss_fn, opt, scaler, dev, amp)
        avg = 0.9 * avg + 0.1 * float(loss)
        smooth = avg / (1 - 0.9 ** (i + 1))
        lrs.append(lr)
        losses.append(smooth)
        best = min(best, smooth)
        if smooth > 4 * best and i > 10:
            break
    if len(losses) < 3:
        return lrs, losses, start_lr
    grads = [
        (losses[i + 1] - losses[i - 1]) / (math.log(lrs[i + 1]) - math.log(lrs[i - 1]))
        for i in range(1, len(losses) - 1)
    ]
    i_min = min(range(len(grads)), key=grads.__getitem__) + 1
    return lrs, losses, lrs[i_min] / 3


def _endless(
    batches: Callable[[int, int | None, torch.Generator], Iterable[Batch]], g: torch.Generator
) -> Iterator[Batch]:
    """Epoch after epoch of ``batches``: the range test may want more steps than one pass over small data gives."""
    for epoch in itertools.count():
        yield from batches(epoch, None, g)


def lr_find_cli(a: argparse.Namespace) -> int:
    from triage_lab.training.augment import AugmentConfig
    from triage_lab.training.plots import lr_plot
    from triage_lab.training.synthdata import generate, split_seeds

    torch.set_num_threads(a.threads)
    g = seed_everything(a.seed)
    seeds = split_seeds("train", a.n_train)
    generate(a.cache, seeds, progress=False)
    if a.model == "ich":
        from triage_lab.synth.cases import CLASSES
        from triage_lab.training.ich_data import batches, synthetic_slices
        from triage_lab.training.ich_train import weighted_bce
        from triage_node.inference.nets import build_classifier

        data = synthetic_slices(a.cache, seeds, a.size)
        model = build_classifier(a.arch, 3, len(CLASSES), a.width)
        gen = _endless(batches(data, a.batch_size, AugmentConfig(), 0), g)
        lrs, losses, sugg = lr_find(
            model, gen, lambda m, b: weighted_bce(m(b[0]), b[1]), a.steps, a.start_lr, a.end_lr, device=a.device
        )
    else:
        from triage_lab.training.seg_train import SEG_AUGMENT, SegRecipe, crop_batches, seg_loss, synthetic_crops
        from triage_node.inference.nets import build_segmenter

        recipe = SegRecipe(base=a.base, batch_size=a.batch_size)
        data_s = synthetic_crops(a.cache, seeds, recipe, a.seed)
        model = build_segmenter(3, a.base)
        gen = _endless(crop_batches(data_s, a.batch_size, SEG_AUGMENT), g)

        def loss_fn(m: nn.Module, b: Batch) -> torch.Tensor:
            seg, cls = m(b[0])
            return seg_loss(seg, cls, b[1], recipe.cls_weight)

        lrs, losses, sugg = lr_find(model, gen, loss_fn, a.steps, a.start_lr, a.end_lr, device=a.device)
    lr_plot(a.out, lrs, losses, sugg)
    print(f"suggested learning rate {sugg:.2e} (plot: {a.out})")
    return 0
