"""Is a series inside what a model was trained on? A series outside gets "not assessed" with the reason, never a
confident flag.

A model card may declare its training domain::

    domain:
      max_slice_thickness_mm: 5.0    # thicker slices were never seen
      contrast: false               # trained on non-contrast studies only
      min_head_width_mm: 125        # smaller heads (young children) were never seen
      min_age_years: 18             # PatientAge below this is a paediatric study
      modality: CT

:func:`outside_domain` checks a series against it and returns the first reason, or None. It reads only header
attributes and the decoded volume, never the model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from scipy import ndimage

from triage_node.preprocess.volume import Volume

NOT_ASSESSED = "not_assessed"
THICKNESS_TOLERANCE_MM = 0.05

_NEGATED = re.compile(r"non[- ]?contrast|without contrast|w/?o contrast|\bnc\b|nect|ncct|native|nativ\b|\bc-", re.I)
_CONTRAST = re.compile(r"\bc\+|contrast|post[- ]?(gad|contrast)|\bcta\b|angio|\bkm\b|\bmit km\b|enhanced|\bce\b", re.I)


def contrast_enhanced(ds: Dataset) -> bool:
    """Whether the series was acquired after contrast: a Contrast/Bolus Agent in the header, or a description that
    says so (and does not say "non-contrast")."""
    agent = str(ds.get("ContrastBolusAgent", "") or "").strip()
    if agent and agent.lower() not in ("none", "no", "n/a", "0"):
        return True
    text = " ".join(str(ds.get(k, "") or "") for k in ("SeriesDescription", "StudyDescription", "ProtocolName"))
    return bool(_CONTRAST.search(text)) and not _NEGATED.search(text)


def age_years(ds: Dataset) -> float | None:
    """PatientAge (``nnnD|W|M|Y``) in years, None when absent or malformed."""
    m = re.fullmatch(r"(\d{1,3})([DWMY])", str(ds.get("PatientAge", "") or "").strip().upper())
    if not m:
        return None
    per = {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0}[m.group(2)]
    return int(m.group(1)) / per


def slice_thickness_mm(datasets: Sequence[Dataset], volume: Volume) -> float:
    """SliceThickness of the series (the largest of its images), else the slice spacing of the volume."""
    values = []
    for ds in datasets:
        try:
            values.append(float(ds.SliceThickness))
        except (AttributeError, TypeError, ValueError):
            continue
    return max(values) if values else float(volume.spacing[0])


def head_width_mm(volume: Volume) -> float:
    """The widest left-right extent of the head (CT: the largest component above -300 HU per slice), in mm."""
    px = volume.pixels[:, ::2, ::2]
    dx = volume.spacing[2] * 2
    best = 0.0
    for plane in px:
        fg = plane > -300
        if not fg.any():
            continue
        lab, n = ndimage.label(fg)
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            fg = lab == int(np.argmax(sizes))
        cols = np.flatnonzero(fg.any(axis=0))
        best = max(best, float(cols[-1] - cols[0] + 1) * dx)
    return best


def outside_domain(domain: Mapping[str, Any], datasets: Sequence[Dataset], volume: Volume) -> str | None:
    """The reason the series lies outside ``domain`` (a card's ``domain`` mapping), or None when it is inside."""
    if not domain or not datasets:
        return None
    first = datasets[0]
    limit = domain.get("max_slice_thickness_mm")
    if limit is not None:
        t = slice_thickness_mm(datasets, volume)
        # Compared at the 0.1 mm a scanner displays: a "5 mm" series whose header says 5.016 (a reformat, a slab
        # computed from positions) is the 5 mm the model was trained on; 5.1 mm is not.
        if t >= float(limit) + THICKNESS_TOLERANCE_MM:
            return f"slice thickness {t:.1f} mm is above the {float(limit):g} mm the model was trained on"
    if domain.get("contrast") is False and contrast_enhanced(first):
        return "contrast-enhanced series; the model was trained on non-contrast studies only"
    min_age = domain.get("min_age_years")
    age = age_years(first)
    if min_age is not None and age is not None and age < float(min_age):
        return f"paediatric study (patient age below {float(min_age):g} years); the model was trained on adult heads"
    min_width = domain.get("min_head_width_mm")
    if min_width is not None and volume.modality.upper() == "CT":
        w = head_width_mm(volume)
        if 0 < w < float(min_width):
            return (
                f"head width {w:.0f} mm is below the {float(min_width):g} mm of the smallest head the model was "
                "trained on (paediatric head size)"
            )
    return None
