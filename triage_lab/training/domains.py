"""The training domain each shipped model's card declares (``domain:``; checked per series by
``triage_node.series.domain``): the ranges its randomised generator drew from, so a series outside them gets "not
assessed" instead of a confident answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ADULT = {"contrast": False, "min_age_years": 18}

DOMAINS: dict[str, dict[str, Any]] = {
    # CT: slabs 0.6-5 mm; heads scaled 0.86-1.14 (the smallest about 129 mm wide); non-contrast; adults.
    "ich": {"modality": "CT", "max_slice_thickness_mm": 5.0, "min_head_width_mm": 125, **ADULT},
    "ct_segmenter": {"modality": "CT", "max_slice_thickness_mm": 5.0, "min_head_width_mm": 125, **ADULT},
    # DWI: slices 2.5-5.5 mm; SWI: 1.2-4 mm.
    "infarct": {"modality": "MR", "max_slice_thickness_mm": 5.5, **ADULT},
    "cmb": {"modality": "MR", "max_slice_thickness_mm": 4.0, **ADULT},
}


# The drawn ranges, for the /performance page's drift check (``input.ranges``, docs/api.md).
RANGES: dict[str, dict[str, Any]] = {
    "ich": {"slice_thickness_mm": [0.6, 5.0], "pixel_spacing_mm": [0.37, 1.02], "head_width_mm": [125, 200]},
    "ct_segmenter": {"slice_thickness_mm": [0.6, 5.0], "pixel_spacing_mm": [0.37, 1.02], "head_width_mm": [125, 200]},
    "infarct": {"slice_thickness_mm": [2.5, 5.5], "pixel_spacing_mm": [1.0, 2.0]},
    "cmb": {"slice_thickness_mm": [1.2, 4.0], "pixel_spacing_mm": [0.7, 1.2]},
}


def write_domain(model_dir: Path, name: str) -> None:
    """Set ``domain:`` and ``input.ranges`` in ``model_dir/model.yaml`` (through ModelCard, so the card stays
    valid)."""
    from triage_node.inference.card import ModelCard

    path = model_dir / "model.yaml"
    d = ModelCard.load(path).to_dict()
    d["input"]["ranges"] = RANGES[name]
    d["domain"] = DOMAINS[name]
    ModelCard.from_dict(d, path).save(path)


def main() -> None:  # python -m triage_lab.training.domains MODEL_DIR NAME
    import sys

    write_domain(Path(sys.argv[1]), sys.argv[2])
    print(yaml.safe_dump({"domain": DOMAINS[sys.argv[2]]}))


if __name__ == "__main__":
    main()
