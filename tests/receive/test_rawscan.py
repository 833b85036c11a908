"""rawscan against pydicom: ``parse_header`` must answer exactly as the pydicom-only path does (the same header, or
the same refusal), on real test files, synthetic slices, undefined-length sequences, encapsulated pixel data and
every truncation; and it must actually take the raw path on ordinary data sets."""

from __future__ import annotations

import struct
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from triage_lab.synth.dicom import write_series
from triage_lab.synth.phantom import phantom_head
from triage_node.receive.header import Refused, _parse_pydicom, _parse_raw, file_meta_prefix, parse_header
from triage_node.receive.rawscan import ScanError, scan

FIELDS = ("sop_instance_uid", "sop_class_uid", "study_uid", "series_uid", "transfer_syntax_uid", "instance_number")
FIELDS += ("expected_instances", "modality", "series_number", "series_description", "body_part", "patient_name")
FIELDS += ("patient_id", "patient_birth_date", "patient_sex", "accession_number", "study_date", "study_description")


def _stream(ds: Dataset, transfer_syntax: str) -> tuple[bytes, int]:
    """The bytes the SCP stores for ``ds`` received in ``transfer_syntax``: its file meta, then the data set."""
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    out = BytesIO()
    if transfer_syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.save_as(out, implicit_vr=transfer_syntax == ImplicitVRLittleEndian, little_endian=True)
    else:
        ds.save_as(out)
    raw = out.getvalue()
    start = 144 + struct.unpack_from("<I", raw, 140)[0]  # after the preamble, DICM and the file meta group
    prefix = file_meta_prefix(str(ds.SOPClassUID), str(ds.SOPInstanceUID), transfer_syntax)
    return prefix + raw[start:], len(prefix)


def _outcome(fn, data: bytes, cls: str, ts: str, offset: int):  # type: ignore[no-untyped-def]
    try:
        header = fn(data, cls, None, ts, offset)
    except Refused as exc:
        return ("refused", exc.status, exc.reason)
    if header is None:
        return None
    return tuple(getattr(header, f) for f in FIELDS)


def _cases(tmp_path: Path) -> list[tuple[str, bytes, str, int]]:
    cases = []
    hu, spacing = phantom_head(3, 32)
    for p in write_series(tmp_path / "s", hu, spacing, seed=5):
        ds = dcmread(p)
        for ts in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            ds.file_meta.TransferSyntaxUID = ts
            data, offset = _stream(ds, ts)
            cases.append((f"synth-{p.name}-{ts}", data, ts, offset))
    for name in ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm"):
        found = get_testdata_file(name, download=False)
        assert found, f"pydicom's bundled test file {name} is missing"
        ds = dcmread(str(found))
        ts = str(ds.file_meta.TransferSyntaxUID)
        data, offset = _stream(ds, ts)
        cases.append((name, data, ts, offset))
        # An undefined-length sequence (with an undefined-length item holding another one) before the pixels.
        ref = Dataset()
        ref.ReferencedSOPClassUID = ds.SOPClassUID
        ref.ReferencedSOPInstanceUID = "1.2.3.4"
        inner = Dataset()
        inner.CodeValue = "T-A0100"
        ref.PurposeOfReferenceCodeSequence = [inner]
        ds.ReferencedImageSequence = [ref, Dataset()]
        ds["ReferencedImageSequence"].is_undefined_length = True
        ds["ReferencedImageSequence"].value[0]["PurposeOfReferenceCodeSequence"].is_undefined_length = True
        for item in ds.ReferencedImageSequence:
            item.is_undefined_length_sequence_item = True
        data, offset = _stream(ds, ts)
        assert b"\xfe\xff\xdd\xe0" in data  # the sequence really has a delimiter
        cases.append((f"{name}-undefined-sq", data, ts, offset))
    for name in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm"):  # encapsulated pixel data
        found = get_testdata_file(name, download=False)
        assert found, f"pydicom's bundled test file {name} is missing"
        ds = dcmread(str(found))
        data, offset = _stream(ds, str(ds.file_meta.TransferSyntaxUID))
        cases.append((name, data, str(ds.file_meta.TransferSyntaxUID), offset))
    return cases


def test_raw_path_answers_exactly_as_pydicom_including_every_truncation(tmp_path: Path) -> None:
    raw_taken = 0
    compared = 0
    for name, data, ts, offset in _cases(tmp_path):
        cls = str(dcmread(BytesIO(data)).SOPClassUID)
        expected = _outcome(_parse_pydicom, data, cls, ts, offset)
        assert expected[0] != "refused", f"{name}: {expected}"
        raw = _outcome(_parse_raw, data, cls, ts, offset)
        assert raw is not None, f"{name}: the raw path fell back to pydicom on an ordinary data set"
        assert raw == expected, name
        raw_taken += 1
        cuts = sorted({offset + 1, offset + 7, offset + 100, len(data) // 2, len(data) - 1, len(data) - 4000})
        for cut in (c for c in cuts if offset < c < len(data)):
            short = data[:cut]
            assert _outcome(parse_header, short, cls, ts, offset) == _outcome(_parse_pydicom, short, cls, ts, offset), (
                f"{name} cut at {cut}"
            )
            compared += 1
        wrong_class = "1.2.840.10008.5.1.4.1.1.4" if cls != "1.2.840.10008.5.1.4.1.1.4" else "1.2.840.10008.5.1.4.1.1.2"
        assert _outcome(parse_header, data, wrong_class, ts, offset) == _outcome(
            _parse_pydicom, data, wrong_class, ts, offset
        )
    assert raw_taken >= 13 and compared >= 60


def test_missing_attributes_are_refused_alike(tmp_path: Path) -> None:
    hu, spacing = phantom_head(1, 32)
    (path,) = write_series(tmp_path / "s", hu, spacing, seed=6)
    for keyword in ("StudyInstanceUID", "Rows", "BitsAllocated", "PixelData"):
        ds = dcmread(path)
        del ds[keyword]
        data, offset = _stream(ds, ExplicitVRLittleEndian)
        cls = str(ds.SOPClassUID)
        raw = _outcome(_parse_raw, data, cls, ExplicitVRLittleEndian, offset)
        assert raw is not None and raw[0] == "refused" and keyword in raw[2]
        assert raw == _outcome(_parse_pydicom, data, cls, ExplicitVRLittleEndian, offset)


def test_scan_refuses_what_it_does_not_understand() -> None:
    good = struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 4) + b"1.2\0"
    assert scan(good, 0, False, frozenset({0x00080016})).values == {0x00080016: (b"UI", b"1.2\0")}
    with pytest.raises(ScanError):  # not a VR: implicit data in an explicit stream (pydicom guesses; rawscan doesn't)
        scan(struct.pack("<HHI", 0x0008, 0x0016, 4) + b"1.2\0", 0, False, frozenset())
    with pytest.raises(ScanError):  # tags out of order
        scan(good + struct.pack("<HH2sH", 0x0008, 0x0005, b"CS", 0), 0, False, frozenset())
    with pytest.raises(ScanError):  # a value past the end
        scan(struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 40) + b"1.2\0", 0, False, frozenset())
    with pytest.raises(ScanError):  # an undefined-length sequence without its delimiter
        scan(struct.pack("<HH2sHI", 0x0008, 0x1140, b"SQ", 0, 0xFFFFFFFF), 0, False, frozenset())
