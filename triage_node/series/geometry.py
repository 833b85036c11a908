"""Turn a series' instances into one sorted Volume, or say exactly why that is impossible.

Slices are sorted along the slice normal (ImageOrientationPatient x ImagePositionPatient). Mixed orientations, mixed
sizes, duplicate positions, missing geometry or unsupported pixel formats raise ``GeometryError`` with a reason that is
stored on the job as a rejected series (no PHI in it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.pixels import pixel_array
from pydicom.uid import DeflatedExplicitVRLittleEndian

from triage_node.preprocess.volume import Volume

MIN_SLICES = 3
ORIENTATION_TOL = 1e-3
POSITION_TOL_MM = 1e-3


class GeometryError(ValueError):
    """The series cannot form one volume; the message is the stored reason."""


@dataclass(frozen=True)
class Slice:
    """One image plane: its source instance (and frame, for multi-frame objects) and geometry."""

    dataset: Dataset
    frame: int | None
    position: tuple[float, float, float]
    orientation: tuple[float, ...]
    spacing: tuple[float, float]
    rescale: tuple[float, float]


def _floats(value: object, n: int, what: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError) as exc:
        raise GeometryError(f"{what} is not numeric") from exc
    if len(out) != n or not all(np.isfinite(out)):
        raise GeometryError(f"{what} must have {n} finite values, got {len(out)}")
    return out


def _rescale(ds: Dataset) -> tuple[float, float]:
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


def _check_pixel_format(ds: Dataset, modality: str) -> None:
    spp = int(ds.get("SamplesPerPixel", 1))
    bits = int(ds.get("BitsAllocated", 16))
    if spp != 1:
        raise GeometryError(f"{modality} with SamplesPerPixel {spp} (colour) is not a grayscale image volume")
    if bits not in (8, 16, 32):
        raise GeometryError(f"BitsAllocated {bits} is not supported for {modality} volumes")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise GeometryError(f"PhotometricInterpretation {photometric} is not supported")


def _frame_slices(ds: Dataset) -> list[Slice]:
    """Slices of an enhanced multi-frame object, from its functional groups."""
    shared = ds.get("SharedFunctionalGroupsSequence", [Dataset()])[0]
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        raise GeometryError("multi-frame object without PerFrameFunctionalGroupsSequence")

    def group(item: Dataset, name: str) -> Dataset | None:
        seq = item.get(name) or shared.get(name)
        return seq[0] if seq else None

    out = []
    for i, item in enumerate(per_frame):
        pos, ori, meas = (
            group(item, n) for n in ("PlanePositionSequence", "PlaneOrientationSequence", "PixelMeasuresSequence")
        )
        if pos is None or ori is None or meas is None:
            raise GeometryError(f"frame {i + 1} lacks plane position, orientation or pixel measures")
        trans = group(item, "PixelValueTransformationSequence")
        rescale = _rescale(trans) if trans is not None else (1.0, 0.0)
        spacing = _floats(meas.get("PixelSpacing"), 2, "PixelSpacing")
        out.append(
            Slice(
                ds,
                i,
                _floats(pos.get("ImagePositionPatient"), 3, "ImagePositionPatient"),  # type: ignore[arg-type]
                _floats(ori.get("ImageOrientationPatient"), 6, "ImageOrientationPatient"),
                (spacing[0], spacing[1]),
                rescale,
            )
        )
    return out


def plan(datasets: Sequence[Dataset]) -> list[Slice]:
    """Check geometry on headers only (no pixel data needed) and return the slices sorted along the normal."""
    if not datasets:
        raise GeometryError("series has no instances")
    modality = str(datasets[0].get("Modality", "") or "")
    slices: list[Slice] = []
    for ds in datasets:
        _check_pixel_format(ds, modality or "image")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            slices.extend(_frame_slices(ds))
            continue
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise GeometryError("an instance lacks ImagePositionPatient or ImageOrientationPatient")
        spacing = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing")
        slices.append(
            Slice(
                ds,
                None,
                _floats(ds.ImagePositionPatient, 3, "ImagePositionPatient"),  # type: ignore[arg-type]
                _floats(ds.ImageOrientationPatient, 6, "ImageOrientationPatient"),
                (spacing[0], spacing[1]),
                _rescale(ds),
            )
        )
    if len(slices) < MIN_SLICES:
        raise GeometryError(f"series has {len(slices)} slice(s); at least {MIN_SLICES} are needed to form a volume")
    sizes = {(int(s.dataset.Rows), int(s.dataset.Columns)) for s in slices}
    if len(sizes) > 1:
        raise GeometryError(f"inconsistent image sizes in one series: {sorted(sizes)}")
    ori0 = np.asarray(slices[0].orientation)
    for s in slices:
        if np.abs(np.asarray(s.orientation) - ori0).max() > ORIENTATION_TOL:
            raise GeometryError("mixed image orientations in one series")
    if any(sp <= 0 for s in slices for sp in s.spacing):
        raise GeometryError("PixelSpacing must be positive")
    if len({s.spacing for s in slices}) > 1:
        raise GeometryError("inconsistent PixelSpacing in one series")
    row, col = ori0[:3], ori0[3:]
    if abs(np.linalg.norm(row) - 1) > 0.01 or abs(np.linalg.norm(col) - 1) > 0.01 or abs(row @ col) > 0.01:
        raise GeometryError("ImageOrientationPatient is not two orthonormal direction cosines")
    normal = np.cross(row, col)
    dist = np.array([np.asarray(s.position) @ normal for s in slices])
    order = np.argsort(dist, kind="stable")
    dist = dist[order]
    gaps = np.diff(dist)
    if (gaps < POSITION_TOL_MM).any():
        raise GeometryError("duplicate slice positions in one series")
    return [slices[i] for i in order]


def slice_spacing(slices: Sequence[Slice]) -> float:
    normal = np.cross(np.asarray(slices[0].orientation[:3]), np.asarray(slices[0].orientation[3:]))
    dist = np.array([np.asarray(s.position) @ normal for s in slices])
    return float(np.median(np.diff(dist)))


def pixels(s: Slice) -> np.ndarray:
    """The slice's rescaled values: float32 (y, x). Raises GeometryError when the pixel data cannot be decoded.

    A header-only dataset (read with ``stop_before_pixels``) is decoded from its file, one frame at a time, so a long
    series never holds all its encoded pixel data in memory at once.
    """
    try:
        if "PixelData" in s.dataset:
            arr = s.dataset.pixel_array if s.frame is None else s.dataset.pixel_array[s.frame]
        elif getattr(s.dataset, "file_meta", Dataset()).get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
            # pydicom's file-based decoder does not inflate a deflated body: it finds no Pixel Data at all
            full = dcmread(s.dataset.filename)
            arr = full.pixel_array if s.frame is None else full.pixel_array[s.frame]
        else:
            arr = pixel_array(s.dataset.filename, index=s.frame)
    except Exception as exc:  # every decoder failure means the same thing here: undecodable pixels
        raise GeometryError(f"pixel data cannot be decoded ({type(exc).__name__}: {exc})"[:300]) from exc
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2:
        raise GeometryError(f"expected one 2-D plane per slice, got shape {arr.shape}")
    slope, intercept = s.rescale
    if slope != 1.0:
        arr *= np.float32(slope)
    if intercept != 0.0:
        arr += np.float32(intercept)
    if str(s.dataset.get("PhotometricInterpretation")) == "MONOCHROME1":
        arr = arr.max() - arr + arr.min()
    return arr


def build_volume(
    slices: Sequence[Slice], planes: np.ndarray, keep: np.ndarray | None = None, planes_are_kept: bool = False
) -> Volume:
    """A Volume from sorted ``slices`` and their ``planes`` (z, y, x) float32, optionally only the ``keep`` ones.

    ``planes_are_kept``: ``planes`` already holds only the kept slices (in order), so no copy is made.
    """
    idx = np.arange(len(slices)) if keep is None else np.flatnonzero(keep)
    chosen = [slices[int(i)] for i in idx]
    data = planes if planes_are_kept else planes[idx]
    ori = chosen[0].orientation if chosen else slices[0].orientation
    dz = slice_spacing(slices)
    row_spacing, col_spacing = slices[0].spacing
    first = chosen[0] if chosen else slices[0]
    return Volume(
        pixels=np.ascontiguousarray(data, dtype=np.float32),
        spacing=(dz, row_spacing, col_spacing),
        origin=first.position,
        row_direction=(ori[0], ori[1], ori[2]),
        col_direction=(ori[3], ori[4], ori[5]),
        sop_instance_uids=tuple(str(s.dataset.SOPInstanceUID) for s in chosen),
        modality=str(slices[0].dataset.get("Modality", "") or ""),
    )
