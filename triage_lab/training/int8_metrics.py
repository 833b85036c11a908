"""The figures of a model's int8 export: kept in ``eval_int8.json`` and in the card's ``exports.int8.metrics``, next
to the float figures, never over them (``triage-lab export`` writes the export; the evaluations measure it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from triage_node.inference.card import ModelCard
from triage_node.inference.onnxrt import INT8


def record_int8_metrics(model_dir: Path, report: dict[str, Any]) -> None:
    """Keep an evaluation of the int8 export: ``eval_int8.json`` and the card's ``exports.int8.metrics``."""
    card = ModelCard.load(model_dir / "model.yaml")
    if INT8 not in card.exports:
        raise ValueError(f"{model_dir}: the card has no int8 export to attach figures to")
    (model_dir / "eval_int8.json").write_text(json.dumps(report, indent=1))
    exports = {k: dict(v) for k, v in card.exports.items()}
    exports[INT8]["metrics"] = {k: v for k, v in report.items() if k not in ("model", "version", "sha256")}
    path = model_dir / "model.yaml"
    ModelCard.from_dict({**card.to_dict(), "exports": exports}, path).save(path)
