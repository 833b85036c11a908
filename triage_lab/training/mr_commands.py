"""``triage-lab train-mr | tune-mr | evaluate-mr``: training, operating point and evaluation of the MR models.

Registered by :func:`register` (the main CLI adds it next to the CT ``train``/``evaluate``); also runnable on its own
as ``python -m triage_lab.training.mr_commands``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from triage_lab.training.ct_commands import precision_arg

MR_MODELS = ("cmb", "infarct")
DEFAULT_CACHE_ROOT = Path("/tmp/triage-node-cache")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", choices=MR_MODELS, help="which MR model")
    p.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="synthetic case cache (default /tmp/triage-node-cache/<model>; derived data, never commit)",
    )
    p.add_argument("--workers", type=int, default=1, help="processes generating synthetic cases")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def _cache(a: argparse.Namespace) -> Path:
    return a.cache if a.cache is not None else DEFAULT_CACHE_ROOT / a.model


def cmd_train_mr(a: argparse.Namespace) -> int:
    from triage_lab.training.loop import TrainConfig

    cfg = TrainConfig(
        epochs=a.epochs,
        lr=a.lr,
        weight_decay=a.weight_decay,
        one_cycle=not a.no_one_cycle,
        amp=not a.no_amp,
        device=a.device,
        seed=a.seed,
        threads=a.threads,
        checkpoint_dir=a.out / "checkpoints",
        progress=not a.no_progress,
        max_steps_per_epoch=a.max_steps_per_epoch,
        init_from=a.init_from,
    )
    if a.nifti_dir is not None and (a.train_seeds or a.val_seeds or a.n_train_negative):
        raise SystemExit(
            "--nifti-dir trains on that folder's subjects: drop --train-seeds / --val-seeds / --n-train-negative"
        )
    if a.model == "cmb":
        from triage_lab.training.mr_cmb import CmbRecipe, parse_seeds, train_cmb

        recipe = CmbRecipe(
            n_train=a.n_train,
            n_val=a.n_val,
            batch_size=a.batch_size,
            steps_per_epoch=a.steps_per_epoch or 150,
            augment=not a.no_augment,
            max_fp_per_subject=a.max_fp,
            transfer_from=a.transfer_from,
            freeze_blocks=a.freeze_blocks,
            train_seeds=parse_seeds(a.train_seeds),
            val_seeds=parse_seeds(a.val_seeds),
        )
        valdo = None
        if a.nifti_dir is not None:
            from triage_lab.training.nifti_mr import valdo_split

            valdo = valdo_split(a.nifti_dir, a.val_fraction)
        res = train_cmb(
            _cache(a), a.out, recipe, cfg, a.version, workers=a.workers, progress=not a.no_progress, cases=valdo
        )
        print(json.dumps(res["operating_point"], indent=1))
    else:
        from triage_lab.training.mr_infarct import InfarctRecipe, train_infarct

        recipe_i = InfarctRecipe(
            n_train=a.n_train,
            n_val=a.n_val,
            n_train_negative=a.n_train_negative,
            batch_size=a.batch_size,
            base=a.base,
            steps_per_epoch=a.steps_per_epoch,
        )
        isles = None
        if a.nifti_dir is not None:
            from triage_lab.training.nifti_mr import isles_split

            isles = isles_split(a.nifti_dir, a.val_fraction)
        train_infarct(
            _cache(a), a.out, recipe_i, cfg, a.version, workers=a.workers, progress=not a.no_progress, cases=isles
        )
    print(f"wrote {a.out}")
    return 0


def cmd_evaluate_mr(a: argparse.Namespace) -> int:
    if a.model == "cmb":
        from triage_lab.training.mr_cmb import evaluate_cmb

        report = evaluate_cmb(
            a.model_dir, _cache(a), a.n_test, workers=a.workers, progress=not a.no_progress, precision=a.precision
        )
        report.pop("curve", None)
    else:
        from triage_lab.training.mr_infarct import evaluate_infarct, run_direct_baseline

        baseline = None
        if a.baseline_train > 0:
            baseline = run_direct_baseline(_cache(a), a.baseline_train, a.n_test, seed=a.seed)
        report = evaluate_infarct(
            a.model_dir,
            _cache(a),
            a.n_test,
            a.n_negative,
            workers=a.workers,
            progress=not a.no_progress,
            baseline=baseline,
            precision=a.precision,
        )
        report.pop("cases", None)
    print(json.dumps(report, indent=1))
    return 0


def cmd_tune_mr(a: argparse.Namespace) -> int:
    from triage_lab.training.mr_infarct import (
        OperatingGrid,
        rechoose_operating_point,
        split_seeds,
        tune_infarct,
        write_operating_point,
    )

    if a.from_grid is not None:  # the grid is already scored: apply the rule again, run nothing
        tuned = rechoose_operating_point(json.loads(a.from_grid.read_text()), a.max_fp_rate)
        if a.write:
            write_operating_point(a.model_dir, tuned)
        print(json.dumps({k: v for k, v in tuned.items() if k != "grid"} | {"top": tuned["grid"][:8]}, indent=1))
        return 0
    limits = tuple(None if v.strip().lower() == "none" else float(v) for v in a.max_adc_ratios.split(",") if v.strip())
    grid = OperatingGrid(max_fp_rate=a.max_fp_rate, max_adc_ratios=limits or (None,))
    tuned = tune_infarct(
        a.model_dir,
        _cache(a),
        split_seeds("val", a.n_val),
        split_seeds("val_negative", a.n_val_negative),
        grid,
        precision=a.precision,
        workers=a.workers,
        progress=not a.no_progress,
    )
    if a.write:
        write_operating_point(a.model_dir, tuned)
    print(json.dumps({k: v for k, v in tuned.items() if k != "grid"} | {"top": tuned["grid"][:8]}, indent=1))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train-mr`` and ``evaluate-mr`` to the main CLI; each sets ``func``."""
    p = subparsers.add_parser("train-mr", help="train an MR model (cmb | infarct) on synthetic MR or NIfTI folders")
    _common(p)
    p.add_argument("--out", type=Path, required=True, help="model directory to write (weights, model.yaml, plots)")
    p.add_argument("--n-train", type=int, default=120, help="synthetic training cases (seeds 0..n-1)")
    p.add_argument("--n-val", type=int, default=24, help="synthetic validation cases (seeds 100000..)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--no-one-cycle", action="store_true")
    p.add_argument("--no-amp", action="store_true", help="disable bf16 autocast on CPU (fp16 on CUDA)")
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--init-from", type=Path, default=None, help="initialise from these weights (matching tensors; fine-tuning)"
    )
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--max-fp", type=float, default=0.5, help="cmb: FP/subject budget for the validation threshold")
    p.add_argument(
        "--transfer-from",
        type=Path,
        default=None,
        help="cmb: transfer-learning variant - initialise from this checkpoint (matching tensors)",
    )
    p.add_argument("--freeze-blocks", type=int, default=0, help="cmb: with --transfer-from, freeze the first N blocks")
    p.add_argument("--base", type=int, default=16, help="infarct: segmenter base channels")
    p.add_argument(
        "--n-train-negative", type=int, default=0, help="infarct: training cases without infarct (seeds 500000..)"
    )
    p.add_argument("--train-seeds", default="", help="cmb: explicit training seeds, e.g. 0-45 (default: --n-train)")
    p.add_argument("--val-seeds", default="", help="cmb: explicit validation seeds, e.g. 46-61,100000-100004")
    p.add_argument(
        "--nifti-dir",
        type=Path,
        default=None,
        help="train on real NIfTI data instead of synthetic cases: an ISLES'22 folder (infarct: rawdata/ + "
        "derivatives/) or a VALDO folder (cmb: sub-*/..._T2S.nii.gz + ..._CMB.nii.gz); see docs/models_mr.md",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.1,
        help="with --nifti-dir: share of subjects held out for validation (spread over the sorted subject ids)",
    )
    p.set_defaults(func=cmd_train_mr)

    p = subparsers.add_parser("evaluate-mr", help="evaluate an MR model on held-out synthetic cases; JSON + PNG")
    _common(p)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--n-test", type=int, default=40, help="held-out cases (seeds 200000..)")
    p.add_argument("--n-negative", type=int, default=10, help="infarct: held-out cases without infarct (300000..)")
    p.add_argument(
        "--baseline-train",
        type=int,
        default=0,
        help="infarct: also train/evaluate the direct location classifier on this many training cases",
    )
    precision_arg(p)
    p.set_defaults(func=cmd_evaluate_mr)

    p = subparsers.add_parser(
        "tune-mr", help="infarct: choose gate / segmentation threshold / minimum size on validation cases only"
    )
    _common(p)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--n-val", type=int, default=20, help="validation cases with infarct (seeds 100000..)")
    p.add_argument("--n-val-negative", type=int, default=20, help="validation cases without infarct (400000..)")
    p.add_argument("--max-fp-rate", type=float, default=0.05, help="false-positive budget on the cases without")
    p.add_argument(
        "--max-adc-ratios",
        default="",
        help="ADC-rule limits to search with the other thresholds, e.g. none,0.8,0.9,1.0 (scored on the b=0 image "
        "the generator made); empty: leave the card's ADC rule as it is",
    )
    p.add_argument(
        "--from-grid",
        type=Path,
        default=None,
        help="a tune.json this command wrote: choose again from its scored grid (e.g. with another --max-fp-rate) "
        "without running the model",
    )
    precision_arg(p)
    p.add_argument("--write", action="store_true", help="write the chosen point into model.yaml and tune.json")
    p.set_defaults(func=cmd_tune_mr)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point; ``triage-lab train-mr ...`` is the same command."""
    from triage_lab.training.ct_commands import run_standalone

    return run_standalone(register, argv)


if __name__ == "__main__":
    raise SystemExit(main())
