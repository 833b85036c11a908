"""The RSNA 2019 DICOM side: a tiny RSNA-style folder (label CSV + ``ID_<sop>.dcm`` CT slices written with pydicom)
read by ``index_series`` / ``load_series`` and trained on by ``train_ich_rsna`` for a few steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from triage_lab.synth.cases import CLASSES
from triage_lab.training.augment import AugmentConfig
from triage_lab.training.ich_train import IchRecipe
from triage_lab.training.loop import TrainConfig
from triage_lab.training.rsna import index_series, load_series, split_series, train_ich_rsna
from triage_node.inference.card import ModelCard

SUBTYPES = ["any", "epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural"]


def _write_slice(
    path: Path, series_uid: str, z: float, hu: np.ndarray, slope: float, intercept: float, signed: bool
) -> None:
    """One axial CT slice whose stored values decode to ``hu`` with the given rescale."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.StudyInstanceUID = series_uid + ".0"
    ds.SeriesInstanceUID = series_uid
    ds.ImagePositionPatient = [-60.0, -60.0, z]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 5.0
    ds.Rows, ds.Columns = hu.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = int(signed)
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    stored = np.round((hu - intercept) / slope).astype(np.int16 if signed else np.uint16)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)


def _head(n: int, fill: float, rng: np.random.Generator, bleed: bool) -> np.ndarray:
    """A ``n`` x ``n`` slice: air, a skull ring, brain at ``fill`` HU, and a bright 60 HU blob when ``bleed``."""
    yy, xx = np.mgrid[:n, :n] - (n - 1) / 2
    r = np.hypot(yy, xx)
    hu = np.full((n, n), -1000.0)
    hu[r < 0.45 * n] = 1200.0
    hu[r < 0.38 * n] = fill + rng.normal(0, 3, (n, n))[r < 0.38 * n]
    if bleed:
        hu[np.hypot(yy - 3, xx + 4) < 0.12 * n] = 75.0
    return np.round(hu)


def _rsna_folder(
    root: Path, series: list[tuple[str, list[float], list[str]]], n: int = 32, seed: int = 0
) -> tuple[Path, Path, dict[str, tuple[str, float, float, np.ndarray]]]:
    """Write ``stage_2_train.csv`` and ``stage_2_train/ID_<sop>.dcm``.

    ``series``: (uid, slice z positions in the order written, subtype per slice or "" for none). Each slice's brain
    HU is 20 + its z, so its place in the sorted series is visible in the pixels. Returns (csv, dicom dir, sop ->
    (series uid, z, brain HU, labels in CLASSES order)).
    """
    rng = np.random.default_rng(seed)
    dicom_dir = root / "stage_2_train"
    dicom_dir.mkdir(parents=True)
    rows, truth = ["ID,Label"], {}
    for s, (uid, zs, subtypes) in enumerate(series):
        for k, (z, sub) in enumerate(zip(zs, subtypes, strict=True)):
            sop = f"{s:02d}{k:03d}abc"
            fill = 20.0 + z
            # Alternate storage between series: unsigned with intercept -1024, signed with slope 2 and intercept 0.
            slope, intercept, signed = (1.0, -1024.0, False) if s % 2 == 0 else (2.0, 0.0, True)
            _write_slice(dicom_dir / f"ID_{sop}.dcm", uid, z, _head(n, fill, rng, bool(sub)), slope, intercept, signed)
            labels = {t: int(bool(sub) and t in (sub, "any")) for t in SUBTYPES}
            rows += [f"ID_{sop}_{t},{labels[t]}" for t in SUBTYPES]
            y = np.array([labels["any" if c == "any_hemorrhage" else c] for c in CLASSES], np.float32)
            truth[sop] = (uid, z, fill, y)
    csv_path = root / "stage_2_train.csv"
    csv_path.write_text("\n".join(rows) + "\n")
    return csv_path, dicom_dir, truth


