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


def write_domain(model_dir: Path, name: str) -> None:
    """Set ``domain:`` in ``model_dir/model.yaml`` (through ModelCard, so the card stays valid)."""
    from dataclasses import replace
    from types import MappingProxyType

    from triage_node.inference.card import ModelCard

    card = ModelCard.load(model_dir / "model.yaml")
    card = replace(card, domain=MappingProxyType(dict(DOMAINS[name])))
    card.save(model_dir / "model.yaml")


def main() -> None:  # python -m triage_lab.training.domains MODEL_DIR NAME
    import sys

    write_domain(Path(sys.argv[1]), sys.argv[2])
    print(yaml.safe_dump({"domain": DOMAINS[sys.argv[2]]}))


if __name__ == "__main__":
    main()
