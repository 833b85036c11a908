"""The acquisition attributes the drift check compares with the model cards, read once per series and kept in
``series_acquisition``: manufacturer, model, reconstruction kernel, slice thickness and pixel spacing from the header
of the series' middle stored instance, and the head's left-right width measured on that slice (the patient-size
figure that matters to a head model; DICOM Patient's Size is body height and usually absent)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage_node.worklist.db import read_transaction, transaction
from triage_node.worklist.key_images import RenderError, inside
from triage_node.worklist.models import Instance, Series, SeriesAcquisition

log = logging.getLogger(__name__)


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(str(v) for v in value)[:64] or None
    return str(value).strip()[:64] or None


def _float(value: Any) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def head_width_mm(pixels: np.ndarray, modality: str, col_spacing: float | None) -> float | None:
    """Left-right extent of the head on one slice: columns holding at least 3 pixels of tissue (CT: above -300 HU;
    MR: above a tenth of the 99th percentile), first to last, times the column spacing."""
    if col_spacing is None or pixels.ndim != 2 or pixels.size == 0:
        return None
    threshold = -300.0 if modality.upper() == "CT" else 0.1 * float(np.percentile(pixels, 99.0))
    tissue = pixels > threshold
    cols = np.flatnonzero(tissue.sum(axis=0) >= 3)
    if cols.size == 0:
        return None
    return round(float(cols[-1] - cols[0] + 1) * col_spacing, 1)


def read_acquisition(path: Path) -> dict[str, Any]:
    """The attributes of one stored instance (see the module docstring). Raises RenderError."""
    try:
        ds = pydicom.dcmread(path)
    except (OSError, InvalidDicomError, ValueError, EOFError) as exc:
        raise RenderError(f"cannot read {path.name}: {type(exc).__name__}") from exc
    spacing = ds.get("PixelSpacing")
    row_sp = _float(spacing[0]) if spacing is not None and len(spacing) == 2 else None
    col_sp = _float(spacing[1]) if spacing is not None and len(spacing) == 2 else None
    width: float | None = None
    try:
        pixels = ds.pixel_array.astype(np.float32)
        if pixels.ndim == 3:  # enhanced multi-frame: its middle frame
            pixels = pixels[pixels.shape[0] // 2]
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        width = head_width_mm(pixels * slope + intercept, str(ds.get("Modality", "") or ""), col_sp)
    except (AttributeError, ValueError, RuntimeError, TypeError):
        width = None
    return {
        "manufacturer": _text(ds.get("Manufacturer")),
        "model_name": _text(ds.get("ManufacturerModelName")),
        "kernel": _text(ds.get("ConvolutionKernel")),
        "slice_thickness_mm": _float(ds.get("SliceThickness")),
        "pixel_spacing_mm": None if row_sp is None or col_sp is None else round((row_sp + col_sp) / 2.0, 4),
        "head_width_mm": width,
    }


def fill_missing(
    sessions: sessionmaker[Session], spool_dir: Path, series_ids: Iterable[int], now: dt.datetime, limit: int = 200
) -> int:
    """Read and store the attributes of up to ``limit`` of ``series_ids`` that have none yet; returns how many were
    read. A series whose files are gone (retention) is stored with its error, so it is not tried again."""
    wanted = sorted(set(series_ids))
    if not wanted:
        return 0
    with read_transaction(sessions) as s:
        have = set(s.scalars(select(SeriesAcquisition.series_id).where(SeriesAcquisition.series_id.in_(wanted))))
        todo = [i for i in wanted if i not in have][:limit]
        picks: dict[int, str | None] = {}
        for series_id in todo:
            rows = s.execute(
                select(Instance.path)
                .where(Instance.series_id == series_id, Instance.superseded.is_(False), Instance.deleted_at.is_(None))
                .order_by(Instance.instance_number, Instance.id)
            ).all()
            picks[series_id] = rows[len(rows) // 2][0] if rows else None
    read: list[SeriesAcquisition] = []
    for series_id, rel in picks.items():
        row = SeriesAcquisition(series_id=series_id, read_at=now)
        try:
            if rel is None:
                raise RenderError("no stored instance (removed by retention)")
            for key, value in read_acquisition(inside(spool_dir, rel)).items():
                setattr(row, key, value)
        except RenderError as exc:
            row.error = str(exc)[:256]
        read.append(row)
    if read:
        with transaction(sessions) as s:
            known = set(
                s.scalars(select(SeriesAcquisition.series_id).where(SeriesAcquisition.series_id.in_(picks)))
            )
            for row in read:
                if row.series_id not in known and s.get(Series, row.series_id) is not None:
                    s.add(row)
    return len(read)
