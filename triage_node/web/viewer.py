"""The study page's series viewer: every stored slice of a job's series, rendered by the server from the spool.

A slice is three layers the browser stacks on one canvas: the grey image in a window preset (``image``), the lesion
outline (``outline``, transparent PNG) and the Grad-CAM heat map (``heat``, transparent PNG). Toggling an overlay
therefore costs the browser nothing, and only a window change asks for new images. Rendered layers are kept in a
byte-bounded LRU cache; a series' slice order and its overlay planes are read once per job and cached too.

URLs name the job and the slice's index only (``/viewer/jobs/7/slices/12/image.png?window=brain``): no patient data,
no UIDs. The slice order is the series' own geometry (position along the slice normal), every stored instance once;
a series with several images per position (a DWI with its b-values) shows the images the pipeline analysed.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage_node.preprocess.windows import Preset, Window
from triage_node.results.masks import MasksError, masks_path, open_masks
from triage_node.worklist.db import read_transaction
from triage_node.worklist.key_images import (
    HEATMAP_ALPHA,
    HEATMAP_MIN,
    OUTLINE_RGB,
    RenderError,
    heat_colors,
    inside,
    outline,
    read_slice,
)
from triage_node.worklist.models import FindingRow, Instance, Job, Series

log = logging.getLogger(__name__)

LAYERS = ("image", "outline", "heat", "shadow")
SHADOW_RGB = (214, 120, 255)  # a shadow model's outline: never the live yellow
CT_WINDOWS: dict[str, Window] = {
    "brain": Preset.BRAIN.value,
    "subdural": Preset.SUBDURAL.value,
    "bone": Preset.BONE.value,
}
MR_WINDOWS = ("auto",)
MAX_SIDE = 1024  # larger matrices are scaled down before encoding
HEADER_TAGS = ["ImagePositionPatient", "ImageOrientationPatient", "InstanceNumber", "Modality", "SOPInstanceUID"]


class ViewerError(LookupError):
    """The job, the slice or the layer is unknown (404), or its files are gone (retention)."""


@dataclass(frozen=True)
class Jump:
    """A button in the viewer: a key slice of a finding, or the first slice of a finding."""

    kind: str  # key | finding
    label: str
    model: str
    index: int
    text: str
    shadow: bool = False


@dataclass
class SeriesView:
    """One job's series as the viewer shows it. ``paths``: the stored files in display order."""

    job_id: int
    modality: str
    paths: list[Path]
    sop_uids: list[str]
    analysed: list[bool]
    outline_planes: dict[int, np.ndarray] = field(default_factory=dict)
    heat_planes: dict[int, np.ndarray] = field(default_factory=dict)
    shadow_planes: dict[int, np.ndarray] = field(default_factory=dict)
    jumps: list[Jump] = field(default_factory=list)
    auto_window: Window | None = None

    @property
    def windows(self) -> tuple[str, ...]:
        return tuple(CT_WINDOWS) if self.modality.upper() == "CT" else MR_WINDOWS

    @property
    def default_window(self) -> str:
        return self.windows[0]

    def meta(self) -> dict[str, Any]:
        """The JSON the viewer script starts from."""
        return {
            "job_id": self.job_id,
            "modality": self.modality,
            "count": len(self.paths),
            "windows": list(self.windows),
            "default_window": self.default_window,
            "slices": [
                {
                    "index": i,
                    "analysed": self.analysed[i],
                    "outline": i in self.outline_planes,
                    "heat": i in self.heat_planes,
                    "shadow": i in self.shadow_planes,
                }
                for i in range(len(self.paths))
            ],
            "jumps": [
                {"kind": j.kind, "label": j.label, "model": j.model, "index": j.index, "text": j.text,
                 "shadow": j.shadow}
                for j in self.jumps
            ],
            "layer_url": f"/viewer/jobs/{self.job_id}/slices/{{index}}/{{layer}}.png",
        }


