"""Model cards: ``models/<name>/model.yaml`` parsed once into a frozen dataclass.

The card names the weights file and its sha256, the analyzer class (an import path, so new analyzers need no registry
change), the architecture, input spec, classes, thresholds, training data and evaluation figures. The Device UID is
derived from the weights hash, so it changes exactly when the model is retrained.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from triage_node.inference.external import SpecError, card_fields, is_external

MANUFACTURER = "triage-node project"
WEIGHTS_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/triage-node/triage-node/model-weights")
# A threshold above every probability: the class is never shown present (a subtype whose precision on validation
# never reached the bar). The only value above 1 a card may hold.
NEVER_PRESENT = 1.0001

NOT_FOR_CLINICAL_USE = (
    "Trained on synthetic lesions only. Not validated on patients. Not for clinical use: research and testing of the "
    "triage pipeline only."
)


class CardError(ValueError):
    """A model card is missing a field or has one of the wrong type."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def device_uid_for(sha256: str) -> str:
    """The DICOM UID (2.25 root, PS3.5 B.2) of the name-based UUID (RFC 9562 version 5) of the weights hash: the same
    weights always give the same Device UID, and new weights a new one."""
    return f"2.25.{uuid.uuid5(WEIGHTS_NAMESPACE, sha256.lower()).int}"


def _frozen(d: Any) -> Any:
    if isinstance(d, dict):
        return MappingProxyType({k: _frozen(v) for k, v in d.items()})
    if isinstance(d, list):
        return tuple(_frozen(v) for v in d)
    return d


def _thaw(d: Any) -> Any:
    if isinstance(d, MappingProxyType | dict):
        return {k: _thaw(v) for k, v in d.items()}
    if isinstance(d, tuple | list):
        return [_thaw(v) for v in d]
    return d


