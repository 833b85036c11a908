"""An instance's header: read from the received bytes (``rawscan``, pydicom when it must), checked against the
request and the conformance statement (a refusal carries its C-STORE status), and the File Meta Information that
makes the received data set a Part 10 file.
"""

from __future__ import annotations

import functools
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from io import BytesIO

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble

from triage_node.receive.contexts import (
    ENHANCED_SOP_CLASSES,
    NATIVE_TRANSFER_SYNTAXES,
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_DOES_NOT_MATCH,
    STORAGE_SOP_CLASSES,
)
from triage_node.receive.rawscan import UNDEFINED, ScanError, scan

MAX_FRAMES = 5000
PIXEL_DATA = 0x7FE00010
DEFER_SIZE = 64 * 1024


class Refused(Exception):
    """An instance that must be refused with ``status``; ``reason`` goes to the log (no PHI)."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _text(ds: Dataset, keyword: str, limit: int = 64) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    return str(value)[:limit]


def _int(ds: Dataset, keyword: str) -> int | None:
    value = ds.get(keyword)
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _text_attr(keyword: str, limit: int = 64) -> cached_property[str | None]:
    """A Header attribute read from its dataset on first use (PHI among them: never log these)."""
    return cached_property(lambda self: _text(self.dataset, keyword, limit))


def _int_attr(keyword: str) -> cached_property[int | None]:
    return cached_property(lambda self: _int(self.dataset, keyword))


@dataclass(frozen=True)
class Header:
    """What the receive path needs from an instance. Patient fields are PHI: never log them.

    The descriptive attributes (patient, study, series) are converted from ``dataset`` only when first read, which is
    when a new study or series row is made: pydicom's conversion and validation of text values cost more CPU than
    the rest of parsing, and every later instance of the series only needs the UIDs and numbers.
    """

    sop_instance_uid: str
    sop_class_uid: str
    study_uid: str
    series_uid: str
    transfer_syntax_uid: str
    instance_number: int | None
    expected_instances: int | None
    # Makes the pydicom Dataset of the header (all but the pixels) when a descriptive attribute is first read.
    source: Callable[[], Dataset] = field(repr=False, compare=False)

    @cached_property
    def dataset(self) -> Dataset:
        return self.source()

    # Converted on first use (see above).
    modality = _text_attr("Modality", 16)
    series_number = _int_attr("SeriesNumber")
    series_description = _text_attr("SeriesDescription", 128)
    body_part = _text_attr("BodyPartExamined", 64)
    patient_name = _text_attr("PatientName", 324)
    patient_id = _text_attr("PatientID")
    patient_birth_date = _text_attr("PatientBirthDate", 8)
    patient_sex = _text_attr("PatientSex", 16)
    accession_number = _text_attr("AccessionNumber")
    study_id = _text_attr("StudyID", 16)
    study_description = _text_attr("StudyDescription", 128)
    study_date = _text_attr("StudyDate", 8)
    study_time = _text_attr("StudyTime", 16)
    referring_physician = _text_attr("ReferringPhysicianName", 324)


# Value representations whose values are ASCII whatever the character set: read straight from the raw bytes.
_ASCII_VRS = frozenset({"UI", "IS", "CS", "DA", "TM", "AS"})


def _raw_ascii(ds: Dataset, keyword: str) -> str | None:
    """The value of a UI / IS / CS element as stripped text without pydicom's conversion and validation (the hot
    path reads a few of these per instance); falls back to the converted value for anything else."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    elem = ds.get_item(tag, keep_deferred=True)
    if isinstance(elem, RawDataElement) and elem.VR in _ASCII_VRS and isinstance(elem.value, bytes):
        text = elem.value.decode("ascii", errors="replace").strip(" \x00")
        return text or None
    value = ds.get(keyword)
    return None if value is None or value == "" else str(value).strip()


def _raw_int(ds: Dataset, keyword: str) -> int | None:
    text = _raw_ascii(ds, keyword)
    try:
        return int(text.split("\\")[0]) if text else None
    except ValueError:
        return None