def _position(ds: pydicom.Dataset) -> float | None:
    try:
        ipp = [float(v) for v in ds.ImagePositionPatient]
        iop = [float(v) for v in ds.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return None
    normal = np.cross(np.asarray(iop[:3]), np.asarray(iop[3:6]))
    return float(np.dot(normal, np.asarray(ipp)))


Planes = dict[int, np.ndarray]


def _masks(masks_file: Path | None) -> tuple[list[str], Planes, Planes, Planes]:
    """(analysed SOP UIDs in volume order, live mask planes by volume z (all labels), heat planes by volume z (max),
    shadow models' mask planes by volume z)."""
    if masks_file is None or not masks_file.is_file():
        return [], {}, {}, {}
    outlines: Planes = {}
    heats: Planes = {}
    shadows: Planes = {}
    try:
        with open_masks(masks_file) as stored:
            uids = stored.uids
            for layer, arr in stored.layers("mask", shadow=None):
                into = shadows if layer.shadow else outlines
                for z in np.flatnonzero(arr.reshape(arr.shape[0], -1).any(axis=1)):
                    plane = arr[int(z)]
                    into[int(z)] = plane | into[int(z)] if int(z) in into else plane.copy()
            for _, arr8 in stored.layers("heatmap"):
                strong = arr8.reshape(arr8.shape[0], -1).max(axis=1) >= int(HEATMAP_MIN * 255)
                for z in np.flatnonzero(strong):
                    plane8 = arr8[int(z)]
                    heats[int(z)] = np.maximum(plane8, heats[int(z)]) if int(z) in heats else plane8.copy()
    except MasksError as exc:
        raise RenderError(str(exc)) from exc
    return uids, outlines, heats, shadows


def load_series_view(sessions: sessionmaker[Session], spool_dir: Path, job_id: int) -> SeriesView:
    """Read the job's series (headers only), its findings and its masks file into a SeriesView. Raises ViewerError."""
    with read_transaction(sessions) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise ViewerError(f"no job {job_id}")
        series = s.get(Series, job.series_id)
        assert series is not None
        rows = s.execute(
            select(Instance.sop_instance_uid, Instance.path, Instance.instance_number)
            .where(Instance.series_id == series.id, Instance.superseded.is_(False), Instance.deleted_at.is_(None))
            .order_by(Instance.id)
        ).all()
        findings = s.scalars(select(FindingRow).where(FindingRow.job_id == job_id).order_by(FindingRow.id)).all()
        finding_data = [
            (f.label, f.model, f.present, f.probability, list(f.key_sop_uids or []), bool(f.shadow)) for f in findings
        ]
        results_dir = job.results_dir
        modality = series.modality or ""
    if not rows:
        raise ViewerError(f"job {job_id}: no stored instances (removed by retention?)")
    entries: list[tuple[float, int, str, Path]] = []
    for sop, rel, number in rows:
        try:
            path = inside(spool_dir, rel)
        except RenderError:
            continue
        position: float | None = None
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=HEADER_TAGS)
            position = _position(ds)
            modality = modality or str(getattr(ds, "Modality", "") or "")
        except (OSError, InvalidDicomError, ValueError, EOFError):
            continue
        entries.append((position if position is not None else float(number or 0), int(number or 0), str(sop), path))
    if not entries:
        raise ViewerError(f"job {job_id}: no readable stored instance")
    # Along the slice normal, as the pipeline's volume (feet to head for axial slices), then instance number.
    entries.sort(key=lambda e: (e[0], e[1]))
    masks_file = masks_path(results_dir) if results_dir else None
    analysed_uids, outline_by_z, heat_by_z, shadow_by_z = _masks(masks_file)
    z_of = {uid: z for z, uid in enumerate(analysed_uids)}
    positions = [round(e[0], 3) for e in entries]
    if analysed_uids and len(set(positions)) < len(positions):
        # several images per position (b-values, echoes): show the ones the models read
        entries = [e for e in entries if e[2] in z_of] or entries
    view = SeriesView(
        job_id=job_id,
        modality=modality,
        paths=[e[3] for e in entries],
        sop_uids=[e[2] for e in entries],
        analysed=[e[2] in z_of for e in entries],
    )
    index_of = {uid: i for i, uid in enumerate(view.sop_uids)}
    for uid, z in z_of.items():
        if uid not in index_of:
            continue
        if z in outline_by_z:
            view.outline_planes[index_of[uid]] = outline(outline_by_z[z])
        if z in heat_by_z:
            view.heat_planes[index_of[uid]] = heat_by_z[z]
        if z in shadow_by_z:
            view.shadow_planes[index_of[uid]] = outline(shadow_by_z[z])
    ordered = sorted(finding_data, key=lambda f: (f[5], not f[2], -f[3]))
    for label, model, present, _p, keys, shadow in ordered:
        if not present:
            continue
        idx = [index_of[k] for k in keys if k in index_of]
        if idx:
            pretty = label.replace("_", " ")
            view.jumps.append(Jump("finding", label, model, min(idx), f"{pretty} ({model})", shadow))
            for n, i in enumerate(idx[:4], 1):
                view.jumps.append(Jump("key", label, model, i, f"key {n}: {pretty}", shadow))
    if view.modality.upper() != "CT":
        view.auto_window = _auto_window(view)
    return view


