"""RSNA 2019 Intracranial Hemorrhage data: the label CSV and a folder of DICOM slices.

The CSV has rows ``ID_<SOPInstanceUID-ish id>_<subtype>,Label`` (e.g. ``ID_12cadc6af_epidural,0``), six rows per
image, subtypes ``any, epidural, intraparenchymal, intraventricular, subarachnoid, subdural``. The DICOM files are
named ``ID_<id>.dcm``; series are rebuilt from SeriesInstanceUID and ImagePositionPatient so 2.5-D context works.
"""

from __future__ import annotations

import csv
import json
import logging
import shlex
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from triage_lab.synth.cases import CLASSES
from triage_node.inference.card import ModelCard

if TYPE_CHECKING:
    from triage_lab.training.augment import AugmentConfig
    from triage_lab.training.ich_train import IchRecipe
    from triage_lab.training.loop import TrainConfig

log = logging.getLogger(__name__)

RSNA_SUBTYPES = {
    "any": "any_hemorrhage",
    "epidural": "epidural",
    "intraparenchymal": "intraparenchymal",
    "intraventricular": "intraventricular",
    "subarachnoid": "subarachnoid",
    "subdural": "subdural",
}


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
                raise RsnaFormatError(
                    f"{path}:{lineno}: ID must be 'ID_<id>_<subtype>' with subtype in "
                    f"{sorted(RSNA_SUBTYPES)}, got {ident!r}"
                )
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


@dataclass(frozen=True)
class RsnaSeries:
    """One series of the RSNA folder: ``files`` ``ID_<id>.dcm`` ordered along the slice normal, ``labels`` float32
    (z, 6) in CLASSES order, one row per file."""

    uid: str
    files: tuple[Path, ...]
    labels: np.ndarray


def slice_position(ds: Any) -> float:
    """Position of a slice along its normal in mm: ImagePositionPatient projected on the normal of
    ImageOrientationPatient (its z alone when the orientation is missing, InstanceNumber when both are)."""
    if "ImagePositionPatient" not in ds:
        return float(ds.get("InstanceNumber", 0))
    ipp = np.asarray(ds.ImagePositionPatient, np.float64)
    if "ImageOrientationPatient" not in ds:
        return float(ipp[2])
    iop = np.asarray(ds.ImageOrientationPatient, np.float64)
    return float(ipp @ np.cross(iop[:3], iop[3:]))


def read_hu(path: Path) -> tuple[np.ndarray, str, float]:
    """One DICOM slice -> (HU float32 (y, x), SeriesInstanceUID, position along the slice normal in mm).

    HU = stored value x RescaleSlope + RescaleIntercept.
    """
    import pydicom

    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(
        getattr(ds, "RescaleIntercept", 0)
    )
    return hu, str(ds.get("SeriesInstanceUID", path.stem)), slice_position(ds)


def index_series(csv_path: Path, dicom_dir: Path) -> list[RsnaSeries]:
    """Group every labelled image found in ``dicom_dir`` (``ID_<id>.dcm``) into series by SeriesInstanceUID and order
    the slices along the slice normal, reading headers only. Series come in SeriesInstanceUID order."""
    import pydicom

    labels = read_labels(csv_path)
    series: dict[str, list[tuple[float, Path, np.ndarray]]] = defaultdict(list)
    for image, y in labels.items():
        f = dicom_dir / f"ID_{image}.dcm"
        if not f.is_file():
            continue
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        series[str(ds.get("SeriesInstanceUID", f.stem))].append((slice_position(ds), f, y))
    found = sum(len(v) for v in series.values())
    log.info("RSNA: %d of %d labelled images found in %s, %d series", found, len(labels), dicom_dir, len(series))
    out = []
    for uid in sorted(series):
        items = sorted(series[uid], key=lambda t: t[0])
        out.append(RsnaSeries(uid, tuple(f for _, f, _ in items), np.stack([y for _, _, y in items])))
    return out


def load_series(series: RsnaSeries) -> tuple[np.ndarray, np.ndarray]:
    """(hu float32 (z, S, S), labels (z, 6)); slices of different matrix sizes are padded with air to the largest."""
    slices = [read_hu(f)[0] for f in series.files]
    s = max(max(h.shape) for h in slices)
    vol = np.full((len(slices), s, s), -1024.0, np.float32)
    for i, h in enumerate(slices):
        vol[i, : h.shape[0], : h.shape[1]] = h
    return vol, series.labels


def split_series(any_positive: Sequence[bool], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(training, validation) series indices, stratified by the series-level "any" label: validation takes
    ``round(val_fraction * n)`` of the positive and of the negative series, at least one of each class that has two
    or more, so that the thresholds chosen on it see both classes."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    rng = np.random.default_rng(seed)
    flags = np.asarray(any_positive, bool)
    train: list[int] = []
    val: list[int] = []
    for members in (np.flatnonzero(flags), np.flatnonzero(~flags)):
        members = rng.permutation(members)
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction))) if len(members) >= 2 else 0
        val += [int(i) for i in members[:n_val]]
        train += [int(i) for i in members[n_val:]]
    if not val:  # two series of one class each, or one of each: validate on one of them
        val, train = train[:1], train[1:]
    return sorted(train), sorted(val)


