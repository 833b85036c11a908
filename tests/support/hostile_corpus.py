"""The hostile-input corpus: malformed and unusual DICOM objects, each with what the daemon must do with it.

``Case.expect``: ``refused`` (a C-STORE failure status from ``statuses``), ``context`` (the presentation context is
rejected at association), or a job outcome: ``rejected`` / ``skipped`` with a reason containing ``reason``, or
``delivered`` (processed normally). Every object carries a synthetic identity; the non-ASCII case uses names the log
scan looks for.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)
from reliability_support import phantom_series

from triage_lab.synth.phantom import phantom_head

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
A900, C210 = 0xA900, 0xC210


@dataclass(frozen=True)
class Case:
    name: str
    paths: tuple[Path, ...]
    expect: str  # refused | context | rejected | skipped | delivered
    statuses: frozenset[int] = frozenset()
    reason: str = ""
    sop_class: str = CT
    transfer_syntax: str = ExplicitVRLittleEndian
    accepted: frozenset[str] = field(default_factory=frozenset)  # job outcomes that are also right


def _series(root: Path, name: str, seed: int, slices: int = 6, **kwargs: object) -> list[Path]:
    return phantom_series(root / name, seed=seed, slices=slices, size=48, **kwargs)  # type: ignore[arg-type]


def _edit(path: Path, change: Callable[[Dataset], None], out: Path | None = None) -> Path:
    ds = dcmread(path)
    change(ds)
    target = out or path
    ds.save_as(target, enforce_file_format=False)
    return target


def _one(root: Path, name: str, seed: int, change: Callable[[Dataset], None]) -> tuple[Path, ...]:
    [path] = _series(root, name, seed, slices=1)
    return (_edit(path, change),)


def _del(*keywords: str) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for kw in keywords:
            delattr(ds, kw)
    return change


def _set(**values: object) -> Callable[[Dataset], None]:
    def change(ds: Dataset) -> None:
        for k, v in values.items():
            setattr(ds, k, v)
    return change


def _recode(paths: list[Path], syntax: str) -> tuple[Path, ...]:
    for p in paths:
        ds = dcmread(p)
        if syntax in (RLELossless, JPEG2000Lossless):
            ds.compress(syntax)
            ds.save_as(p, enforce_file_format=True)
            continue
        ds.file_meta.TransferSyntaxUID = syntax
        if syntax == ExplicitVRBigEndian:  # pydicom writes OW bytes as they are: swap them for big endian
            ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
        dcmwrite(p, ds, implicit_vr=syntax == ImplicitVRLittleEndian, little_endian=syntax != ExplicitVRBigEndian,
                 force_encoding=True)
    return tuple(paths)


def _raw_body(root: Path, name: str, seed: int, body: Callable[[bytes], bytes]) -> tuple[Path, ...]:
    """Keep the file meta, replace what follows it."""
    [path] = _series(root, name, seed, slices=1)
    ds = dcmread(path)
    data = path.read_bytes()
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    path.write_bytes(data[:meta_end] + body(data[meta_end:]))
    return (path,)


def enhanced_ct(root: Path, seed: int) -> tuple[Path, ...]:
    hu, (dz, dy, dx) = phantom_head(6, 48)
    ds = dcmread(_series(root, "enhanced-src", seed, slices=1)[0])
    out = Dataset()
    for kw in ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex",
               "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
               "StudyDescription", "Modality", "Manufacturer", "BodyPartExamined", "FrameOfReferenceUID"):
        setattr(out, kw, ds.get(kw))
    out.SOPClassUID = ENHANCED_CT
    out.SOPInstanceUID = generate_uid(entropy_srcs=["enhanced", str(seed)])
    out.SeriesInstanceUID = generate_uid(entropy_srcs=["enhanced-series", str(seed)])
    out.SeriesNumber, out.InstanceNumber = 3, 1
    out.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    out.Rows, out.Columns, out.NumberOfFrames = 48, 48, 6
    out.SamplesPerPixel, out.PhotometricInterpretation = 1, "MONOCHROME2"
    out.BitsAllocated, out.BitsStored, out.HighBit, out.PixelRepresentation = 16, 16, 15, 1
    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing, measures.SliceThickness = [dy, dx], dz
    orient = Dataset()
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    rescale = Dataset()
    rescale.RescaleIntercept, rescale.RescaleSlope, rescale.RescaleType = 0, 1, "HU"
    shared.PixelMeasuresSequence = Sequence([measures])
    shared.PlaneOrientationSequence = Sequence([orient])
    shared.PixelValueTransformationSequence = Sequence([rescale])
    out.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for z in range(6):
        pos = Dataset()
        pos.ImagePositionPatient = [-(47) * dx / 2, -(47) * dy / 2, round(z * dz, 4)]
        item = Dataset()
        item.PlanePositionSequence = Sequence([pos])
        frames.append(item)
    out.PerFrameFunctionalGroupsSequence = Sequence(frames)
    out.PixelData = np.clip(np.rint(hu), -32768, 32767).astype(np.int16).tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ENHANCED_CT, out.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out.file_meta = meta
    path = root / "enhanced" / "frames.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save_as(path, enforce_file_format=True)
    return (path,)


def build_corpus(root: Path) -> list[Case]:
    """Write every case under ``root``; seeds 9000+ keep their UIDs apart from the rest of the suite."""
    cases: list[Case] = []

    def add(name: str, paths: tuple[Path, ...] | list[Path], expect: str, **kw: object) -> None:
        cases.append(Case(name, tuple(paths), expect, **kw))  # type: ignore[arg-type]

    # -- refused at receive time --------------------------------------------------------------------------------
    [p] = _series(root, "truncated", 9001, slices=1)
    p.write_bytes(p.read_bytes()[: p.stat().st_size - 1500])
    add("truncated file", (p,), "refused", statuses=frozenset({C210, A900}))
    add("pixel data shorter than declared", _one(root, "short-pixels", 9002, lambda ds: setattr(
        ds, "PixelData", ds.PixelData[: len(ds.PixelData) // 2])), "refused", statuses=frozenset({A900}))
    add("missing PixelData", _one(root, "no-pixels", 9003, _del("PixelData")), "refused", statuses=frozenset({A900}))
    add("missing SOPInstanceUID", _one(root, "no-sop-uid", 9004, _del("SOPInstanceUID")), "refused",
        statuses=frozenset({A900}))
    add("missing StudyInstanceUID", _one(root, "no-study-uid", 9005, _del("StudyInstanceUID")), "refused",
        statuses=frozenset({A900}))
    add("missing SeriesInstanceUID", _one(root, "no-series-uid", 9006, _del("SeriesInstanceUID")), "refused",
        statuses=frozenset({A900}))
    add("SOP class differs from the context", _one(root, "class-mismatch", 9007, _set(SOPClassUID=MR)), "refused",
        statuses=frozenset({A900}))
    add("Rows 0", _one(root, "rows-zero", 9008, _set(Rows=0)), "refused", statuses=frozenset({A900}))
    add("absurd Rows/Columns 65535", _one(root, "absurd-size", 9009, _set(Rows=65535, Columns=65535)), "refused",
        statuses=frozenset({A900}))
    add("BitsAllocated 12", _one(root, "bits12", 9010, _set(BitsAllocated=12, BitsStored=12, HighBit=11)),
        "refused", statuses=frozenset({A900}))
    add("NumberOfFrames 100000", _one(root, "frames", 9011, _set(NumberOfFrames=100000)), "refused",
        statuses=frozenset({A900}))
    add("random bytes after a valid file meta", _raw_body(root, "garbage", 9012,
        lambda body: np.random.default_rng(9012).integers(0, 256, len(body), dtype=np.uint8).tobytes()),
        "refused", statuses=frozenset({C210, A900}))
    add("non-image SOP class (Basic Text SR)", _one(root, "text-sr", 9013, _set(SOPClassUID=BASIC_TEXT_SR)),
        "context", sop_class=BASIC_TEXT_SR)

    # -- accepted, then rejected (or skipped) with a reason at processing time ------------------------------------
    add("BitsAllocated 1", [_edit(p, _set(BitsAllocated=1, BitsStored=1, HighBit=0, PixelRepresentation=0,
                                               PixelData=b"\x55" * (48 * 48 // 8)))
                            for p in _series(root, "bits1", 9020)], "rejected", reason="BitsAllocated 1")
    add("negative pixel spacing", [_edit(p, _set(PixelSpacing=[-5.0, -5.0])) for p in _series(root, "neg", 9021)],
        "rejected", reason="PixelSpacing must be positive")
    add("one-slice series", _series(root, "one-slice", 9022, slices=1), "rejected", reason="slice(s); at least")
    add("all-zero pixels", [_edit(p, lambda ds: setattr(ds, "PixelData", bytes(len(ds.PixelData))))
                            for p in _series(root, "zeros", 9023)], "rejected", reason="brain pixels",
        accepted=frozenset({"delivered"}))

    def rgb(ds: Dataset) -> None:
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = bytes(48 * 48 * 3)

    add("RGB CT", [_edit(p, rgb) for p in _series(root, "rgb", 9024)], "rejected", reason="not a grayscale")
    sizes = _series(root, "sizes", 9025)
    small = phantom_series(root / "sizes-small", seed=9025, slices=6, size=32)
    for i in (1, 3):  # same series, two slices 32 x 32 among 48 x 48
        sizes[i].write_bytes(small[i].read_bytes())
    add("inconsistent sizes in one series", sizes, "rejected", reason="inconsistent image sizes")
    add("mixed orientations", [_edit(p, _set(ImageOrientationPatient=[1, 0, 0, 0, 0, -1])) if i % 2 else p
                               for i, p in enumerate(_series(root, "orient", 9026))],
        "rejected", reason="mixed image orientations")
    add("MR knee (no routing rule)", _series(root, "knee", 9027, modality="MR", study_description="MR KNEE",
                                             series_description="PD FS"), "skipped", reason="no routing rule",
        sop_class=MR)

    # -- accepted and processed normally --------------------------------------------------------------------------
    dup = _series(root, "duplicate", 9030)
    twin = _edit(dup[2], lambda ds: setattr(ds, "PixelData", bytes(len(ds.PixelData))),
                 out=dup[2].with_name("twin.dcm"))
    add("duplicate SOP Instance UID with different pixels", [*dup, twin], "delivered")
    add("explicit VR big endian", _recode(_series(root, "big-endian", 9031), ExplicitVRBigEndian), "delivered",
        transfer_syntax=ExplicitVRBigEndian)
    add("implicit VR little endian", _recode(_series(root, "implicit", 9032), ImplicitVRLittleEndian), "delivered",
        transfer_syntax=ImplicitVRLittleEndian)
    add("deflated explicit VR", _recode(_series(root, "deflate", 9033), DeflatedExplicitVRLittleEndian), "delivered",
        transfer_syntax=DeflatedExplicitVRLittleEndian)
    add("RLE lossless", _recode(_series(root, "rle", 9034), RLELossless), "delivered", transfer_syntax=RLELossless)
    add("JPEG 2000 lossless", _recode(_series(root, "j2k", 9035), JPEG2000Lossless), "delivered",
        transfer_syntax=JPEG2000Lossless)

    def private(ds: Dataset) -> None:
        block = ds.private_block(0x0099, "HOSTILE CORPUS", create=True)
        block.add_new(0x01, "OB", zlib.compress(b"x") * 1 + bytes(4 * 1024 * 1024))

    add("4 MiB private tag", [_edit(p, private) for p in _series(root, "private", 9036)], "delivered")
    add("non-ASCII names in ISO_IR 192", [_edit(p, _set(PatientName="Müller^Jürgen=山田^太郎",
                                                         ReferringPhysicianName="ÄRZTIN^Zoë"))
                                          for p in _series(root, "utf8", 9037)], "delivered")
    add("Enhanced CT multi-frame", enhanced_ct(root, 9038), "delivered", sop_class=ENHANCED_CT)

    def traversal(ds: Dataset) -> None:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3/../../../../tmp/evil"

    add("SOP Instance UID with path characters", [_edit(p, traversal) if i == 2 else p
                                                  for i, p in enumerate(_series(root, "traversal", 9039))],
        "delivered")
    return cases
