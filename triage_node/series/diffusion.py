"""Pick the images a DWI model reads from a diffusion series: the b=1000-like trace images, one per slice position.

Scanners send b=0, b=1000 (and sometimes directional images, ADC or exponential ADC) in one series. The infarct model
reads the isotropic (trace) images at the highest b-value between 800 and 1500 s/mm^2.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset

from triage_node.series.geometry import GeometryError, Slice, pixels, plan
from triage_node.series.routing import b_value

B_RANGE = (800.0, 1500.0)
B0_MAX = 50.0  # images at or below this b-value are the series' b=0 (T2-weighted) reference
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


def select_b0(datasets: Sequence[Dataset]) -> list[Dataset]:
    """The b=0 images of a diffusion series (the lowest b-value, at most ``B0_MAX``), one per slice position; none when
    the series carries no b-values or no b=0 images. With b=0 and b=1000 of one slice, ADC (restricted diffusion:
    dark in an acute infarct, raised in T2 shine-through) follows as ln(S0 / S1000) / b."""
    images = [ds for ds in datasets if not _is_map(ds)]
    b_values = {b for ds in images if (b := b_value(ds)) is not None}
    if not b_values or min(b_values) > B0_MAX:
        return []
    lowest = min(b_values)
    by_position: dict[tuple[float, ...], Dataset] = {}
    for ds in images:
        if b_value(ds) == lowest:
            by_position.setdefault(_position(ds), ds)
    return list(by_position.values())


def b0_companion(datasets: Sequence[Dataset], kept: Sequence[Slice]) -> np.ndarray | None:
    """The b=0 planes float32 (k, y, x) at the positions of ``kept`` (the b=1000 slices a volume was built from, in its
    order), or None when the series lacks a b=0 image at any of them, or one of another size or geometry."""
    b0 = select_b0(datasets)
    if not b0 or not kept:
        return None
    try:
        by_position = {_rounded(s.position): s for s in plan(b0)}
    except GeometryError:
        return None
    partners = [by_position.get(_rounded(s.position)) for s in kept]
    if any(p is None or p.orientation != s.orientation for p, s in zip(partners, kept, strict=True)):
        return None
    rows, cols = int(kept[0].dataset.Rows), int(kept[0].dataset.Columns)
    out = np.empty((len(kept), rows, cols), np.float32)
    for i, p in enumerate(partners):
        assert p is not None
        plane = pixels(p)
        if plane.shape != (rows, cols):
            return None
        out[i] = plane
    return out


def _rounded(position: Sequence[float]) -> tuple[float, ...]:
    return tuple(round(float(v), 1) for v in position)