def _raw_us(ds: Dataset, keyword: str) -> int | None:
    """A US element's value straight from its two raw bytes (little endian unless the data set is big endian); any
    other form goes through pydicom's conversion."""
    tag = tag_for_keyword(keyword)
    if tag is None or tag not in ds:
        return None
    elem = ds.get_item(tag, keep_deferred=True)
    if (
        isinstance(elem, RawDataElement)
        and elem.VR in (None, "US")
        and isinstance(elem.value, bytes)
        and len(elem.value) == 2
    ):
        return int.from_bytes(elem.value, "big" if ds.original_encoding[1] is False else "little")
    return _int(ds, keyword)


def _check_pixels(ds: Dataset, transfer_syntax: str, data_length: int) -> None:
    image = {}
    for kw in _US_KEYWORDS:
        value = _raw_us(ds, kw)
        if value is None:
            raise Refused(STATUS_DATASET_DOES_NOT_MATCH, f"image attribute {kw} is missing")
        image[kw] = value
    if PIXEL_DATA not in ds:
        raise Refused(STATUS_DATASET_DOES_NOT_MATCH, "PixelData is missing")
    # The pixel bytes are not read (deferred): their declared length is checked against the bytes that arrived.
    raw = ds.get_item(PIXEL_DATA, keep_deferred=True)
    declared: int | None = None
    if isinstance(raw, RawDataElement) and raw.value is None:
        actual = max(0, min(raw.length, data_length - raw.value_tell))
        declared = raw.length
    else:
        actual = len(ds.PixelData)
    _check_image(image, _raw_int(ds, "NumberOfFrames") or 1, transfer_syntax, actual, declared)


def _check_image(
    image: dict[str, int], frames: int, transfer_syntax: str, actual: int | None, declared: int | None
) -> None:
    """``actual``: pixel bytes that arrived (None: encapsulated, not counted); ``declared``: the length its element
    declares when the value was not read."""
    rows, cols = image["Rows"], image["Columns"]
    bits, spp = image["BitsAllocated"], image["SamplesPerPixel"]
    if rows == 0 or cols == 0 or frames < 1 or frames > MAX_FRAMES:
        raise Refused(STATUS_DATASET_DOES_NOT_MATCH, f"image size {rows}x{cols}x{frames} frames is not plausible")
    if bits not in (1, 8, 16, 32) or spp not in (1, 3):
        raise Refused(STATUS_DATASET_DOES_NOT_MATCH, f"BitsAllocated {bits} / SamplesPerPixel {spp} is not valid")
    if actual is None:
        return
    if transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
        expected = (rows * cols * frames * spp * bits + 7) // 8
        if actual < expected:
            raise Refused(
                STATUS_DATASET_DOES_NOT_MATCH,
                f"PixelData holds {actual} bytes, the header declares {expected} ({rows}x{cols}x{frames}x{bits} bit)",
            )
    elif declared is not None and actual < declared:
        raise Refused(STATUS_CANNOT_UNDERSTAND, f"PixelData is cut short: {actual} of {declared} bytes arrived")


# (implicit VR, little endian) of a data set in each transfer syntax; Deflated is absent (read through dcmread).
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"


def parse_header(
    data: bytes | memoryview,
    context_sop_class: str,
    affected_sop_instance: str | None,
    transfer_syntax: str | None = None,
    dataset_offset: int = 0,
) -> Header:
    """Parse an encoded dataset (with file meta) and check what storing it requires; raise Refused otherwise.

    ``transfer_syntax`` and ``dataset_offset``: the caller made the file meta itself (the SCP does, from the
    presentation context), so the data set is read from ``dataset_offset`` without parsing the meta again. Little
    Endian data sets are read by ``rawscan`` when it understands them, by pydicom otherwise (same checks, same
    statuses: tested on both paths).
    """
    if transfer_syntax is not None and transfer_syntax not in (_DEFLATED, _EXPLICIT_BE):
        header = _parse_raw(data, context_sop_class, affected_sop_instance, transfer_syntax, dataset_offset)
        if header is not None:
            return header
    return _parse_pydicom(data, context_sop_class, affected_sop_instance, transfer_syntax, dataset_offset)


