"""What the SCP accepts: storage SOP classes and transfer syntaxes. The conformance statement is rendered from these."""

from __future__ import annotations

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"

# The C-STORE statuses the SCP answers (receive/header.py raises them; the conformance statement lists them).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_DOES_NOT_MATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC210
STATUS_PROCESSING_FAILURE = 0x0110

STORAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.2.2": "Legacy Converted Enhanced CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}

# Multi-frame classes: one instance holds a whole series (frames carry the per-slice geometry).
ENHANCED_SOP_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.2.1",
        "1.2.840.10008.5.1.4.1.1.2.2",
        "1.2.840.10008.5.1.4.1.1.4.1",
        "1.2.840.10008.5.1.4.1.1.4.4",
    }
)

TRANSFER_SYNTAXES: dict[str, str] = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian (retired)",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline (Process 1)",
    "1.2.840.10008.1.2.4.51": "JPEG Extended (Process 2 & 4), 12-bit",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless, Non-Hierarchical (Process 14)",
    "1.2.840.10008.1.2.4.70": "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [SV1])",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless",
    "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Image Compression (Lossless Only)",
    "1.2.840.10008.1.2.4.91": "JPEG 2000 Image Compression",
    "1.2.840.10008.1.2.5": "RLE Lossless",
}

# The order the SCP prefers when a sender offers several syntaxes for one context: the sender's lossless compressed
# form first (no transcoding on either side), then uncompressed, and lossy last, so that a sender is never invited
# to compress lossily data it holds losslessly.
PREFERENCE: tuple[str, ...] = (
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.50",
)
assert set(PREFERENCE) == set(TRANSFER_SYNTAXES)

# Uncompressed transfer syntaxes: the pixel data length can be checked against the header at receive time.
NATIVE_TRANSFER_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}
)
