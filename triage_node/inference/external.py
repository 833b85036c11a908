"""Models from outside: the card of a MONAI bundle, a TorchScript or an ONNX model, read and checked without torch.

An external card declares ``kind`` (classifier | segmenter | detector) and ``format`` (torchscript | onnx |
monai_bundle) instead of an analyzer class; everything the generic analyzers (``inference/generic.py``) need is in the
card: the input (orientation, spacing, size, intensity channels, 2.5-D context), one label per output channel with its
finding code, threshold and priority, the post-processing and which series the model accepts. Every problem is
reported with its key path in the card (``labels[1].threshold: must be in [0, 1], got 2``), so a broken card is refused
when the daemon starts, never at the first study.

This module imports no torch, MONAI or ONNX Runtime: ``triage-node check-config`` reads cards with it and imports the
heavy runtime only when the configuration names an external model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from triage_node.inference.errors import ModelLoadError

KINDS = ("classifier", "segmenter", "detector")
FORMATS = ("torchscript", "onnx", "monai_bundle")
ACTIVATIONS = ("sigmoid", "softmax", "none")
PRIORITIES = ("critical", "urgent", "routine", "none")
NORMALISE = ("zscore", "robust", "none")
ORIENTATION_LETTERS = {"L": 0, "R": 0, "P": 1, "A": 1, "I": 2, "S": 2}
GENERIC_ANALYZER = "triage_node.inference.generic:GenericAnalyzer"
BACKGROUND = "background"
_LABEL = re.compile(r"[a-z][a-z0-9_]{0,47}")
_CARD_ONLY = ("kind", "format", "labels", "accepts", "output", "heatmap")


class SpecError(ValueError):
    """An external model card is wrong; the message starts with the card's key path."""


def is_external(raw: Mapping[str, Any]) -> bool:
    """True for a card that describes a model from outside (``format`` or ``kind``) rather than an analyzer class."""
    return "format" in raw or "kind" in raw


