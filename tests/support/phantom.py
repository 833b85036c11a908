"""A small synthetic head CT (numpy phantom written as a real CT series) with fake model outputs, for results and send
tests. Small on purpose (16 slices of 64 x 64): the tests exercise object structure and delivery, not model quality."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset

from triage_lab.synth.dicom import write_ct_series
from triage_node.inference.types import Finding, ModelOutput
from triage_node.preprocess.volume import Volume
from triage_node.results.identity import AlgorithmInfo, ResultIdentity

SPACING = (5.0, 0.9, 0.9)
SHAPE = (16, 64, 64)

ALGORITHMS = {
    "ich": AlgorithmInfo(name="ich", version="1.2.0", device_uid="2.25.1001"),
    "ct_segmenter": AlgorithmInfo(name="ct_segmenter", version="0.9.1", device_uid="2.25.1002"),
}


@dataclass(frozen=True)
class Case:
    sources: list[pydicom.Dataset]
    paths: list[Path]
    volume: Volume


def phantom_hu() -> np.ndarray:
    """Skull ring (1000 HU) around brain (35 HU), air outside; float32 (z, y, x)."""
    z, y, x = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1], 0 : SHAPE[2]].astype(np.float32)
    r = np.sqrt(((y - 31.5) / 28) ** 2 + ((x - 31.5) / 24) ** 2 + ((z - 7.5) / 10) ** 2)
    hu = np.full(SHAPE, -1000.0, np.float32)
    hu[r < 1.0] = 1000.0
    hu[r < 0.88] = 35.0
    return hu


def hemorrhage_mask() -> np.ndarray:
    """A blob in the right hemisphere (image left, patient right) over slices 6-9."""
    z, y, x = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1], 0 : SHAPE[2]]
    return ((z >= 6) & (z <= 9) & ((y - 30) ** 2 + (x - 20) ** 2 <= 25)).astype(bool)


def write_case(out_dir: Path, seed: int = 7) -> Case:
    """Write the phantom as a CT series and return its datasets (with pixels) and the matching Volume."""
    hu = phantom_hu()
    mask = hemorrhage_mask()
    hu[mask] = 70.0
    paths = write_ct_series(out_dir, hu, SPACING, seed)
    sources = [pydicom.dcmread(p) for p in paths]
    volume = Volume(
        pixels=hu,
        spacing=SPACING,
        origin=tuple(float(v) for v in sources[0].ImagePositionPatient),  # type: ignore[arg-type]
        row_direction=(1.0, 0.0, 0.0),
        col_direction=(0.0, 1.0, 0.0),
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in sources),
        modality="CT",
    )
    return Case(sources=sources, paths=paths, volume=volume)


def positive_outputs(volume: Volume) -> list[ModelOutput]:
    """ich: hemorrhage present (intraparenchymal), subdural absent, with a Grad-CAM map; segmenter: the blob."""
    mask = hemorrhage_mask()
    vol_ml = float(mask.sum()) * volume.voxel_volume_ml
    heat = np.zeros(volume.pixels.shape, np.float32)
    heat[5:11, 20:40, 10:30] = np.linspace(0.2, 1.0, 20, dtype=np.float32)[None, :, None]
    ich = ModelOutput(
        model="ich",
        model_version="1.2.0",
        findings=(
            Finding("any_hemorrhage", True, 0.97, "ich", "1.2.0", key_slices=(7, 8, 6)),
            Finding("intraparenchymal", True, 0.91, "ich", "1.2.0", key_slices=(7,), laterality="right"),
            Finding("subdural", False, 0.03, "ich", "1.2.0"),
        ),
        heatmaps={"any_hemorrhage": heat},
    )
    seg = ModelOutput(
        model="ct_segmenter",
        model_version="0.9.1",
        findings=(
            Finding(
                "hemorrhage_extent", True, 0.88, "ct_segmenter", "0.9.1", volume_ml=round(vol_ml, 2),
                location="right thalamus", key_slices=(7, 8),
            ),
        ),
        masks={"hemorrhage_extent": mask},
    )
    return [ich, seg]


def negative_outputs(volume: Volume) -> list[ModelOutput]:
    shape = volume.pixels.shape
    return [
        ModelOutput(
            model="ich",
            model_version="1.2.0",
            findings=(
                Finding("any_hemorrhage", False, 0.02, "ich", "1.2.0"),
                Finding("subdural", False, 0.01, "ich", "1.2.0"),
            ),
            heatmaps={"any_hemorrhage": np.zeros(shape, np.float32)},
        ),
        ModelOutput(
            model="ct_segmenter",
            model_version="0.9.1",
            findings=(Finding("hemorrhage_extent", False, 0.01, "ct_segmenter", "0.9.1", volume_ml=0.0),),
            masks={"hemorrhage_extent": np.zeros(shape, bool)},
        ),
    ]


def identity(seed: str = "job-1") -> ResultIdentity:
    from pydicom.uid import generate_uid

    def uid(part: str) -> str:
        return str(generate_uid(entropy_srcs=["tests.results.phantom", seed, part]))

    import datetime as dt

    return ResultIdentity(
        seg_series_uid=uid("seg-series"),
        seg_sop_uid=uid("seg"),
        sr_series_uid=uid("sr-series"),
        sr_sop_uid=uid("sr"),
        map_series_uid=uid("map-series"),
        map_sop_uid=uid("map"),
        series_number=9000,
        created_at=dt.datetime(2026, 1, 1, 8, 30, 0, tzinfo=dt.UTC),
    )


def mr_image(z: int, b: float, value: float) -> Dataset:
    """A complete 4x4 MR image at slice z with b-value b, every pixel ``value``."""
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.ImagePositionPatient = [0, 0, z * 5.0]
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.add_new((0x0018, 0x9087), "FD", b)
    if b:
        ds.DiffusionDirectionality = "ISOTROPIC"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "MR"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.Rows = ds.Columns = 4
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = np.full((4, 4), value, np.uint16).tobytes()
    return ds
