"""``triage-lab export NAME``: the int8 ONNX Runtime export of a shipped model (see ``inference/onnxrt.py``).

Calibration runs the model's own analyzer on validation cases (CT: the synthetic hemorrhage cache, seeds 500000..;
MR: synthetic DWI / SWI, validation seeds 100000..), so the card's held-out figures stay untouched by it. Afterwards
``evaluate`` / ``evaluate-mr`` with ``--precision int8`` measure the export on the same held-out seeds as the float
model and write their figures into the card's ``exports.int8.metrics`` (and ``eval_int8.json``), next to the float
figures in ``metrics``, never over them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from triage_lab.quantize import export_int8
from triage_lab.synth.mr import dwi_volume, make_dwi_case, make_swi_case, swi_volume
from triage_lab.training.mr_cmb import split_seeds as cmb_seeds
from triage_lab.training.mr_infarct import split_seeds as infarct_seeds
from triage_lab.training.synthdata import DEFAULT_CACHE, generate, iter_cases, split_seeds
from triage_node.inference.card import ModelCard
from triage_node.inference.onnxrt import INT8
from triage_node.inference.registry import load_analyzer

EXPORT_FILE = "model.int8.onnx"


def calibration(model: str, n: int, cache: Path | None) -> tuple[Callable[[Any], None], str]:
    """What to run the fp32 analyzer on for ``model``, and a sentence for the card saying what that was."""
    if model in ("ich", "ct_segmenter"):
        seeds = split_seeds("val", n)
        root = cache or DEFAULT_CACHE
        generate(root, seeds, progress=False)

        def run_ct(an: Any) -> None:
            for c in iter_cases(root, seeds):
                hu = c.hu.astype(np.float32)
                an.slice_probabilities(hu) if model == "ich" else an.probabilities(hu)

        return run_ct, f"synthetic head CT validation cases, seeds {seeds[0]}-{seeds[-1]}"
    if model == "infarct":
        seeds = infarct_seeds("val", n)

        def run_dwi(an: Any) -> None:
            for s in seeds:
                an.segmenter.probabilities(dwi_volume(make_dwi_case(s)).pixels)

        return run_dwi, f"synthetic DWI validation cases, seeds {seeds[0]}-{seeds[-1]}"
    if model == "cmb":
        seeds = cmb_seeds("val", n)

        def run_swi(an: Any) -> None:
            for s in seeds:
                an.analyze(swi_volume(make_swi_case(s)))

        return run_swi, f"candidate patches of synthetic SWI validation cases, seeds {seeds[0]}-{seeds[-1]}"
    raise ValueError(f"no calibration data defined for model {model!r}")


def export_model(model_dir: Path, n_cases: int, cache: Path | None = None, keep: int = 512) -> dict[str, Any]:
    """Write ``model_dir/model.int8.onnx`` and record it in the card's ``exports.int8``; return that record."""
    card = ModelCard.load(model_dir / "model.yaml")
    analyzer = load_analyzer(card, threads=2, precision="fp32")
    run, what = calibration(card.name, n_cases, cache)
    entry = export_int8(analyzer, run, model_dir / EXPORT_FILE, keep=keep)
    entry["calibration"] = f"{entry.pop('calibration_inputs')} network inputs sampled from {what}"
    entry["command"] = f"triage-lab export {card.name} --model-dir {model_dir} --n-cases {n_cases}"
    exports = {k: dict(v) for k, v in card.exports.items()}
    exports[INT8] = entry  # a new export replaces the old one and its figures (they measured another file)
    path = model_dir / "model.yaml"
    ModelCard.from_dict({**card.to_dict(), "exports": exports}, path).save(path)
    return entry


def cmd_export(a: argparse.Namespace) -> int:
    model_dir = a.model_dir or Path("models") / a.model
    entry = export_model(model_dir, a.n_cases, a.cache, a.keep)
    print(json.dumps(entry, indent=1))
    print(f"now measure it: triage-lab {'evaluate' if a.model in ('ich', 'ct_segmenter') else 'evaluate-mr'} "
          f"{a.model} --model-dir {model_dir} --precision int8")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "export", help="write a model's int8 ONNX Runtime export (models.precision: int8), calibrated on validation"
    )
    p.add_argument("model", choices=("ich", "ct_segmenter", "cmb", "infarct"))
    p.add_argument("--model-dir", type=Path, default=None, help="default: models/NAME")
    p.add_argument("--n-cases", type=int, default=16, help="validation cases to calibrate on")
    p.add_argument("--keep", type=int, default=512, help="network inputs sampled for calibration")
    p.add_argument("--cache", type=Path, default=None, help="CT: synthetic case cache (generated when missing)")
    p.set_defaults(func=cmd_export)