def sha256_path(path: Path) -> str:
    """The sha256 of a weights file, or of a folder (a MONAI bundle): the hash of its manifest, one line
    ``<sha256 of the file>  <path relative to the folder>`` per file in sorted order (hidden files and
    ``__pycache__`` skipped), so any change to the network definition, the configs or the weights changes it."""
    if not path.is_dir():
        h = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    lines = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if p.is_file() and not any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            lines.append(f"{sha256_path(p)}  {rel.as_posix()}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


@dataclass(frozen=True)
class CodeSpec:
    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class LabelSpec:
    """One output channel. ``reported`` is False for ``background``."""

    name: str
    threshold: float
    priority: str | None
    code: CodeSpec | None
    segment_code: CodeSpec | None
    region_code: CodeSpec | None
    phrase: str

    @property
    def reported(self) -> bool:
        return self.name != BACKGROUND


@dataclass(frozen=True)
class ChannelSpec:
    """How one input channel is made from the volume: ``window`` (level, width) or ``range`` (low, high) map to
    [0, 1] with clipping; ``normalise`` zscore | robust | none."""

    window: tuple[float, float] | None = None
    range: tuple[float, float] | None = None
    normalise: str | None = None


@dataclass(frozen=True)
class ExternalSpec:
    kind: str
    format: str
    dims: int
    orientation: str | None
    spacing: tuple[float, ...] | None
    size: tuple[int, ...]
    fit: str
    channels: tuple[ChannelSpec, ...]
    context: int
    overlap: float
    batch: int
    activation: str
    aggregation: str
    labels: tuple[LabelSpec, ...]
    modalities: tuple[str, ...]
    pipelines: tuple[str, ...]
    min_slices: int
    max_slice_spacing_mm: float | None
    max_components: int
    min_volume_ml: float
    min_component_mm3: float
    min_count: int
    heatmap_layer: str | None
    heatmap_label: str | None
    heatmap_max_slices: int
    bundle_weights: str | None

    @property
    def in_channels(self) -> int:
        return len(self.channels) * (2 * self.context + 1)

    @property
    def reported(self) -> tuple[LabelSpec, ...]:
        return tuple(label for label in self.labels if label.reported)

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The network input the card declares, e.g. (1, 3, 64, 64) for 2-D or (1, 1, 32, 64, 64) for 3-D."""
        return (batch, self.in_channels, *self.size)

    def output_shape(self, batch: int = 1) -> tuple[int, ...]:
        spatial = () if self.kind == "classifier" else self.size
        return (batch, len(self.labels), *spatial)


# ---- parsing helpers: each raises SpecError naming the key path ---------------------------------------------------


def _get(d: Mapping[str, Any], key: str, path: str, default: Any = None, required: bool = False) -> Any:
    if key not in d or d[key] is None:
        if required:
            raise SpecError(f"{path}{key}: required")
        return default
    return d[key]


def _mapping(v: Any, path: str) -> Mapping[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, Mapping):
        raise SpecError(f"{path}: must be a mapping, got {type(v).__name__}")
    return v


def _choice(v: Any, options: Sequence[str], path: str) -> str:
    if v not in options:
        raise SpecError(f"{path}: must be one of {', '.join(options)}, got {v!r}")
    return str(v)


def _number(v: Any, path: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise SpecError(f"{path}: must be a number, got {v!r}")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise SpecError(f"{path}: must be in [{lo:g}, {hi if hi is not None else 'inf'}], got {v!r}")
    return float(v)


def _int(v: Any, path: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise SpecError(f"{path}: must be an integer >= {lo}, got {v!r}")
    return int(v)


def _numbers(v: Any, path: str, n: int | None, positive: bool = True) -> tuple[float, ...]:
    if not isinstance(v, list | tuple) or (n is not None and len(v) != n):
        raise SpecError(f"{path}: must be a list of {n if n is not None else 'some'} numbers, got {v!r}")
    return tuple(_number(x, f"{path}[{i}]", lo=1e-6 if positive else None) for i, x in enumerate(v))


def _code(v: Any, path: str) -> CodeSpec | None:
    if v is None:
        return None
    d = _mapping(v, path)
    scheme = str(_get(d, "scheme", f"{path}.", required=True))
    value = str(_get(d, "value", f"{path}.", required=True))
    meaning = str(_get(d, "meaning", f"{path}.", required=True))
    for key, text, limit in (("scheme", scheme, 16), ("value", value, 16), ("meaning", meaning, 64)):
        if not text or len(text) > limit or "\\" in text:
            raise SpecError(f"{path}.{key}: must be 1-{limit} characters without backslash, got {text!r}")
    return CodeSpec(scheme, value, meaning)


def _channel(v: Any, path: str) -> ChannelSpec:
    d = _mapping(v, path)
    given = [k for k in ("window", "range", "normalise") if k in d]
    if len(given) != 1 or set(d) - {"window", "range", "normalise"}:
        raise SpecError(f"{path}: must have exactly one of window: [level, width], range: [low, high], "
                        f"normalise: {'|'.join(NORMALISE)}; got {dict(d)!r}")
    if "window" in d:
        level, width = _numbers(d["window"], f"{path}.window", 2, positive=False)
        if width <= 0:
            raise SpecError(f"{path}.window[1]: the width must be positive, got {width:g}")
        return ChannelSpec(window=(level, width))
    if "range" in d:
        lo, hi = _numbers(d["range"], f"{path}.range", 2, positive=False)
        if hi <= lo:
            raise SpecError(f"{path}.range: high must exceed low, got {[lo, hi]}")
        return ChannelSpec(range=(lo, hi))
    return ChannelSpec(normalise=_choice(d["normalise"], NORMALISE, f"{path}.normalise"))


def parse(raw: Mapping[str, Any]) -> ExternalSpec:
    """The external part of a card; ``SpecError`` with the key path on the first problem."""
    kind = _choice(raw.get("kind"), KINDS, "kind")
    fmt = _choice(raw.get("format"), FORMATS, "format")

    inp = _mapping(raw.get("input"), "input")
    dims = _int(_get(inp, "dims", "input.", 2), "input.dims", 2)
    if dims not in (2, 3):
        raise SpecError(f"input.dims: must be 2 (per slice) or 3 (whole volume, sliding window), got {dims}")
    if kind == "classifier" and dims != 2:
        raise SpecError("input.dims: a classifier reads slices (2-D or 2.5-D) and aggregates them per series; got 3")
    orientation = _get(inp, "orientation", "input.")
    if orientation is not None:
        orientation = str(orientation).upper()
        if len(orientation) != 3 or sorted(ORIENTATION_LETTERS[c] for c in orientation if c in ORIENTATION_LETTERS) \
                != [0, 1, 2]:
            raise SpecError(f"input.orientation: must be three letters naming each axis once (e.g. RAS, LPS), "
                            f"got {orientation!r}")
    n_spatial = 2 if dims == 2 else 3
    spacing = _get(inp, "spacing", "input.")
    spacing_t = _numbers(spacing, "input.spacing", n_spatial) if spacing is not None else None
    size_v = _get(inp, "size", "input.", required=True)
    if isinstance(size_v, int) and not isinstance(size_v, bool):
        size_v = [size_v] * n_spatial
    if not isinstance(size_v, list | tuple) or len(size_v) != n_spatial:
        raise SpecError(f"input.size: must be {n_spatial} integers for input.dims {dims}, got {size_v!r}")
    size = tuple(_int(s, f"input.size[{i}]", 1) for i, s in enumerate(size_v))
    fit = _choice(_get(inp, "fit", "input.", "resize"), ("resize", "pad"), "input.fit")
    chans_v = _get(inp, "channels", "input.", [{"normalise": "none"}])
    if not isinstance(chans_v, list | tuple) or not chans_v:
        raise SpecError(f"input.channels: must be a non-empty list, got {chans_v!r}")
    channels = tuple(_channel(c, f"input.channels[{i}]") for i, c in enumerate(chans_v))
    context = _int(_get(inp, "context", "input.", 0), "input.context")
    if context and dims == 3:
        raise SpecError("input.context: neighbouring slices as channels (2.5-D) need input.dims 2")
    overlap = _number(_get(inp, "overlap", "input.", 0.25), "input.overlap", 0.0, 0.95)
    batch = _int(_get(inp, "batch", "input.", 4 if dims == 3 else 16), "input.batch", 1)

    out = _mapping(raw.get("output"), "output")
    default_act = "softmax" if kind != "classifier" else "sigmoid"
    activation = _choice(_get(out, "activation", "output.", default_act), ACTIVATIONS, "output.activation")
    aggregation = str(_get(out, "aggregation", "output.", "top2_mean"))
    if not (aggregation == "max" or re.fullmatch(r"top[1-9][0-9]*_mean", aggregation)):
        raise SpecError(f"output.aggregation: must be max or topK_mean (e.g. top2_mean), got {aggregation!r}")

    labels_v = raw.get("labels")
    if not isinstance(labels_v, list | tuple) or not labels_v:
        raise SpecError("labels: required, one entry per output channel (the first is 'background' for a softmax "
                        "segmenter)")
    labels = []
    for i, lv in enumerate(labels_v):
        p = f"labels[{i}]"
        d = {"name": lv} if isinstance(lv, str) else _mapping(lv, p)
        name = str(_get(d, "name", f"{p}.", required=True))
        if not _LABEL.fullmatch(name):
            raise SpecError(f"{p}.name: must be lower-case letters, digits and _ (1-48, a letter first), got {name!r}")
        known = {"name", "threshold", "priority", "code", "segment_code", "region_code", "phrase"}
        extra = sorted(set(d) - known)
        if extra:
            raise SpecError(f"{p}.{extra[0]}: unknown key (known: {', '.join(sorted(known))})")
        priority = _get(d, "priority", f"{p}.")
        labels.append(
            LabelSpec(
                name=name,
                threshold=_number(_get(d, "threshold", f"{p}.", 0.5), f"{p}.threshold", 0.0, 1.0),
                priority=None if priority is None else _choice(priority, PRIORITIES, f"{p}.priority"),
                code=_code(d.get("code"), f"{p}.code"),
                segment_code=_code(d.get("segment_code"), f"{p}.segment_code"),
                region_code=_code(d.get("region_code"), f"{p}.region_code"),
                phrase=str(_get(d, "phrase", f"{p}.", name.replace("_", " ")))[:64],
            )
        )
    names = [label.name for label in labels]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise SpecError(f"labels: names must be unique, got {dupes} more than once")
    if not any(label.reported for label in labels):
        raise SpecError("labels: at least one label other than background is needed")
    if activation == "softmax" and len(labels) < 2:
        raise SpecError("output.activation: softmax needs at least two labels (e.g. background and the lesion)")

    acc = _mapping(raw.get("accepts"), "accepts")
    mods = _get(acc, "modalities", "accepts.", required=True)
    if not isinstance(mods, list | tuple) or not mods:
        raise SpecError(f"accepts.modalities: must be a non-empty list such as [CT], got {mods!r}")
    pipes = _get(acc, "pipelines", "accepts.", [])
    if not isinstance(pipes, list | tuple):
        raise SpecError(f"accepts.pipelines: must be a list such as [ct_head], got {pipes!r}")
    max_sp = _get(acc, "max_slice_spacing_mm", "accepts.")

    post = _mapping(raw.get("postprocess"), "postprocess")
    heat = _mapping(raw.get("heatmap"), "heatmap")
    layer = _get(heat, "layer", "heatmap.")
    if heat and layer is None:
        raise SpecError("heatmap.layer: required (the network layer Grad-CAM reads, e.g. features.norm5)")
    if layer is not None:
        if kind != "classifier":
            raise SpecError(f"heatmap: Grad-CAM maps are made for classifiers; a {kind} has its mask")
        if fmt != "monai_bundle":
            raise SpecError(f"heatmap: Grad-CAM needs the network's Python modules (monai_bundle); format {fmt} "
                            "cannot give gradients at a named layer")
    heat_label = _get(heat, "label", "heatmap.")
    if heat_label is not None and heat_label not in names:
        raise SpecError(f"heatmap.label: {heat_label!r} is not one of labels ({', '.join(names)})")
    bundle_weights = _get(raw, "bundle_weights", "")
    if bundle_weights is not None and fmt != "monai_bundle":
        raise SpecError(f"bundle_weights: only for format monai_bundle, got format {fmt}")
    return ExternalSpec(
        kind=kind,
        format=fmt,
        dims=dims,
        orientation=orientation,
        spacing=spacing_t,
        size=size,
        fit=fit,
        channels=channels,
        context=context,
        overlap=overlap,
        batch=batch,
        activation=activation,
        aggregation=aggregation,
        labels=tuple(labels),
        modalities=tuple(str(m).upper() for m in mods),
        pipelines=tuple(str(p) for p in pipes),
        min_slices=_int(_get(acc, "min_slices", "accepts.", 1), "accepts.min_slices", 1),
        max_slice_spacing_mm=None if max_sp is None else _number(max_sp, "accepts.max_slice_spacing_mm", 1e-6),
        max_components=_int(_get(post, "max_components", "postprocess.", 0), "postprocess.max_components"),
        min_volume_ml=_number(_get(post, "min_volume_ml", "postprocess.", 0.0), "postprocess.min_volume_ml", 0.0),
        min_component_mm3=_number(
            _get(post, "min_component_mm3", "postprocess.", 0.0), "postprocess.min_component_mm3", 0.0
        ),
        min_count=_int(_get(post, "min_count", "postprocess.", 1), "postprocess.min_count", 1),
        heatmap_layer=None if layer is None else str(layer),
        heatmap_label=None if heat_label is None else str(heat_label),
        heatmap_max_slices=_int(_get(heat, "max_slices", "heatmap.", 12), "heatmap.max_slices", 1),
        bundle_weights=None if bundle_weights is None else str(bundle_weights),
    )


def card_fields(raw: dict[str, Any], path: Path) -> dict[str, Any]:
    """The fields of a ``ModelCard`` for an external card: the analyzer is the generic one, ``classes`` and
    ``thresholds`` come from ``labels``, ``architecture`` records kind and format, and ``external`` keeps the whole
    card for ``parse``. Raises ``SpecError`` with the key path."""
    if "analyzer" in raw and raw["analyzer"] != GENERIC_ANALYZER:
        raise SpecError(f"analyzer: an external card (format/kind) runs on {GENERIC_ANALYZER}; remove the key")
    spec = parse(raw)
    out = dict(raw)
    out["analyzer"] = GENERIC_ANALYZER
    out["architecture"] = {"kind": spec.kind, "format": spec.format, **dict(raw.get("architecture") or {})}
    out["classes"] = [label.name for label in spec.labels]
    out["thresholds"] = {label.name: label.threshold for label in spec.labels}
    out["postprocess"] = dict(raw.get("postprocess") or {})
    return out


def card_priorities(specs: Mapping[str, ExternalSpec]) -> dict[str, str]:
    """Label -> priority from the external cards (what ``models.priority`` does not list)."""
    out: dict[str, str] = {}
    for spec in specs.values():
        for label in spec.reported:
            if label.priority is not None:
                out.setdefault(label.name, label.priority)
    return out


def pipeline_problems(
    pipelines: Mapping[Any, Sequence[str]], specs: Mapping[str, ExternalSpec], cards: Mapping[str, Path]
) -> list[str]:
    """A model configured in a pipeline its card does not accept (``accepts.pipelines``), with the card's path."""
    problems = []
    for pipeline, names in pipelines.items():
        pname = getattr(pipeline, "value", pipeline)
        for name in names:
            spec = specs.get(name)
            if spec is None:
                continue
            if spec.pipelines and pname not in spec.pipelines:
                problems.append(
                    f"{cards[name]}: accepts.pipelines: the card accepts {list(spec.pipelines)}, but "
                    f"models.pipelines.{pname} names model {name!r}"
                )
            modality = str(pname).split("_")[0].upper()
            if modality in ("CT", "MR") and modality not in spec.modalities:
                problems.append(
                    f"{cards[name]}: accepts.modalities: the card accepts {list(spec.modalities)}, but "
                    f"models.pipelines.{pname} (a {modality} pipeline) names model {name!r}"
                )
    return problems


def card_settings(config: Any, analyzers: Mapping[str, Any]) -> Any:
    """The configuration the pipeline runs with: ``models.priority`` completed by the external cards' per-label
    priorities (a label the configuration lists keeps the configuration's priority). Raises ``ModelLoadError`` when a
    pipeline names an external model its card does not accept."""
    specs = {n: a.spec for n, a in analyzers.items() if isinstance(getattr(a, "spec", None), ExternalSpec)}
    if not specs:
        return config
    cards = {n: analyzers[n].card.directory / "model.yaml" for n in specs}
    problems = pipeline_problems(config.models.pipelines, specs, cards)
    if problems:
        raise ModelLoadError("; ".join(problems))
    priority = {**card_priorities(specs), **dict(config.models.priority)}
    return config.model_copy(update={"models": config.models.model_copy(update={"priority": priority})})


def external_names(models_dir: Path, names: Sequence[str]) -> list[str]:
    """Those of ``names`` whose card in ``models_dir`` describes a model from outside (read as YAML only, no torch)."""
    import yaml

    out = []
    for name in names:
        try:
            raw = yaml.safe_load((models_dir / name / "model.yaml").read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(raw, dict) and is_external(raw):
            out.append(name)
    return out
