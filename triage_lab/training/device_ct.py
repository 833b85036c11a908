"""Both CT models in one run on one machine: cases rendered in parallel straight into memory, then ich and the
crop-grid segmenter trained, each within a time budget.

Made for a lent GPU machine that starts bare (no synthetic cache, no invesalius package: point
``TRIAGE_LAB_INVESALIUS`` at a copy of ``Cranium.inv3``) and has a hard limit on one command. Nothing is written to
disk but the two model directories and ``run.json``. The number of epochs is chosen from a timed trial of each
model's training step, so the one-cycle schedule runs to its end inside the budget instead of being cut; a deadline
stops training early only if the trial was wrong. The same command runs on a CPU at small sizes (its test does that).

    python -m triage_lab.training.device_ct --n-train 1600 --n-val 120 --jobs 16 --device cuda \\
        --budget-s 470 --out RUN
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import multiprocessing as mp
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from triage_lab.training.augment import AugmentConfig
from triage_lab.training.ich_data import SliceSet, batches, from_windowed, windowed_uint8
from triage_lab.training.loop import TrainConfig, grad_scaler, make_optimizer, seed_everything, train_step
from triage_lab.training.seg_train import SEG_AUGMENT, CropSet, SegRecipe, crop_batches, crops_from_volumes
from triage_lab.training.synthdata import source_for_seed, split_seeds

log = logging.getLogger(__name__)

Job = tuple[int, int, SegRecipe]
Result = tuple[int, torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor]


def _init_worker() -> None:
    torch.set_num_threads(1)


def render_case(job: Job) -> Result:
    """One randomised CT case -> (seed, ich slices uint8 (z, 3, S, S), labels (z, 6), segmenter crops, masks).

    The same case, windows and crops as the cache route (``synthdata.generate`` then ``synthetic_slices`` and
    ``synthetic_crops``), except that the crops' random choice is seeded per case.
    """
    from triage_lab.synth.cases import make_ct_case

    seed, ich_size, seg_recipe = job
    case = make_ct_case(seed, source=source_for_seed(seed), matrix=None)
    lesion = np.zeros(case.hu.shape, bool)
    for m in case.masks.values():
        lesion |= np.asarray(m, bool)
    crops = crops_from_volumes([(case.hu, lesion)], seg_recipe, np.random.default_rng(seed))
    return seed, windowed_uint8(case.hu, ich_size), np.asarray(case.labels, bool), crops.x, crops.m


def render_sets(
    seeds: Sequence[int], jobs: int, ich_size: int, seg_recipe: SegRecipe, deadline: float | None = None
) -> tuple[list[int], SliceSet, CropSet]:
    """Render ``seeds`` on ``jobs`` processes, in seed order. With a ``deadline`` (time.monotonic()), rendering stops
    there and the sets hold the seeds done by then, a prefix of ``seeds``, which is returned first."""
    work = [(s, ich_size, seg_recipe) for s in seeds]
    results: list[Result] = []
    if jobs <= 1:
        for w in work:
            results.append(render_case(w))
            if deadline is not None and time.monotonic() > deadline:
                break
    else:
        with mp.get_context("fork").Pool(jobs, initializer=_init_worker) as pool:
            # By module name, so the workers find it however this module was started (``-m`` makes it __main__).
            fn = importlib.import_module(__spec__.name if __spec__ else __name__).render_case
            for r in pool.imap(fn, work, chunksize=1):
                results.append(r)
                if deadline is not None and time.monotonic() > deadline:
                    pool.terminate()
                    break
    if not results:
        raise RuntimeError("no case rendered before the deadline")
    slices = from_windowed((w, labels) for _, w, labels, _, _ in results)
    crops = CropSet(torch.cat([r[3] for r in results]), torch.cat([r[4] for r in results]))
    return [r[0] for r in results], slices, crops


def step_seconds(
    model: torch.nn.Module,
    batch_iter: Iterable[tuple[torch.Tensor, ...]],
    loss_fn: Callable[[torch.nn.Module, tuple[torch.Tensor, ...]], torch.Tensor],
    cfg: TrainConfig,
    warmup: int = 5,
    timed: int = 20,
) -> float:
    """Seconds per training step (batch cut and augmented included), timed on a throwaway copy of ``model``."""
    import copy

    trial = copy.deepcopy(model).to(cfg.device)
    device = torch.device(cfg.device)
    opt, _ = make_optimizer(trial, cfg, 10_000)
    scaler = grad_scaler(device, cfg.amp)
    t0 = 0.0
    for i, batch in enumerate(batch_iter):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.monotonic()
        if i == warmup + timed:
            break
        train_step(trial, batch, loss_fn, opt, scaler, device, cfg.amp)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.monotonic() - t0) / timed


def epochs_within(seconds: float, per_epoch: float, most: int, least: int = 1) -> int:
    """How many whole epochs of ``per_epoch`` seconds fit in ``seconds`` (a tenth kept spare), clipped to
    [least, most]."""
    return max(least, min(most, int(0.9 * seconds / max(per_epoch, 1e-9))))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="writes OUT/ich, OUT/ct_segmenter and OUT/run.json")
    p.add_argument("--n-train", type=int, default=1600)
    p.add_argument("--n-val", type=int, default=120)
    p.add_argument("--jobs", type=int, default=2, help="rendering processes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads for training")
    p.add_argument("--budget-s", type=float, default=470.0, help="wall-clock seconds for the whole run")
    p.add_argument("--render-share", type=float, default=0.4, help="part of the budget for rendering, at most")
    p.add_argument("--ich-share", type=float, default=0.65, help="part of the training time the classifier gets")
    p.add_argument("--ich-epochs", type=int, default=16, help="at most this many (fewer when time is short)")
    p.add_argument("--seg-epochs", type=int, default=14, help="at most this many (fewer when time is short)")
    p.add_argument("--ich-batch", type=int, default=128)
    p.add_argument("--ich-lr", type=float, default=3e-3)
    p.add_argument("--seg-batch", type=int, default=64)
    p.add_argument("--seg-lr", type=float, default=3e-3)
    p.add_argument("--ich-init", type=Path, default=None, help="initialise the classifier from these weights")
    p.add_argument("--context", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--version-ich", default="2.1.0")
    p.add_argument("--version-seg", default="2.0.0")
    p.add_argument("--models", default="ich,ct_segmenter", help="which to train (comma-separated)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.monotonic()
    deadline = start + a.budget_s
    which = {m.strip() for m in a.models.split(",") if m.strip()}
    run: dict[str, Any] = {"argv": list(sys.argv), "device": a.device}

    from triage_lab.training.ich_train import IchRecipe, train_ich, weighted_bce
    from triage_lab.training.seg_train import seg_loss, train_segmenter
    from triage_node.inference.nets import build_classifier, build_segmenter

    seg_recipe = SegRecipe(batch_size=a.seg_batch, n_train=a.n_train, n_val=a.n_val, hard_negatives=True)
    t = time.monotonic()
    # Validation first and whole (thresholds come from it); training cases until the rendering share of the budget.
    va_seeds, ich_va, seg_va = render_sets(split_seeds("val", a.n_val), a.jobs, 128, seg_recipe)
    tr_seeds, ich_tr, seg_tr = render_sets(
        split_seeds("train", a.n_train), a.jobs, 128, seg_recipe, deadline=start + a.render_share * a.budget_s
    )
    ich_recipe = IchRecipe(context=a.context, batch_size=a.ich_batch, n_train=len(tr_seeds), n_val=len(va_seeds))
    # CUDA starts only now: the rendering processes were forked from a parent that had not touched it.
    if a.device.startswith("cuda"):
        run["gpu"] = torch.cuda.get_device_name(0)
        torch.backends.cudnn.benchmark = True
    run["render_s"] = round(time.monotonic() - t, 1)
    run["cases"] = {"train": len(tr_seeds), "val": len(va_seeds)}
    run["ich_slices"] = {"train": len(ich_tr), "val": len(ich_va)}
    run["seg_crops"] = {"train": len(seg_tr), "val": len(seg_va)}
    print(json.dumps(run), flush=True)
    a.out.mkdir(parents=True, exist_ok=True)

    def save_run() -> None:
        run["seconds"] = round(time.monotonic() - start, 1)
        (a.out / "run.json").write_text(json.dumps(run, indent=1))

    train_time = deadline - time.monotonic()
    if "ich" in which:
        cfg = TrainConfig(lr=a.ich_lr, device=a.device, seed=a.seed, threads=a.threads, progress=False)
        seed_everything(a.seed)
        model = build_classifier(ich_recipe.arch, 3 * (2 * a.context + 1), 6, ich_recipe.width)
        aug = AugmentConfig()
        dev_set = ich_tr.to(a.device) if a.device != "cpu" else ich_tr
        g = torch.Generator().manual_seed(a.seed)
        per_step = step_seconds(
            model,
            batches(dev_set, ich_recipe.batch_size, aug, a.context)(0, None, g),
            lambda m, b: weighted_bce(m(b[0]), b[1]),
            cfg,
        )
        steps = len(ich_tr) // ich_recipe.batch_size
        per_epoch = per_step * steps * 1.1  # validation
        share = a.ich_share if "ct_segmenter" in which else 1.0
        epochs = epochs_within(train_time * share, per_epoch, a.ich_epochs)
        run["ich"] = {"step_s": round(per_step, 4), "steps_per_epoch": steps, "epochs": epochs}
        print(json.dumps({"ich": run["ich"]}), flush=True)
        cfg = TrainConfig(
            epochs=epochs,
            lr=a.ich_lr,
            device=a.device,
            seed=a.seed,
            threads=a.threads,
            progress=False,
            deadline=min(deadline, time.monotonic() + train_time * share),
            init_from=a.ich_init,
        )
        card = train_ich(
            Path("/nonexistent"),
            a.out / "ich",
            ich_recipe,
            cfg,
            aug,
            a.version_ich,
            tr_seeds,
            va_seeds,
            sets=(dev_set, ich_va),
        )
        del dev_set
        run["ich"]["thresholds"] = dict(card.thresholds)
        save_run()
    if "ct_segmenter" in which:
        cfg = TrainConfig(lr=a.seg_lr, device=a.device, seed=a.seed, threads=a.threads, progress=False)
        seed_everything(a.seed)
        model = build_segmenter(int(seg_tr.x.shape[1]), seg_recipe.base)
        dev_crops = CropSet(seg_tr.x.to(a.device), seg_tr.m.to(a.device)) if a.device != "cpu" else seg_tr
        g = torch.Generator().manual_seed(a.seed)

        def s_loss(m: torch.nn.Module, b: tuple[torch.Tensor, ...]) -> torch.Tensor:
            seg, cls = m(b[0])
            return seg_loss(seg, cls, b[1], seg_recipe.cls_weight)

        per_step = step_seconds(
            model, crop_batches(dev_crops, seg_recipe.batch_size, SEG_AUGMENT)(0, None, g), s_loss, cfg
        )
        steps = len(seg_tr) // seg_recipe.batch_size
        per_epoch = per_step * steps * 1.1
        epochs = epochs_within(deadline - time.monotonic(), per_epoch, a.seg_epochs)
        run["ct_segmenter"] = {"step_s": round(per_step, 4), "steps_per_epoch": steps, "epochs": epochs}
        print(json.dumps({"ct_segmenter": run["ct_segmenter"]}), flush=True)
        cfg = TrainConfig(
            epochs=epochs,
            lr=a.seg_lr,
            device=a.device,
            seed=a.seed,
            threads=a.threads,
            progress=False,
            deadline=deadline,
        )
        train_segmenter(
            Path("/nonexistent"),
            a.out / "ct_segmenter",
            seg_recipe,
            cfg,
            a.version_seg,
            sets=(dev_crops, seg_va),
            data_desc=(
                f"synthetic, domain-randomised: {len(tr_seeds)} cases (seeds {tr_seeds[0]}-{tr_seeds[-1]}, 45% normal "
                "heads with calcification, dense-sinus and tentorium mimics) rendered by triage_lab.synth.randomise "
                "from the invesalius head CT and an MNI152 pseudo-CT; all lesion crops plus as many tissue crops, and "
                "24 crops of each normal head, half of them the brightest (hard negatives)"
            ),
        )
        save_run()
    save_run()
    print(json.dumps(run), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