def test_series_are_grouped_ordered_and_labels_aligned(tmp_path: Path) -> None:
    series = [
        ("1.2.826.0.1.3680043.99.2", [10.0, 0.0, 5.0, 15.0], ["", "", "subdural", "subdural"]),
        ("1.2.826.0.1.3680043.99.1", [-5.0, 5.0, 0.0], ["epidural", "", ""]),
    ]
    csv_path, dicom_dir, truth = _rsna_folder(tmp_path, series)
    # A labelled image without its DICOM file is skipped, not an error (RSNA downloads are often partial).
    (dicom_dir / "ID_00000abc.dcm").unlink()
    out = [load_series(s) for s in index_series(csv_path, dicom_dir)]
    assert len(out) == 2
    (hu_a, y_a), (hu_b, y_b) = out  # SeriesInstanceUID order: ...99.1 first
    assert hu_a.shape == (3, 32, 32) and y_a.shape == (3, 6)
    assert hu_b.shape == (3, 32, 32) and y_b.shape == (3, 6)
    brain = (slice(6, 10), slice(12, 20))  # inside the brain, away from the blob
    for hu, y, uid in ((hu_a, y_a, series[1][0]), (hu_b, y_b, series[0][0])):
        rows = sorted((z, fill, lab) for u, z, fill, lab in truth.values() if u == uid)
        rows = [r for r in rows if not (uid == series[0][0] and r[0] == 10.0)]  # the deleted file
        # Ordered by position; the HU decoded through each series' own slope and intercept.
        assert np.allclose([hu[k][brain].mean() for k in range(len(rows))], [f for _, f, _ in rows], atol=2)
        assert hu.min() == -1000.0 and hu.max() == 1200.0
        # Each label row travels with its slice.
        assert np.array_equal(y, np.stack([lab for _, _, lab in rows]))
    assert y_a[0, CLASSES.index("epidural")] == 1 and y_a[0, 0] == 1 and not y_a[1:].any()
    assert not y_b[0].any() and y_b[1:, CLASSES.index("subdural")].all()


def test_split_series_is_stratified_and_validated() -> None:
    flags = [True] * 6 + [False] * 14
    train, val = split_series(flags, 0.2, seed=3)
    assert sorted(train + val) == list(range(20)) and not set(train) & set(val)
    assert sum(flags[i] for i in val) == 1 and sum(not flags[i] for i in val) == 3
    assert split_series([True, False], 0.1, seed=0)[1] != []
    with pytest.raises(ValueError, match="val_fraction must be between 0 and 1"):
        split_series(flags, 1.0, seed=0)


def test_train_ich_rsna_writes_a_card_with_recipe_and_validation_thresholds(tmp_path: Path) -> None:
    positive = ["subdural"] * 2 + ["", ""]
    negative = [""] * 4
    series = [
        (f"1.2.826.0.1.3680043.98.{i}", [0.0, 5.0, 10.0, 15.0], positive if i % 2 else negative) for i in range(6)
    ]
    csv_path, dicom_dir, _ = _rsna_folder(tmp_path / "rsna", series, n=32, seed=1)
    out = tmp_path / "model"
    recipe = IchRecipe(arch="resnet18", width=0.125, size=32, context=0, batch_size=4)
    cfg = TrainConfig(epochs=1, lr=1e-3, amp=False, progress=False, max_steps_per_epoch=2, checkpoint_dir=None)
    card = train_ich_rsna(csv_path, dicom_dir, out, recipe, cfg, AugmentConfig.off(), "0.0.1", val_fraction=0.34)

    assert card.name == "ich" and (out / "model.safetensors").is_file() and (out / "history.json").is_file()
    raw = yaml.safe_load((out / "model.yaml").read_text())
    training = raw["training"]
    # The recipe is recorded, as for the synthetic model.
    assert training["recipe"]["optimizer"].startswith("AdamW lr 0.001")
    assert training["recipe"]["width"] == 0.125 and training["recipe"]["size"] == 32
    assert "RSNA 2019" in training["data"] and str(dicom_dir) in training["data"]
    # 2 of 6 series validate, one of each class, so "any" and subdural get a Youden threshold from validation ...
    assert training["validation"].startswith("2 series, 8 slices")
    assert "Youden J of series-level scores on the validation series" in training["thresholds_from"]
    # ... and the classes absent from validation are named as falling back to 0.5.
    assert "0.5 for epidural, intraparenchymal, intraventricular, subarachnoid" in training["thresholds_from"]
    assert set(raw["thresholds"]) == set(CLASSES)
    assert raw["thresholds"]["any_hemorrhage"] != 0.5 and raw["thresholds"]["subdural"] != 0.5
    # The boilerplate no longer claims synthetic training data.
    assert "synthetic" not in raw["intended_use"] and "RSNA 2019" in raw["limitations"]
    assert ModelCard.load(out / "model.yaml").sha256 == card.sha256
