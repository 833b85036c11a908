"""Model directories for the MR models (``models/cmb``, ``models/infarct``) in the shared model-card format."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from safetensors.torch import save_file

from triage_node.inference.card import NOT_FOR_CLINICAL_USE, ModelCard, _thaw, sha256_file
from triage_node.inference.cmb import CandidateConfig

SYNTHETIC_ONLY = (
    "Trained and evaluated on synthetic MR data only (MNI152 tissue maps and a CT-derived head, with simulated "
    "lesions). Not validated on patients. Not for clinical use: research and testing of the triage pipeline only."
)


SYNTHETIC_ONLY_DWI = (
    "Trained and evaluated on synthetic DWI only (MNI152 tissue maps with random pose, size and deformation, and "
    "simulated infarcts). Not validated on patients. Not for clinical use: research and testing of the triage pipeline "
    "only."
)


def _save_weights(out: Path, state: dict[str, torch.Tensor]) -> tuple[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    tmp = out / "model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    tmp.replace(weights)
    return weights.name, sha256_file(weights)


def write_cmb_dir(
    out: Path,
    state: dict[str, torch.Tensor],
    cfg: CandidateConfig,
    params: dict[str, Any],
    threshold: float,
    training: dict[str, Any],
    version: str,
    metrics: dict[str, Any],
) -> ModelCard:
    name, sha = _save_weights(out, state)
    card = ModelCard.from_dict(
        {
            "name": "cmb",
            "version": version,
            "analyzer": "triage_node.inference.cmb:CmbAnalyzer",
            "weights": name,
            "sha256": sha,
            "architecture": MappingProxyType(
                {
                    "net": "five conv blocks (2,2,3,3,3 x conv3x3, zero padding, stride 1, batch norm, ReLU, "
                    "maxpool stride 2), "
                    "one hidden dense layer (64), one logit (Vaish et al.)",
                    "params": params,
                    "framework": "torch",
                }
            ),
            "input": MappingProxyType(
                {
                    "sequence": "SWI or T2*-GRE magnitude (minIP or phase images are not used)",
                    "patch": "3 slices at -2/0/+2 mm, 24 x 24 mm resampled to 32 x 32 px, / brain median - 1",
                    "candidates": asdict(cfg),
                }
            ),
            "classes": ("microbleed",),
            "thresholds": MappingProxyType({"microbleed": float(threshold)}),
            "intended_use": (
                "Counts and locates cerebral microbleeds on an SWI / T2* series for worklist triage. "
                + NOT_FOR_CLINICAL_USE
            ),
            "postprocess": MappingProxyType(
                {
                    "merge_mm": cfg.merge_mm,
                    "match_radius_mm": "max(3, radius + 1.5)",
                    "mask": "sphere per microbleed, radius of the dark spot (bloomed)",
                }
            ),
            "training": MappingProxyType(training),
            "metrics": MappingProxyType(metrics),
            "limitations": SYNTHETIC_ONLY,
        },
        out / "model.yaml",
    )
    card.save(out / "model.yaml")
    return card


def update_metrics(model_dir: Path, metrics: dict[str, Any], key: str = "test") -> ModelCard:
    """Merge evaluation figures into the card's ``metrics`` (under ``key``) and rewrite model.yaml."""
    card = ModelCard.load(model_dir / "model.yaml")
    merged = dict(_thaw(card.metrics))
    merged[key] = metrics
    new = ModelCard.from_dict({**card.to_dict(), "metrics": merged}, model_dir / "model.yaml")
    new.save(model_dir / "model.yaml")
    return new


def update_section(model_dir: Path, section: str, values: dict[str, Any]) -> ModelCard:
    """Merge ``values`` into one mapping field of the card (``training``, ``postprocess``, ...)."""
    card = ModelCard.load(model_dir / "model.yaml")
    merged = dict(_thaw(getattr(card, section)))
    merged.update(values)
    new = ModelCard.from_dict({**card.to_dict(), section: merged}, model_dir / "model.yaml")
    new.save(model_dir / "model.yaml")
    return new


def write_infarct_dir(
    out: Path, state: dict[str, torch.Tensor], recipe: Any, training: dict[str, Any], version: str
) -> ModelCard:
    """``recipe``: an ``InfarctRecipe`` (size, grid, base, min_area_mm2)."""
    name, sha = _save_weights(out, state)
    card = ModelCard.from_dict(
        {
            "name": "infarct",
            "version": version,
            "analyzer": "triage_node.inference.infarct:InfarctAnalyzer",
            "weights": name,
            "sha256": sha,
            "architecture": MappingProxyType(
                {
                    "net": "crop-grid encoder-decoder (dilations 1/2/4) with linear+sigmoid gate "
                    "(Kalmutskiy & Berikov), "
                    "then an affine-registered MNI region atlas for the location",
                    "in_channels": 1,
                    "base": recipe.base,
                    "framework": "torch + monai.networks.blocks",
                }
            ),
            "input": MappingProxyType(
                {
                    "kind": getattr(recipe, "kind", "zscore"),
                    "size": recipe.size,
                    "series": "DWI b=1000 trace images only (no b=0, no ADC); axial",
                    "resize": "pad to square, resample to size; mask resampled back to the original grid",
                }
            ),
            "classes": ("infarct",),
            "thresholds": MappingProxyType({"gate": 0.5, "segmentation": 0.5}),
            "intended_use": (
                "Flags an acute infarct on DWI, outlines it, estimates its volume and names its side and region "
                "for worklist triage. " + NOT_FOR_CLINICAL_USE
            ),
            "postprocess": MappingProxyType(
                {
                    "grid": recipe.grid,
                    "flip_tta": True,
                    "max_components": 1,
                    "components": "3-D, face-connected; the largest is kept (the study's rule)",
                    "min_area_mm2": recipe.min_area_mm2,
                    "finding_label": "infarct",
                    "location": "majority atlas region of the lesion voxels after affine registration; "
                    "side from MNI x; "
                    "bilateral when each side holds >= 20% of the lesion",
                    "regions": [
                        "frontal lobe",
                        "parietal lobe",
                        "temporal lobe",
                        "occipital lobe",
                        "insula",
                        "basal ganglia / internal capsule",
                        "thalamus",
                        "corpus callosum",
                        "centrum semiovale",
                        "brainstem",
                        "cerebellum",
                    ],
                }
            ),
            "training": MappingProxyType(training),
            "metrics": MappingProxyType({}),
            "limitations": SYNTHETIC_ONLY
            + (
                " The region atlas is hand-built from MNI coordinates and tissue maps (see "
                "triage_node/inference/atlas.py); lobar boundaries are approximate to ~1 cm."
            ),
        },
        out / "model.yaml",
    )
    card.save(out / "model.yaml")
    return card
