"""Key-image thumbnails for the study view: a brain-window slice with the lesion outline and the Grad-CAM map.

The pixel functions are pure (ndarray in, ndarray out). ``render_key_image`` does the I/O: it reads the source slice
from the spool and the live models' masks and heat maps from the job's masks file (``results.masks``).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from scipy import ndimage

from triage_node.preprocess.windows import Preset
from triage_node.results.masks import MasksError, open_masks

log = logging.getLogger(__name__)

OUTLINE_RGB = (255, 230, 0)
HEATMAP_MIN = 0.2  # heat below this fraction of full scale is not drawn, so the anatomy stays readable
HEATMAP_ALPHA = 0.5


class RenderError(RuntimeError):
    """The key image cannot be rendered (missing or unreadable source file, bad masks file)."""


@dataclass(frozen=True)
class Overlay:
    """A slice's lesion mask (bool (y, x)) and Grad-CAM map (uint8 (y, x), 0-255); either may be absent."""

    mask: np.ndarray | None = None
    heatmap: np.ndarray | None = None


def to_gray(pixels: np.ndarray, modality: str) -> np.ndarray:
    """Display grey levels for one slice.

    ``pixels``: (y, x) numeric; HU for CT (brain window 40/80), stored values for MR (1st-99th percentile stretch).
    Returns uint8 (y, x).
    """
    if modality.upper() == "CT":
        unit = Preset.BRAIN.value.apply(pixels)
    else:
        values = np.asarray(pixels, dtype=np.float32)
        lo, hi = np.percentile(values, [1.0, 99.0]) if values.size else (0.0, 1.0)
        unit = np.clip((values - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    return np.round(unit * 255.0).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """The one-pixel border of a bool mask (y, x) -> bool (y, x)."""
    mask = np.asarray(mask, dtype=bool)
    return np.asarray(mask & ~ndimage.binary_erosion(mask, border_value=0))


def heat_colors(heat: np.ndarray) -> np.ndarray:
    """The 'jet' ramp Grad-CAM maps are usually shown in (blue, cyan, yellow, red):
    float (y, x) in [0, 1] -> float32 (y, x, 3) in [0, 1]."""
    h = 4.0 * np.clip(np.asarray(heat, dtype=np.float32), 0.0, 1.0)[..., None]
    return np.asarray(np.clip(1.5 - np.abs(np.concatenate([h - 3.0, h - 2.0, h - 1.0], axis=-1)), 0.0, 1.0))


def _fit(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of (y, x) to ``shape`` (masks saved at another matrix size)."""
    if plane.shape == shape:
        return plane
    rows = np.minimum((np.arange(shape[0]) * plane.shape[0]) // shape[0], plane.shape[0] - 1)
    cols = np.minimum((np.arange(shape[1]) * plane.shape[1]) // shape[1], plane.shape[1] - 1)
    return plane[np.ix_(rows, cols)]


def compose(gray: np.ndarray, overlay: Overlay) -> np.ndarray:
    """Blend the Grad-CAM map over a grey slice, then draw the lesion outline on top.

    ``gray``: uint8 (y, x). Returns uint8 (y, x, 3).
    """
    shape = (int(gray.shape[0]), int(gray.shape[1]))
    rgb = np.repeat(gray[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    if overlay.heatmap is not None:
        heat = _fit(np.asarray(overlay.heatmap), shape).astype(np.float32) / 255.0
        alpha = np.where(heat >= HEATMAP_MIN, HEATMAP_ALPHA * heat, 0.0)[..., None]
        rgb = rgb * (1.0 - alpha) + heat_colors(heat) * alpha
    out = np.round(rgb * 255.0).astype(np.uint8)
    if overlay.mask is not None:
        out[outline(_fit(np.asarray(overlay.mask, dtype=bool), shape))] = OUTLINE_RGB
    return out


def encode_png(rgb: np.ndarray, max_size: int) -> bytes:
    """PNG bytes of uint8 (y, x, 3), scaled down so the longer side is at most ``max_size``."""
    image = Image.fromarray(rgb, mode="RGB")
    if max(image.size) > max_size:
        image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _pick(planes: dict[str, np.ndarray], label: str | None, union: bool) -> np.ndarray | None:
    """The plane saved under ``label`` when there is one, else all labels combined (union for masks, max for maps):
    a finding's label (``any_hemorrhage``) need not be the name the segmenter saved its mask under."""
    if not planes:
        return None
    if label is not None and label in planes:
        return planes[label]
    stack = np.stack(list(planes.values()))
    return np.asarray(stack.any(axis=0) if union else stack.max(axis=0))


def load_overlay(masks_file: Path, sop_instance_uid: str, label: str | None) -> Overlay:
    """The overlay planes of one slice from a job's masks file; empty when the file or the slice is absent."""
    if not masks_file.is_file():
        return Overlay()
    try:
        with open_masks(masks_file) as stored:
            if sop_instance_uid not in stored.uids:
                return Overlay()
            z = stored.uids.index(sop_instance_uid)
            masks = {layer.label: arr[z] for layer, arr in stored.layers("mask")}
            heat = {layer.label: arr[z] for layer, arr in stored.layers("heatmap")}
    except MasksError as exc:
        raise RenderError(str(exc)) from exc
    return Overlay(mask=_pick(masks, label, union=True), heatmap=_pick(heat, label, union=False))


def read_slice(path: Path) -> tuple[np.ndarray, str]:
    """One stored instance's pixels after the modality rescale (HU for CT) and its modality."""
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.astype(np.float32)
    except (OSError, InvalidDicomError, AttributeError, ValueError, RuntimeError) as exc:
        raise RenderError(f"cannot read pixels of {path.name}: {exc}") from exc
    if pixels.ndim != 2:
        raise RenderError(f"{path.name}: expected one greyscale frame, got pixel array shape {pixels.shape}")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    return pixels * slope + intercept, str(getattr(ds, "Modality", "") or "")


def render_key_image(
    instance_file: Path, masks_file: Path | None, sop_instance_uid: str, label: str | None, max_size: int = 256
) -> bytes:
    """PNG of one key slice with its overlay; ``masks_file`` None renders the plain slice."""
    pixels, modality = read_slice(instance_file)
    overlay = load_overlay(masks_file, sop_instance_uid, label) if masks_file is not None else Overlay()
    return encode_png(compose(to_gray(pixels, modality), overlay), max_size)


def inside(base: Path, relative: str) -> Path:
    """``base / relative``, refusing paths that leave ``base`` (a stored path is never trusted blindly)."""
    base = base.resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base):
        raise RenderError(f"path {relative!r} leaves {base}")
    return candidate
