"""``triage-lab train | evaluate | tune-postprocess | lr-find``: registered into the main CLI by :func:`register`."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from triage_lab.training.synthdata import DEFAULT_CACHE

log = logging.getLogger(__name__)

MODELS = ("ich", "ct_segmenter")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", choices=MODELS, help="which model")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="synthetic case cache (generated when missing)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)


def precision_arg(p: argparse.ArgumentParser) -> None:
    """``--precision``, as the daemon's ``models.precision`` (evaluations run the networks the way the daemon does)."""
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "int8"),
                   help="inference precision (int8: the card's ONNX export, see `triage-lab export`)")


AUGMENT_CHOICES = ("full", "flips-zoom", "off")  # keys of augment.AUGMENT_PRESETS (not imported: torch is slow)
SEG_CROP = 64  # SegRecipe().size // SegRecipe().grid: the crop size the CT segmenter trains and runs at


def _sizes(text: str) -> tuple[int, ...]:
    """``"96,128"`` -> (96, 128); an argparse type, so a bad value is a usage error naming ``--sizes``."""
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated pixel sizes such as 96,128, got {text!r}") from None
    if any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return sizes


def _sizes_problem(a: argparse.Namespace) -> str | None:
    """Why ``--sizes`` cannot work with this model and its final input size (None: it can)."""
    sizes: tuple[int, ...] = a.sizes
    if not sizes:
        return None
    if a.model == "ich":
        if sizes[-1] != a.size:
            return f"--sizes {','.join(map(str, sizes))}: the last size must equal --size {a.size}"
        return None
    if any(s % 4 for s in sizes):
        return f"--sizes {','.join(map(str, sizes))}: ct_segmenter crop sizes must be multiples of 4"
    if sizes[-1] != SEG_CROP:
        return f"--sizes {','.join(map(str, sizes))}: the last size must be the ct_segmenter crop size {SEG_CROP}"
    return None


def _train_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--out", type=Path, required=True, help="model directory to write (weights, model.yaml, plots)")
    p.add_argument("--n-train", type=int, default=360, help="synthetic training cases (seeds 0..n-1)")
    p.add_argument("--n-val", type=int, default=40, help="synthetic validation cases (seeds 500000..)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-one-cycle", action="store_true", help="constant learning rate instead of one-cycle")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision (bf16 on CPU, fp16 on CUDA)")
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=(),
        help="progressive resizing, small first, e.g. 96,128 (ich: slice sizes, the last equal to --size; "
        "ct_segmenter: crop sizes in multiples of 4, the last equal to the crop size 64)",
    )
    p.add_argument("--init-from", type=Path, default=None, help="initialise from a checkpoint (transfer learning)")
    p.add_argument(
        "--augment",
        choices=sorted(AUGMENT_CHOICES),
        default=None,
        help="full: flips, rotation +-15 deg, zoom, shift, shear, blur, contrast; flips-zoom: flips, zoom +-8%%, "
        "contrast (what the segmenter study kept); off. Default: full for ich, flips-zoom for ct_segmenter",
    )
    p.add_argument("--no-augment", dest="augment", action="store_const", const="off", help="same as --augment off")
    p.add_argument("--max-steps-per-epoch", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.pt (same epochs/steps)")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--no-progress", action="store_true")
    # ich
    p.add_argument("--arch", default="resnet18", help="ich: resnet18 | resnet50 | densenet121")
    p.add_argument("--width", type=float, default=0.5, help="ich: ResNet width factor")
    p.add_argument("--size", type=int, default=128, help="ich: input size in pixels")
    p.add_argument("--context", type=int, default=0, help="ich: neighbouring slices each side (2.5-D input)")
    # segmenter
    p.add_argument("--base", type=int, default=16, help="segmenter: base channel count")
    p.add_argument(
        "--hard-negatives",
        action="store_true",
        help="segmenter: 24 tissue crops of each head without bleed, half of them the brightest (as device_ct trains)",
    )
    p.add_argument("--rsna-csv", type=Path, default=None, help="ich: RSNA 2019 label CSV (with --dicom-dir)")
    p.add_argument("--dicom-dir", type=Path, default=None, help="ich: folder of RSNA DICOM slices")
    p.add_argument(
        "--nifti-dir",
        type=Path,
        default=None,
        help="segmenter: folder of <id>_image.nii.gz / <id>_mask.nii.gz (reoriented to L,P,S)",
    )


