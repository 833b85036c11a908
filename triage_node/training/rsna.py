"""RSNA 2019 Intracranial Hemorrhage data: the label CSV and a folder of DICOM slices.

The CSV has rows ``ID_<SOPInstanceUID-ish id>_<subtype>,Label`` (e.g. ``ID_12cadc6af_epidural,0``), six rows per
image, subtypes ``any, epidural, intraparenchymal, intraventricular, subarachnoid, subdural``. The DICOM files are
named ``ID_<id>.dcm``; series are rebuilt from SeriesInstanceUID and ImagePositionPatient so 2.5-D context works.
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from triage_node.synth.cases import CLASSES

log = logging.getLogger(__name__)

RSNA_SUBTYPES = {"any": "any_hemorrhage", "epidural": "epidural", "intraparenchymal": "intraparenchymal",
                 "intraventricular": "intraventricular", "subarachnoid": "subarachnoid", "subdural": "subdural"}


class RsnaFormatError(ValueError):
    """A row of the RSNA label CSV does not follow ``ID_<id>_<subtype>,Label``."""


def read_labels(path: Path) -> dict[str, np.ndarray]:
    """image id -> float32 (6,) labels in CLASSES order. Images missing some subtype rows are rejected."""
    rows: dict[str, dict[str, float]] = defaultdict(dict)
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["ID", "Label"]:
            raise RsnaFormatError(f"{path}: first line must be 'ID,Label', got {header!r}")
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise RsnaFormatError(f"{path}:{lineno}: expected 'ID_<id>_<subtype>,Label', got {row!r}")
            ident, label = row[0].strip(), row[1].strip()
            image, _, subtype = ident.rpartition("_")
            if not image.startswith("ID_") or subtype not in RSNA_SUBTYPES:
                raise RsnaFormatError(f"{path}:{lineno}: ID must be 'ID_<id>_<subtype>' with subtype in "
                                      f"{sorted(RSNA_SUBTYPES)}, got {ident!r}")
            if label not in ("0", "1"):
                raise RsnaFormatError(f"{path}:{lineno}: Label must be 0 or 1, got {label!r}")
            rows[image[3:]][RSNA_SUBTYPES[subtype]] = float(label)
    out = {}
    for image, d in rows.items():
        if len(d) != len(CLASSES):
            missing = sorted(set(CLASSES) - set(d))
            raise RsnaFormatError(f"{path}: image {image} lacks rows for {missing}")
        out[image] = np.array([d[c] for c in CLASSES], np.float32)
    return out


def read_hu(path: Path) -> tuple[np.ndarray, str, float]:
    """One DICOM slice -> (HU float32 (y, x), SeriesInstanceUID, position along the slice normal)."""
    import pydicom

    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(
        getattr(ds, "RescaleIntercept", 0)
    )
    pos = float(ds.ImagePositionPatient[2]) if "ImagePositionPatient" in ds else float(ds.get("InstanceNumber", 0))
    return hu, str(ds.get("SeriesInstanceUID", path.stem)), pos


def iter_series(csv_path: Path, dicom_dir: Path, size: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(hu (z, S, S), labels (z, 6)) per series for every labelled image found in ``dicom_dir`` (``ID_<id>.dcm``).

    Slices of different matrix sizes in one series are padded to the largest. ``size`` is unused here (resizing
    happens when windows are built) and kept for call compatibility.
    """
    labels = read_labels(csv_path)
    series: dict[str, list[tuple[float, np.ndarray, np.ndarray]]] = defaultdict(list)
    found = 0
    for image, y in labels.items():
        f = dicom_dir / f"ID_{image}.dcm"
        if not f.is_file():
            continue
        hu, uid, pos = read_hu(f)
        series[uid].append((pos, hu, y))
        found += 1
    log.info("RSNA: %d of %d labelled images found in %s, %d series", found, len(labels), dicom_dir, len(series))
    for items in series.values():
        items.sort(key=lambda t: t[0])
        s = max(max(h.shape) for _, h, _ in items)
        vol = np.full((len(items), s, s), -1024.0, np.float32)
        for i, (_, h, _) in enumerate(items):
            vol[i, : h.shape[0], : h.shape[1]] = h
        yield vol, np.stack([y for _, _, y in items])


def train_ich_rsna(csv_path, dicom_dir, out, recipe, cfg, aug, version):  # type: ignore[no-untyped-def]
    """Train the ich classifier on RSNA data: 90 % of series for training, 10 % for validation (by series)."""
    from triage_node.inference.nets import build_classifier
    from triage_node.training.ich_data import batches, from_volumes
    from triage_node.training.ich_train import make_validate, weighted_bce, write_model_dir
    from triage_node.training.loop import fit

    if dicom_dir is None:
        raise ValueError("--dicom-dir is required with --rsna-csv")
    vols = list(iter_series(csv_path, dicom_dir))
    if len(vols) < 2:
        raise ValueError(f"need at least two labelled series in {dicom_dir}, found {len(vols)}")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(vols))
    n_val = max(1, len(vols) // 10)
    val = from_volumes((vols[i] for i in order[:n_val]), recipe.size)
    train = from_volumes((vols[i] for i in order[n_val:]), recipe.size)
    model = build_classifier(recipe.arch, 3 * (2 * recipe.context + 1), len(CLASSES), recipe.width)
    hist, best = fit(model, batches(train, recipe.batch_size, aug, recipe.context), len(train) // recipe.batch_size,
                     lambda m, b: weighted_bce(m(b[0]), b[1]), make_validate(val, recipe.context), cfg)
    training = {"data": f"RSNA 2019 labels {csv_path} with DICOM from {dicom_dir}", "slices": len(train),
                "seconds": round(hist.seconds, 1)}
    return write_model_dir(out, best, recipe, cfg, training, version)