_TAGS = {
    "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018,
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "InstanceNumber": 0x00200013,
    "ImagesInAcquisition": 0x00201002,
    "SamplesPerPixel": 0x00280002,
    "NumberOfFrames": 0x00280008,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
    "BitsAllocated": 0x00280100,
    "PixelRepresentation": 0x00280103,
}
_WANTED = frozenset(_TAGS.values())
_US_KEYWORDS = ("Rows", "Columns", "BitsAllocated", "SamplesPerPixel", "PixelRepresentation")


def _read_header_dataset(raw: bytes, implicit: bool) -> Dataset:
    return read_dataset(BytesIO(raw), implicit, True, defer_size=DEFER_SIZE)


def _parse_raw(
    data: bytes | memoryview,
    context_sop_class: str,
    affected_sop_instance: str | None,
    transfer_syntax: str,
    dataset_offset: int,
) -> Header | None:
    """``parse_header`` for a Little Endian data set read by ``rawscan``; None when pydicom has to read it (rawscan
    does not understand the data set, or a value is not in the form pydicom's path would read raw)."""
    implicit = transfer_syntax == _IMPLICIT_LE
    try:
        found = scan(data, dataset_offset, implicit, _WANTED)
    except ScanError:
        return None
    values = found.values

    def text(keyword: str) -> str | None:
        item = values.get(_TAGS[keyword])
        if item is None:
            return None
        return item[1].decode("ascii", errors="replace").strip(" \x00") or None

    def number(keyword: str) -> int | None:
        value = text(keyword)
        try:
            return int(value.split("\\")[0]) if value else None
        except ValueError:
            return None

    uids = _identity(text, context_sop_class, affected_sop_instance)
    image: dict[str, int] = {}
    for kw in _US_KEYWORDS:
        item = values.get(_TAGS[kw])
        if item is None:
            raise Refused(STATUS_DATASET_DOES_NOT_MATCH, f"image attribute {kw} is missing")
        vr, raw = item
        if vr not in (b"", b"US") or len(raw) != 2:
            return None  # pydicom's path converts other forms
        image[kw] = int.from_bytes(raw, "little")
    if found.pixel_offset is None or found.pixel_length is None:
        raise Refused(STATUS_DATASET_DOES_NOT_MATCH, "PixelData is missing")
    if found.pixel_length == UNDEFINED:
        if transfer_syntax in NATIVE_TRANSFER_SYNTAXES:
            return None
        actual = None  # encapsulated: its fragments were walked to their delimiter
    else:
        actual = max(0, min(found.pixel_length, len(data) - found.pixel_offset))
        if actual < found.pixel_length and found.pixel_length <= DEFER_SIZE:
            return None  # pydicom reads short values and fails on a cut one: let it
    _check_image(image, number("NumberOfFrames") or 1, transfer_syntax, actual, found.pixel_length)
    raw_header = bytes(data[dataset_offset : found.header_end])
    source = functools.partial(_read_header_dataset, raw_header, implicit)
    return _header(uids, transfer_syntax, number("InstanceNumber"), number("ImagesInAcquisition"), source)


def _parse_pydicom(
    data: bytes | memoryview,
    context_sop_class: str,
    affected_sop_instance: str | None,
    transfer_syntax: str | None,
    dataset_offset: int,
) -> Header:
    data_length = len(data)
    try:
        if transfer_syntax is None:
            fp = BytesIO(data)
            read_preamble(fp, False)
            transfer_syntax = str(_read_file_meta_info(fp).get("TransferSyntaxUID", ""))
            dataset_offset = fp.tell()
        # Values above DEFER_SIZE (the pixels) are skipped, not copied: only their length and offset are kept.
        if transfer_syntax == _DEFLATED:
            # The lengths the checks compare are those of the inflated data set, never of the compressed stream.
            inflated = _inflate(data[dataset_offset:])
            fp, data_length = BytesIO(inflated), len(inflated)
            implicit, little = False, True
        else:
            fp = BytesIO(data)
            fp.seek(dataset_offset)
            implicit, little = transfer_syntax == _IMPLICIT_LE, transfer_syntax != _EXPLICIT_BE
        ds = read_dataset(fp, implicit, little, defer_size=DEFER_SIZE)
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError, TypeError, AttributeError, zlib.error) as exc:
        raise Refused(STATUS_CANNOT_UNDERSTAND, f"dataset cannot be parsed ({type(exc).__name__}: {exc})") from exc
    uids = _identity(lambda kw: _raw_ascii(ds, kw), context_sop_class, affected_sop_instance)
    _check_pixels(ds, transfer_syntax, data_length)
    return _header(
        uids, transfer_syntax, _raw_int(ds, "InstanceNumber"), _raw_int(ds, "ImagesInAcquisition"), lambda: ds
    )