def _train_config(a: argparse.Namespace):
    from triage_lab.training.loop import TrainConfig

    return TrainConfig(
        epochs=a.epochs,
        lr=a.lr,
        weight_decay=a.weight_decay,
        one_cycle=not a.no_one_cycle,
        amp=not a.no_amp,
        device=a.device,
        seed=a.seed,
        threads=a.threads,
        sizes=a.sizes,
        checkpoint_dir=a.out / "checkpoints",
        init_from=a.init_from,
        progress=not a.no_progress,
        max_steps_per_epoch=a.max_steps_per_epoch,
        resume=a.resume,
    )


def _ensure_cache(a: argparse.Namespace, splits: dict[str, int]) -> None:
    from triage_lab.training.synthdata import generate, split_seeds

    for split, n in splits.items():
        generate(a.cache, split_seeds(split, n), progress=not getattr(a, "no_progress", False))


def cmd_train(a: argparse.Namespace) -> int:
    problem = _sizes_problem(a)
    if problem is not None:
        print(f"triage-lab train: error: {problem}", file=sys.stderr)
        return 2
    from triage_lab.training.augment import AUGMENT_PRESETS

    aug = AUGMENT_PRESETS[a.augment or ("full" if a.model == "ich" else "flips-zoom")]
    cfg = _train_config(a)
    if a.model == "ich":
        from triage_lab.training.ich_train import IchRecipe, train_ich

        recipe = IchRecipe(a.arch, a.width, a.size, a.context, a.batch_size, a.n_train, a.n_val)
        if a.rsna_csv is not None:
            from triage_lab.training.rsna import train_ich_rsna

            card = train_ich_rsna(a.rsna_csv, a.dicom_dir, a.out, recipe, cfg, aug, a.version)
        else:
            _ensure_cache(a, {"train": a.n_train, "val": a.n_val})
            card = train_ich(a.cache, a.out, recipe, cfg, aug, a.version)
    else:
        from triage_lab.training.seg_train import SegRecipe, train_segmenter

        recipe_s = SegRecipe(
            base=a.base, batch_size=a.batch_size, n_train=a.n_train, n_val=a.n_val, hard_negatives=a.hard_negatives
        )
        if a.nifti_dir is None:
            _ensure_cache(a, {"train": a.n_train, "val": a.n_val})
        card = train_segmenter(a.cache, a.out, recipe_s, cfg, a.version, nifti_dir=a.nifti_dir, aug=aug)
        if a.nifti_dir is not None:
            from triage_lab.training.nifti import declare_real_data
            from triage_node.inference.card import ModelCard

            declare_real_data(a.out, f"the NIfTI image/mask pairs of {a.nifti_dir}")
            card = ModelCard.load(a.out / "model.yaml")
    print(f"wrote {card.directory} (sha256 {card.sha256[:12]}, device UID {card.device_uid})")
    return 0


def cmd_evaluate(a: argparse.Namespace) -> int:
    from triage_lab.training.synthdata import split_seeds

    _ensure_cache(a, {a.split: a.n_test})
    seeds = split_seeds(a.split, a.n_test)
    out = a.out if a.out is not None or a.split == "test" else a.model_dir / "shifted"
    if a.model == "ich":
        from triage_lab.training.evaluate import evaluate_ich

        report = evaluate_ich(a.model_dir, a.cache, seeds, out, a.precision)
    else:
        from triage_lab.training.evaluate import evaluate_segmenter

        report = evaluate_segmenter(a.model_dir, a.cache, seeds, out, a.precision)
    if a.update_card and a.precision != "int8":  # int8 figures are already in the card's exports.int8.metrics
        from triage_lab.training.evaluate import write_metrics_to_card

        write_metrics_to_card(a.model_dir, report, a.split)
    print(json.dumps(report, indent=1))
    return 0