def _auto_window(view: SeriesView) -> Window:
    """MR: one window for the whole series (0.5-99.5th percentile of the tissue in the middle slices), so the
    brightness does not jump from slice to slice."""
    n = len(view.paths)
    picks = sorted({n // 2, max(0, n // 2 - n // 6), min(n - 1, n // 2 + n // 6)})
    values: list[np.ndarray] = []
    for i in picks:
        try:
            pixels, _ = read_slice(view.paths[i])
        except RenderError:
            continue
        flat = pixels.ravel()
        tissue = flat[flat > np.percentile(flat, 20)] if flat.size else flat
        values.append(tissue if tissue.size else flat)  # a uniform slice has no background to drop
    joined = np.concatenate(values) if values else np.zeros(1, dtype=np.float32)
    if joined.size == 0:
        joined = np.zeros(1, dtype=np.float32)
    lo, hi = (float(v) for v in np.percentile(joined, [0.5, 99.5]))
    width = max(hi - lo, 1e-3)
    return Window(center=lo + width / 2.0, width=width)


def _png(image: Image.Image) -> bytes:
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def render_layer(view: SeriesView, index: int, layer: str, window: str) -> bytes:
    """PNG bytes of one layer of one slice. Raises ViewerError (unknown index/layer/window) or RenderError."""
    if not 0 <= index < len(view.paths):
        raise ViewerError(f"slice {index} outside 0-{len(view.paths) - 1}")
    if layer == "image":
        if window not in view.windows:
            raise ViewerError(f"window {window!r} is not one of {list(view.windows)}")
        pixels, _ = read_slice(view.paths[index])
        preset = CT_WINDOWS.get(window) or view.auto_window or Window(float(pixels.mean()), float(np.ptp(pixels)) + 1.0)
        gray = np.round(preset.apply(pixels) * 255.0).astype(np.uint8)
        return _png(Image.fromarray(gray, mode="L"))
    if layer in ("outline", "shadow"):
        edge = (view.outline_planes if layer == "outline" else view.shadow_planes).get(index)
        if edge is None:
            raise ViewerError(f"slice {index} has no {layer} outline")
        rgba = np.zeros((*edge.shape, 4), dtype=np.uint8)
        rgba[edge] = (*(OUTLINE_RGB if layer == "outline" else SHADOW_RGB), 255)
        return _png(Image.fromarray(rgba, mode="RGBA"))
    if layer == "heat":
        heat8 = view.heat_planes.get(index)
        if heat8 is None:
            raise ViewerError(f"slice {index} has no heat map")
        heat = heat8.astype(np.float32) / 255.0
        rgb = heat_colors(heat)
        alpha = np.where(heat >= HEATMAP_MIN, HEATMAP_ALPHA * heat, 0.0)
        rgba = np.concatenate([rgb, alpha[..., None]], axis=-1)
        return _png(Image.fromarray(np.round(rgba * 255.0).astype(np.uint8), mode="RGBA"))
    raise ViewerError(f"layer {layer!r} is not one of {list(LAYERS)}")


class LayerCache:
    """Rendered layers (bytes) by key, least recently used out first once ``max_bytes`` is passed; the series views
    by job id (at most ``max_views``). Thread-safe: uvicorn serves the images from a thread pool."""

    def __init__(self, max_bytes: int = 128 << 20, max_views: int = 16):
        self.max_bytes, self.max_views = max_bytes, max_views
        self._layers: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
        self._views: OrderedDict[int, tuple[float, SeriesView]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def view(self, job_id: int, stamp: float, load: Callable[[], SeriesView]) -> SeriesView:
        """The cached view of ``job_id`` unless ``stamp`` (the masks file's mtime) changed; else ``load()``."""
        with self._lock:
            cached = self._views.get(job_id)
            if cached is not None and cached[0] == stamp:
                self._views.move_to_end(job_id)
                return cached[1]
        view = load()
        with self._lock:
            self._views[job_id] = (stamp, view)
            self._views.move_to_end(job_id)
            while len(self._views) > self.max_views:
                self._views.popitem(last=False)
            for key in [k for k in self._layers if k[0] == job_id and k[1] != stamp]:
                self._bytes -= len(self._layers.pop(key))
        return view

    def get(self, key: tuple[Any, ...]) -> bytes | None:
        with self._lock:
            data = self._layers.get(key)
            if data is None:
                self.misses += 1
                return None
            self.hits += 1
            self._layers.move_to_end(key)
            return data

    def put(self, key: tuple[Any, ...], data: bytes) -> None:
        with self._lock:
            if key in self._layers:
                return
            self._layers[key] = data
            self._bytes += len(data)
            while self._bytes > self.max_bytes and self._layers:
                _, old = self._layers.popitem(last=False)
                self._bytes -= len(old)


def masks_stamp(sessions: sessionmaker[Session], job_id: int) -> float:
    """The job's masks file modification time (0 when it has none): a rerun of the job invalidates the cache."""
    with read_transaction(sessions) as s:
        results_dir = s.scalar(select(Job.results_dir).where(Job.id == job_id))
    if not results_dir:
        return 0.0
    try:
        return masks_path(results_dir).stat().st_mtime
    except OSError:
        return 0.0
