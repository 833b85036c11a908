"""The model registry: reads ``models/<name>/model.yaml``, verifies the weights' sha256, builds analyzers.

The analyzer class is named in the card (``analyzer: package.module:ClassName``) and constructed as
``Class(card, threads=..., device=..., precision=...)``, so new models need a card and a class, not a registry change.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triage_node.inference.card import CardError, ModelCard, sha256_file
from triage_node.inference.errors import ModelLoadError
from triage_node.inference.external import ExternalSpec, pipeline_problems, sha256_path
from triage_node.inference.onnxrt import int8_export
from triage_node.inference.precision import check_device, resolve, set_tf32_policy
from triage_node.inference.types import Analyzer

log = logging.getLogger(__name__)

CARD_FILE = "model.yaml"


@dataclass(frozen=True)
class ModelCardSummary:
    """One row of ``triage-node models``. ``status``: ``ok`` | ``missing`` | ``mismatch`` | ``invalid``."""

    name: str
    version: str
    device_uid: str
    sha256: str
    status: str
    detail: str
    path: Path


def read_card(models_dir: Path, name: str) -> ModelCard:
    path = models_dir / name / CARD_FILE
    if not path.is_file():
        raise ModelLoadError(f"model {name!r}: card {path} not found")
    try:
        card = ModelCard.load(path)
    except CardError as e:
        raise ModelLoadError(f"model {name!r}: {e}") from e
    if card.name != name:
        raise ModelLoadError(f"model {name!r}: card {path} names the model {card.name!r}")
    return card


def verify_weights(card: ModelCard) -> None:
    """Raise ModelLoadError unless the weights file exists and its sha256 matches the card."""
    path = card.weights_path
    if not (path.is_file() or (card.external and path.is_dir())):  # a MONAI bundle is a folder
        raise ModelLoadError(f"model {card.name!r}: weights file {path} is missing (expected sha256 {card.sha256})")
    actual = sha256_path(path) if card.external else sha256_file(path)
    if actual != card.sha256:
        raise ModelLoadError(
            f"model {card.name!r}: weights file {path} has sha256 {actual}, but the card expects {card.sha256}; "
            "refusing to load modified or mismatched weights"
        )


def _analyzer_class(card: ModelCard) -> type:
    module_name, _, cls_name = card.analyzer.partition(":")
    try:
        return getattr(importlib.import_module(module_name), cls_name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError) as e:
        raise ModelLoadError(f"model {card.name!r}: cannot import analyzer {card.analyzer!r}: {e}") from e


def load_analyzer(card: ModelCard, threads: int = 1, device: str = "cpu", precision: str = "fp32") -> Analyzer:
    verify_weights(card)
    cls = _analyzer_class(card)
    try:
        analyzer: Analyzer = cls(card, threads=threads, device=device, precision=precision)
    # AssertionError: torch's own "Torch not compiled with CUDA enabled" (check_device says it first, in words)
    except (RuntimeError, KeyError, ValueError, OSError, AssertionError) as e:
        raise ModelLoadError(
            f"model {card.name!r}: building {card.analyzer} from {card.weights_path} failed: {e}"
        ) from e
    log.info(
        "loaded model %s %s (device UID %s, %s)",
        card.name, card.version, card.device_uid, getattr(analyzer, "precision", resolve(precision, device)),
    )
    return analyzer


def load_analyzers(
    models_dir: Path, names: Sequence[str], threads: int = 1, device: str = "cpu", precision: str = "fp32"
) -> dict[str, Analyzer]:
    """Load and verify the named models; any problem raises ModelLoadError naming the model and file (or the device
    when ``models.device`` cannot be used)."""
    if names:
        try:
            check_device(device)
        except ValueError as e:
            raise ModelLoadError(str(e)) from e
        set_tf32_policy()
    return {name: load_analyzer(read_card(models_dir, name), threads, device, precision) for name in names}


def list_models(models_dir: Path) -> list[ModelCardSummary]:
    """Every ``models_dir/*/model.yaml`` with its sha256 check status (never raises for a bad model)."""
    rows = []
    for card_path in sorted(models_dir.glob(f"*/{CARD_FILE}")):
        name = card_path.parent.name
        try:
            card = read_card(models_dir, name)
        except ModelLoadError as e:
            rows.append(ModelCardSummary(name, "?", "", "", "invalid", str(e), card_path))
            continue
        status, detail = "ok", f"{card.weights_path} sha256 verified"
        if card.external:  # a model from outside: its kind and format
            detail = f"{card.architecture['kind']} ({card.architecture['format']}), {detail}"
        try:
            verify_weights(card)
        except ModelLoadError as e:
            status = "missing" if not card.weights_path.exists() else "mismatch"
            detail = str(e)
        if status == "ok" and card.exports.get("int8"):
            try:
                detail += f"; int8 export {int8_export(card).name} verified"
            except ModelLoadError as e:  # the float model still loads; only models.precision int8 would fail
                detail += f"; int8 unusable: {e}"
        rows.append(ModelCardSummary(card.name, card.version, card.device_uid, card.sha256, status, detail, card_path))
    return rows


def check_models(
    models_dir: Path,
    names: Sequence[str],
    pipelines: Mapping[Any, Sequence[str]],
    threads: int = 1,
    device: str = "cpu",
    precision: str = "fp32",
) -> list[str]:
    """Load each named model as the daemon would (sha256, card, the run on a synthetic input of the declared shape)
    and check the pipelines against the cards; every problem as one line with its card path and key path."""
    problems: list[str] = []
    specs: dict[str, ExternalSpec] = {}
    cards: dict[str, Path] = {}
    for name in names:
        try:
            analyzer = load_analyzer(read_card(models_dir, name), threads, device, precision)
        except ModelLoadError as e:
            problems.append(str(e))
            continue
        spec = getattr(analyzer, "spec", None)
        if isinstance(spec, ExternalSpec):
            specs[name], cards[name] = spec, models_dir / name / "model.yaml"
    return problems + pipeline_problems(pipelines, specs, cards)