def cmd_tune_postprocess(a: argparse.Namespace) -> int:
    from triage_lab.training.evaluate import PostprocessGrid, tune_segmenter_postprocess, write_postprocess_to_card
    from triage_lab.training.synthdata import split_seeds

    _ensure_cache(a, {"val": a.n_val})
    if a.noise_from_train:
        _noise_limit(a)
        if a.noise_only:
            return 0
    if a.model == "ich":
        return _tune_ich(a)
    grid = PostprocessGrid(max_fp_rate=a.max_fp_rate, tolerance=a.tolerance)
    tuned = tune_segmenter_postprocess(
        a.model_dir, a.cache, split_seeds("val", a.n_val), grid, precision=a.precision, flag_model_dir=a.gated_by
    )
    print(
        f"{tuned['positive_cases']} positive, {tuned['negative_cases']} negative validation cases "
        f"(seeds {tuned['seeds']}); false-positive budget {tuned['max_fp_rate']}"
    )
    for r in [tuned["chosen"], *tuned["grid"][:10]]:
        print(
            f"gate {r['gate']:.2f}  threshold {r['threshold']:.2f}  max_components {r['max_components']}  "
            f"min_area_mm2 {r['min_area_mm2']:5.1f}  min_extent_mm {r['min_extent_mm']:4.1f}  "
            f"Dice {r['dice_mean']:.4f}  FP rate {r['false_positive_rate_negatives']:.3f}  lesion F1 {r['lesion_f1']}"
            + ("  <- chosen" if r is tuned["chosen"] else "")
        )
    if a.out is not None:
        a.out.write_text(json.dumps(tuned, indent=1))
    if a.update_card:
        write_postprocess_to_card(a.model_dir, tuned)
        print(f"wrote the chosen post-processing into {a.model_dir / 'model.yaml'} (grid: tune_postprocess.json)")
    return 0


def _noise_limit(a: argparse.Namespace) -> None:
    """``--noise-from-train N``: the noise of the first N training cases at the model's input size; with
    ``--update-card`` its 95th percentile goes into the card before anything is chosen, so the thresholds are chosen
    with the smoothing in place."""
    from triage_lab.training.evaluate import training_noise_limit, write_noise_limit_to_card
    from triage_lab.training.synthdata import split_seeds
    from triage_node.inference.card import ModelCard

    _ensure_cache(a, {"train": a.noise_from_train})
    size = int(ModelCard.load(a.model_dir / "model.yaml").input["size"])
    limit = training_noise_limit(a.cache, split_seeds("train", a.noise_from_train), size)
    print(f"training noise at {size} px: {limit}")
    if a.update_card:
        write_noise_limit_to_card(a.model_dir, limit)


def _tune_ich(a: argparse.Namespace) -> int:
    from triage_lab.training.evaluate import tune_ich_thresholds, write_ich_thresholds_to_card
    from triage_lab.training.synthdata import split_seeds

    tuned = tune_ich_thresholds(a.model_dir, a.cache, split_seeds("val", a.n_val), a.precision)
    print(
        f"{tuned['cases']} validation cases (seeds {tuned['seeds']}, {tuned['positive_cases']} with hemorrhage), "
        f"precision {tuned['precision']}, aggregation {tuned['aggregation']}"
    )
    for c, r in tuned["per_class"].items():
        b, n = r["previous"], r["chosen"]
        print(
            f"{c:<18} AUC {r['auc'] if r['auc'] is None else round(r['auc'], 3)}  "
            f"previous {b['threshold']:.4f} (sens {b['sensitivity']}, spec {b['specificity']})  "
            f"chosen {n['threshold']:.4f} (sens {n['sensitivity']}, spec {n['specificity']})"
        )
    if a.out is not None:
        a.out.write_text(json.dumps(tuned, indent=1))
    if a.update_card:
        write_ich_thresholds_to_card(a.model_dir, tuned, a.version)
        print(f"wrote the thresholds into {a.model_dir / 'model.yaml'} (tune_thresholds.json)")
    return 0