def _inflate(stream: bytes | memoryview) -> bytes:
    """A Deflated Explicit VR Little Endian data set (raw deflate, RFC 1951) inflated; a stream cut short yields what
    it holds (the pixel check then finds the data set short)."""
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(stream)


def _header(
    uids: dict[str, str],
    transfer_syntax: str,
    instance_number: int | None,
    images_in_acquisition: int | None,
    source: Callable[[], Dataset],
) -> Header:
    expected = images_in_acquisition
    if uids["SOPClassUID"] in ENHANCED_SOP_CLASSES:
        expected = None  # counts frames of one acquisition, not instances of the series
    return Header(
        sop_instance_uid=uids["SOPInstanceUID"],
        sop_class_uid=uids["SOPClassUID"],
        study_uid=uids["StudyInstanceUID"],
        series_uid=uids["SeriesInstanceUID"],
        transfer_syntax_uid=transfer_syntax,
        instance_number=instance_number,
        expected_instances=expected if expected and expected > 0 else None,
        source=source,
    )


def _identity(
    text: Callable[[str], str | None], context_sop_class: str, affected_sop_instance: str | None
) -> dict[str, str]:
    """The four UIDs read with ``text``, checked against the presentation context and the request."""
    uids = {}
    for kw in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = text(kw)
        if value is None:
            raise Refused(STATUS_DATASET_DOES_NOT_MATCH, f"{kw} is missing")
        uids[kw] = value[:64]
    if uids["SOPClassUID"] != context_sop_class:
        raise Refused(
            STATUS_DATASET_DOES_NOT_MATCH,
            f"SOPClassUID {uids['SOPClassUID']} does not match the presentation context {context_sop_class}",
        )
    if uids["SOPClassUID"] not in STORAGE_SOP_CLASSES:
        raise Refused(STATUS_DATASET_DOES_NOT_MATCH, f"SOP class {uids['SOPClassUID']} is not an accepted image class")
    if affected_sop_instance and affected_sop_instance != uids["SOPInstanceUID"]:
        raise Refused(
            STATUS_DATASET_DOES_NOT_MATCH, "SOPInstanceUID differs from the request's Affected SOP Instance UID"
        )
    return uids


def _meta_element(elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB", b"UN", b"SQ", b"UT", b"OW"):
        return struct.pack("<HH2sHI", 0x0002, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", 0x0002, elem, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def file_meta_prefix(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information (PS3.10 7.1) pynetdicom writes for a received C-STORE
    (``Event.encoded_dataset()``: pynetdicom's implementation UID and version name), byte for byte, without
    building a pydicom dataset per instance. Prepended to the received data set, it makes the stored file."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    body = b"".join(
        (
            _meta_element(0x0001, b"OB", b"\x00\x01"),
            _meta_element(0x0002, b"UI", _padded(sop_class_uid, b"\0")),
            _meta_element(0x0003, b"UI", _padded(sop_instance_uid, b"\0")),
            _meta_element(0x0010, b"UI", _padded(transfer_syntax_uid, b"\0")),
            _meta_element(0x0012, b"UI", _padded(str(PYNETDICOM_IMPLEMENTATION_UID), b"\0")),
            _meta_element(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")),
        )
    )
    return b"\x00" * 128 + b"DICM" + _meta_element(0x0000, b"UL", struct.pack("<I", len(body))) + body