@dataclass(frozen=True)
class ModelCard:
    """The parsed ``model.yaml``. ``directory`` is where it was read from (weights are relative to it)."""

    name: str
    version: str
    analyzer: str
    weights: str
    sha256: str
    device_uid: str
    architecture: MappingProxyType[str, Any]
    input: MappingProxyType[str, Any]
    classes: tuple[str, ...]
    thresholds: MappingProxyType[str, float]
    intended_use: str
    manufacturer: str = MANUFACTURER
    postprocess: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    training: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    metrics: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    exports: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    limitations: str = NOT_FOR_CLINICAL_USE
    # The acquisitions the model was trained on (series/domain.py): a series outside them gets "not assessed".
    domain: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    directory: Path = Path(".")
    # The whole card of a model from outside (``kind`` / ``format``, inference/external.py); empty for our own.
    external: MappingProxyType[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def weights_path(self) -> Path:
        return self.directory / self.weights

    @classmethod
    def load(cls, path: Path) -> ModelCard:
        """Read and validate ``path`` (a model.yaml)."""
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise CardError(f"cannot read model card {path}: {e}") from e
        return cls.from_dict(raw, path)

    @classmethod
    def from_dict(cls, raw: Any, path: Path) -> ModelCard:
        """Validate a card's mapping (as in model.yaml; ``path`` names it in errors and locates the weights). The one
        way to build a card: the lab uses it too, so every card passes the same checks."""
        if not isinstance(raw, dict):
            raise CardError(f"model card {path} must be a mapping, got {type(raw).__name__}")
        external: dict[str, Any] = {}
        if is_external(raw):  # a model from outside: the generic analyzer, configured by the card alone
            try:
                external, raw = dict(raw), card_fields(raw, path)
            except SpecError as e:
                raise CardError(f"model card {path}: {e}") from e
        required = ("name", "version", "analyzer", "weights", "sha256", "architecture", "input", "classes",
                    "thresholds", "intended_use")
        missing = [k for k in required if k not in raw]
        if missing:
            raise CardError(f"model card {path} lacks required field(s): {', '.join(missing)}")
        if ":" not in str(raw["analyzer"]):
            raise CardError(f"model card {path}: analyzer must be 'module.path:ClassName', got {raw['analyzer']!r}")
        sha = str(raw["sha256"])
        if len(sha) != 64:
            raise CardError(f"model card {path}: sha256 must be 64 hex digits, got {sha!r}")
        device_uid = device_uid_for(sha)
        if raw.get("device_uid") not in (None, device_uid):
            raise CardError(
                f"model card {path}: device_uid {raw['device_uid']} is not the one derived from its sha256 "
                f"({device_uid}); the Device UID identifies the weights, so it must change exactly when they do"
            )
        thresholds = {str(k): float(v) for k, v in dict(raw["thresholds"]).items()}
        for k, v in thresholds.items():
            if not (0.0 <= v <= 1.0 or v == NEVER_PRESENT):
                raise CardError(
                    f"model card {path}: threshold {k} must be in [0, 1] (or {NEVER_PRESENT}: never present), got {v}"
                )
        return cls(
            name=str(raw["name"]),
            version=str(raw["version"]),
            analyzer=str(raw["analyzer"]),
            weights=str(raw["weights"]),
            sha256=sha,
            device_uid=device_uid,
            architecture=_frozen(dict(raw["architecture"])),
            input=_frozen(dict(raw["input"])),
            classes=tuple(str(c) for c in raw["classes"]),
            thresholds=MappingProxyType(thresholds),
            intended_use=str(raw["intended_use"]),
            manufacturer=str(raw.get("manufacturer", MANUFACTURER)),
            postprocess=_frozen(dict(raw.get("postprocess") or {})),
            training=_frozen(dict(raw.get("training") or {})),
            metrics=_frozen(dict(raw.get("metrics") or {})),
            exports=_frozen(dict(raw.get("exports") or {})),
            limitations=str(raw.get("limitations", NOT_FOR_CLINICAL_USE)),
            domain=_frozen(dict(raw.get("domain") or {})),
            directory=path.parent,
            external=_frozen(external),
        )

    def to_yaml(self) -> str:
        return str(yaml.safe_dump(self.to_dict(), sort_keys=False, width=110))

    def to_dict(self) -> dict[str, Any]:
        """The card as plain data, as model.yaml holds it (``from_dict`` reads it back)."""
        if self.external:
            return dict(_thaw(self.external))
        d = {
            "name": self.name,
            "version": self.version,
            "manufacturer": self.manufacturer,
            "device_uid": self.device_uid,
            "analyzer": self.analyzer,
            "weights": self.weights,
            "sha256": self.sha256,
            "intended_use": self.intended_use,
            "limitations": self.limitations,
            "architecture": _thaw(self.architecture),
            "input": _thaw(self.input),
            "classes": list(self.classes),
            "thresholds": dict(self.thresholds),
            "postprocess": _thaw(self.postprocess),
            "training": _thaw(self.training),
            "metrics": _thaw(self.metrics),
        }
        if self.domain:
            d["domain"] = _thaw(self.domain)
        if self.exports:
            d["exports"] = _thaw(self.exports)
        return d

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(self.to_yaml())
        tmp.replace(path)


def gate_warnings(cards: Mapping[str, ModelCard], gates: Mapping[str, str]) -> list[str]:
    """One line per model whose card says its post-processing was tuned behind a gate (``postprocess.
    tuned_behind_gate``) that ``models.gates`` does not give it: run alone it outlines far more on normal series.
    Read by ``serve`` (a WARNING at start) and ``check-config`` (a warning line; the configuration stays valid)."""
    out = []
    for name, card in cards.items():
        label = card.postprocess.get("tuned_behind_gate")
        if label and gates.get(name) != label:
            out.append(
                f"model {name}: its post-processing was tuned to run only where '{label}' is present "
                f"(models.gates.{name}: {label}), but it runs "
                + (f"behind '{gates[name]}'" if name in gates else "ungated")
                + "; expect false outlines on normal series (the card's chosen_on gives the ungated rate)"
            )
    return out