def cmd_lr_find(a: argparse.Namespace) -> int:
    from triage_lab.training.lrfind import lr_find_cli

    return lr_find_cli(a)



def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``train``, ``evaluate``, ``tune-postprocess`` and ``lr-find`` to the lab CLI (sets ``func``)."""
    p = subparsers.add_parser("train", help="train a CT model on synthetic (or RSNA / NIfTI) data")
    _train_args(p)
    p.set_defaults(func=cmd_train)

    p = subparsers.add_parser("evaluate", help="evaluate a model on held-out synthetic cases; JSON + PNG plots")
    _common(p)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, default=None, help="where to write eval.json and plots (default: model dir)")
    p.add_argument("--n-test", type=int, default=80, help="held-out cases (seeds 900000.., test_shifted 950000..)")
    p.add_argument(
        "--split", choices=("test", "test_shifted"), default="test",
        help="test_shifted: held-out cases made with acquisition and storage settings never used in training "
        "(plots to MODEL_DIR/shifted unless --out)",
    )
    p.add_argument("--update-card", action="store_true", help="write the figures into model.yaml's metrics")
    precision_arg(p)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser(
        "tune-postprocess",
        help="ct_segmenter: choose the gate / threshold / components / minimum size on validation cases, within a "
        "false-positive budget on the negative ones; ich: choose the thresholds again from the daemon's own scores "
        "on validation cases",
    )
    _common(p)
    p.add_argument("--model-dir", type=Path, required=True)
    p.add_argument(
        "--n-val", type=int, default=80, help="validation cases (seeds 500000..; about a quarter are negative)"
    )
    p.add_argument(
        "--max-fp-rate",
        type=float,
        default=0.10,
        help="largest admissible fraction of negative validation cases with any output",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.005,
        help="mean Dice that may be given up for fewer false positives and a more restrictive rule",
    )
    p.add_argument(
        "--gated-by",
        type=Path,
        default=None,
        metavar="ICH_DIR",
        help="tune as deployed behind this ich model's any-hemorrhage flag (models.gates): a negative case counts "
        "as a false positive only where the flag opens the gate",
    )
    p.add_argument("--out", type=Path, default=None, help="write the whole grid as JSON here")
    p.add_argument("--update-card", action="store_true", help="write the chosen values into model.yaml")
    p.add_argument("--version", default=None, help="ich, with --update-card: the card's new version")
    p.add_argument(
        "--noise-from-train", type=int, default=0, metavar="N",
        help="measure the noise of the first N training cases at the model's input size and, with --update-card, "
        "write its 95th percentile as input.noise_hu_max (a noisier CT series is smoothed back to it) before the "
        "thresholds are chosen",
    )
    p.add_argument(
        "--noise-only", action="store_true",
        help="with --noise-from-train: write the noise limit and choose nothing else (the thresholds stay as they are)",
    )
    precision_arg(p)
    p.set_defaults(func=cmd_tune_postprocess)

    p = subparsers.add_parser("lr-find", help="learning-rate range test (Leslie Smith); prints and plots a suggestion")
    _common(p)
    p.add_argument("--out", type=Path, default=Path("lr_find.png"))
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--start-lr", type=float, default=1e-6)
    p.add_argument("--end-lr", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--base", type=int, default=16)
    p.set_defaults(func=cmd_lr_find)



def run_standalone(register_fn: Callable[[argparse._SubParsersAction], None], argv: list[str] | None) -> int:
    """Run training subcommands without the main CLI (``python -m triage_lab.training.ct_commands`` or
    ``.mr_commands``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="triage-lab")
    register_fn(parser.add_subparsers(dest="command", required=True))
    a = parser.parse_args(argv)
    return int(a.func(a))


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point; ``triage-lab train ...`` is the same command."""
    return run_standalone(register, argv)


if __name__ == "__main__":
    raise SystemExit(main())