def recipe_record(recipe: IchRecipe, cfg: TrainConfig, aug: AugmentConfig) -> dict[str, Any]:
    """The card's ``training.recipe`` for an ich model (the same fields ``ich_train.train_ich`` records)."""
    return {
        "optimizer": f"AdamW lr {cfg.lr} weight_decay {cfg.weight_decay}",
        "schedule": "one-cycle" if cfg.one_cycle else "constant",
        "epochs": cfg.epochs,
        "batch_size": recipe.batch_size,
        "progressive_sizes": list(cfg.sizes),
        "mixed_precision": "bf16 autocast" if cfg.amp else "off",
        "augmentation": dict(vars(aug)),
        "loss": "RSNA-weighted BCE (any x2)",
        "seed": cfg.seed,
        "init_from": str(cfg.init_from) if cfg.init_from else None,
        "arch": recipe.arch,
        "width": recipe.width,
        "size": recipe.size,
        "context": recipe.context,
        "max_steps_per_epoch": cfg.max_steps_per_epoch,
    }


def train_ich_rsna(
    csv_path: Path,
    dicom_dir: Path | None,
    out: Path,
    recipe: IchRecipe,
    cfg: TrainConfig,
    aug: AugmentConfig,
    version: str = "1.0.0",
    val_fraction: float = 0.1,
) -> ModelCard:
    """Train the ich classifier on RSNA data and write ``out`` (weights, card, history.json, train_history.png).

    Series are split by :func:`split_series` (``val_fraction`` of them validate, stratified by "any"); the best epoch
    by validation loss is kept and the per-class thresholds are Youden's J of the series-level scores (the
    aggregation the daemon uses) on the validation series, as for the synthetic model.
    """
    import torch

    from triage_lab.training.evaluate import series_scores, youden_thresholds
    from triage_lab.training.ich_data import batches, from_volumes
    from triage_lab.training.ich_train import make_validate, predict_slices, weighted_bce, write_model_dir
    from triage_lab.training.loop import fit
    from triage_lab.training.nifti import declare_real_data
    from triage_lab.training.plots import history_plot
    from triage_node.inference.nets import build_classifier

    if dicom_dir is None:
        raise ValueError("--dicom-dir is required with --rsna-csv")
    series = index_series(csv_path, dicom_dir)
    if len(series) < 2:
        raise ValueError(f"need at least two labelled series in {dicom_dir}, found {len(series)}")
    tr_idx, va_idx = split_series([bool(s.labels[:, 0].any()) for s in series], val_fraction, cfg.seed)
    val = from_volumes((load_series(series[i]) for i in va_idx), recipe.size)
    train = from_volumes((load_series(series[i]) for i in tr_idx), recipe.size)
    if len(train) < recipe.batch_size:
        raise ValueError(f"{len(train)} training slices are fewer than one batch (--batch-size {recipe.batch_size})")
    torch.set_num_threads(cfg.threads)
    log.info(
        "ich (RSNA): %d training slices in %d series, %d validation slices in %d series",
        len(train),
        len(tr_idx),
        len(val),
        len(va_idx),
    )
    model = build_classifier(recipe.arch, 3 * (2 * recipe.context + 1), len(CLASSES), recipe.width)
    hist, best = fit(
        model,
        batches(train, recipe.batch_size, aug, recipe.context),
        len(train) // recipe.batch_size,
        lambda m, b: weighted_bce(m(b[0]), b[1]),
        make_validate(val, recipe.context),
        cfg,
    )
    model.cpu().load_state_dict(best)
    p = predict_slices(model, val, recipe.context)
    sp, sy = series_scores(p, val.y.numpy(), val.case.numpy())
    thresholds = youden_thresholds(sy, sp)
    one_class = [c for i, c in enumerate(CLASSES) if sy[:, i].all() or not sy[:, i].any()]
    training = {
        "data": f"RSNA 2019 labels {csv_path} with DICOM from {dicom_dir}",
        "slices": len(train),
        "series": len(tr_idx),
        "validation": f"{len(va_idx)} series, {len(val)} slices ({round(val_fraction * 100)}% of the series, "
        "stratified by any-hemorrhage)",
        "recipe": recipe_record(recipe, cfg, aug),
        "seconds": round(hist.seconds, 1),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "thresholds_from": "Youden J of series-level scores on the validation series"
        + (f"; 0.5 for {', '.join(one_class)} (one class only in validation)" if one_class else ""),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(hist.to_json(), indent=1))
    history_plot(out / "train_history.png", hist.to_json())
    write_model_dir(out, best, recipe, cfg, training, version, thresholds)
    declare_real_data(out, f"the RSNA 2019 intracranial hemorrhage data ({csv_path}, DICOM from {dicom_dir})")
    return ModelCard.load(out / "model.yaml")
