"""Pick the images a DWI model reads from a diffusion series: the b=1000-like trace images, one per slice position.

Scanners send b=0, b=1000 (and sometimes directional images, ADC or exponential ADC) in one series. The infarct model
reads the isotropic (trace) images at the highest b-value between 800 and 1500 s/mm^2.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from triage_node.series.routing import b_value

B_RANGE = (800.0, 1500.0)
DERIVED_MAPS = ("ADC", "EADC", "FA", "EXP")


def _is_map(ds: Dataset) -> bool:
    return any(str(v).upper() in DERIVED_MAPS for v in ds.get("ImageType", []) or [])


def _is_trace(ds: Dataset) -> bool:
    directionality = str(ds.get("DiffusionDirectionality", "") or "").upper()
    image_type = [str(v).upper() for v in ds.get("ImageType", []) or []]
    return directionality == "ISOTROPIC" or any("TRACE" in v for v in image_type)


def _position(ds: Dataset) -> tuple[float, ...]:
    return tuple(round(float(v), 2) for v in ds.get("ImagePositionPatient", []) or [])


def select_dwi(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The trace images at the highest b-value in B_RANGE; all images when the series carries no b-values.

    Directional images at that b-value are dropped where a trace image shares their slice position.
    """
    images = [ds for ds in datasets if not _is_map(ds)]
    b_values = {b for ds in images if (b := b_value(ds)) is not None}
    if not b_values:
        return images
    candidates = sorted(b for b in b_values if B_RANGE[0] <= b <= B_RANGE[1])
    target = candidates[-1] if candidates else max(b_values)
    chosen = [ds for ds in images if b_value(ds) == target]
    by_position: dict[tuple[float, ...], list[Dataset]] = {}
    for ds in chosen:
        by_position.setdefault(_position(ds), []).append(ds)
    out = []
    for group in by_position.values():
        traces = [ds for ds in group if _is_trace(ds)]
        out.extend(traces if traces else group)
    return out
