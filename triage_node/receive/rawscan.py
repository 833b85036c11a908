"""A scan of the top level of an encoded data set that finds the few elements the receive path needs, without
building a pydicom Dataset (PS3.5 7.1: element encoding; 7.5: sequences and items).

pydicom's ``read_dataset`` makes a ``RawDataElement`` and a dictionary entry for every element, nested sequences
included; for a CT slice that cost more CPU than everything else done to store it. This walks the elements' tags
and lengths, keeps the values of the elements asked for, skips everything else (sequences of defined or undefined
length included) and notes where Pixel Data's value starts. It understands Little Endian data sets, Implicit and
Explicit VR; the caller uses pydicom for anything else and whenever this raises :class:`ScanError` (a data set
this scan does not understand is not judged here: pydicom's reading decides what is wrong with it).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

PIXEL_DATA = 0x7FE00010
UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
# Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 Table 7.1-1); the others have a 2-byte length.
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
MAX_DEPTH = 16

_TAG_LEN = struct.Struct("<HHI")
_TAG_VR_LEN = struct.Struct("<HH2sH")


class ScanError(Exception):
    """The data set is not one this scan reads: the caller falls back to pydicom."""


@dataclass
class Scan:
    values: dict[
        int, tuple[bytes, bytes]
    ]  # tag -> (VR, raw value) for the tags asked for (top level; VR b"" if implicit)
    pixel_offset: int | None  # where Pixel Data's value starts in the buffer
    pixel_length: int | None  # its declared length (UNDEFINED when encapsulated)
    header_end: int  # where the Pixel Data element starts (the end of the buffer when there is none)


def scan(data: bytes | memoryview, start: int, implicit: bool, wanted: frozenset[int]) -> Scan:
    """Scan the top-level elements of the data set in ``data[start:]``."""
    end = len(data)
    values: dict[int, tuple[bytes, bytes]] = {}
    pixel_offset = pixel_length = None
    header_end = end
    pos = start
    last_tag = -1
    while pos < end:
        tag, vr, length, pos = _element_header(data, pos, end, implicit)
        if tag <= last_tag:
            raise ScanError("tags out of order")
        last_tag = tag
        if tag == PIXEL_DATA:
            header_end = pos - (8 if implicit or vr not in LONG_VRS else 12)
            pixel_offset, pixel_length = pos, length
            # Encapsulated (undefined length): a Basic Offset Table item and fragment items of defined length. A
            # native value cut short is the caller's to judge (it knows the syntax).
            pos = _skip_sequence(data, pos, end, True, 1) if length == UNDEFINED else min(end, pos + length)
            continue
        if length == UNDEFINED:
            if not implicit and vr not in (b"SQ", b"UN"):
                raise ScanError(f"undefined length for VR {vr!r}")
            pos = _skip_sequence(data, pos, end, implicit or vr == b"UN", 1)
            continue
        if pos + length > end:
            raise ScanError("value runs past the end")
        if tag in wanted:
            values[tag] = (vr, bytes(data[pos : pos + length]))
        pos += length
    return Scan(values, pixel_offset, pixel_length, header_end)


def _element_header(data: bytes | memoryview, pos: int, end: int, implicit: bool) -> tuple[int, bytes, int, int]:
    if pos + 8 > end:
        raise ScanError("element header runs past the end")
    if implicit:
        group, elem, length = _TAG_LEN.unpack_from(data, pos)
        return (group << 16) | elem, b"", length, pos + 8
    group, elem, vr, short = _TAG_VR_LEN.unpack_from(data, pos)
    if vr in LONG_VRS:
        if pos + 12 > end:
            raise ScanError("element header runs past the end")
        (length,) = struct.unpack_from("<I", data, pos + 8)
        return (group << 16) | elem, vr, length, pos + 12
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise ScanError("not a VR")
    return (group << 16) | elem, vr, short, pos + 8


def _skip_sequence(data: bytes | memoryview, pos: int, end: int, implicit: bool, depth: int) -> int:
    """Skip the items of an undefined-length sequence starting at ``pos``; return the position after its
    Sequence Delimitation Item. Items of undefined length are walked element by element."""
    if depth > MAX_DEPTH:
        raise ScanError("sequences nested too deep")
    while True:
        if pos + 8 > end:
            raise ScanError("sequence runs past the end")
        group, elem, length = _TAG_LEN.unpack_from(data, pos)
        tag = (group << 16) | elem
        pos += 8
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM:
            raise ScanError("expected an item in a sequence")
        if length != UNDEFINED:
            if pos + length > end:
                raise ScanError("item runs past the end")
            pos += length
            continue
        pos = _skip_item(data, pos, end, implicit, depth)


def _skip_item(data: bytes | memoryview, pos: int, end: int, implicit: bool, depth: int) -> int:
    while True:
        if pos + 8 > end:
            raise ScanError("item runs past the end")
        group, elem, length = _TAG_LEN.unpack_from(data, pos)
        if (group << 16) | elem == ITEM_END:
            return pos + 8
        _tag, vr, length, pos = _element_header(data, pos, end, implicit)
        if length == UNDEFINED:
            if not implicit and vr not in (b"SQ", b"UN"):
                raise ScanError(f"undefined length for VR {vr!r}")
            pos = _skip_sequence(data, pos, end, implicit or vr == b"UN", depth + 1)
            continue
        if pos + length > end:
            raise ScanError("value runs past the end")
        pos += length
