"""How scanners store CT pixels: signed or unsigned integers of 12 or 16 bits with a rescale slope and intercept.

The synthetic DICOM writer (:func:`triage_lab.synth.dicom.write_series`) stores HU through one of these, named or
drawn per case from the seed (:func:`draw_storage`), so the daemon's decoding sees what PACS send.
:func:`round_trip` applies the same quantisation and clipping to an HU array, so training data can see it as an
augmentation (``make_ct_case(..., vary_storage=True)``). Values beyond the storable range are clipped to it, as a
scanner does, never wrapped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Storage:
    """One way of storing HU: ``stored value * slope + intercept = HU`` (DICOM Modality LUT, PS3.3 C.11.1).

    ``signed``: PixelRepresentation 1 (two's complement) or 0. ``bits_stored``: 8-16 bits in a 16-bit word.
    """

    name: str
    signed: bool
    bits_stored: int
    slope: float
    intercept: float

    def __post_init__(self) -> None:
        if not 8 <= self.bits_stored <= 16:
            raise ValueError(f"bits_stored must be between 8 and 16, got {self.bits_stored}")
        if not self.slope > 0:
            raise ValueError(f"slope must be positive, got {self.slope}")

    @property
    def raw_range(self) -> tuple[int, int]:
        """The smallest and largest stored values."""
        if self.signed:
            return -(2 ** (self.bits_stored - 1)), 2 ** (self.bits_stored - 1) - 1
        return 0, 2**self.bits_stored - 1

    @property
    def hu_range(self) -> tuple[float, float]:
        """The smallest and largest HU this storage can hold."""
        lo, hi = self.raw_range
        return lo * self.slope + self.intercept, hi * self.slope + self.intercept

    @property
    def dtype(self) -> type[np.integer]:
        return np.int16 if self.signed else np.uint16

    def encode(self, hu: np.ndarray) -> np.ndarray:
        """HU (any shape, float) -> stored values, int16 or uint16 of the same shape, clipped to the storable range."""
        lo, hi = self.raw_range
        raw = np.rint((np.asarray(hu, dtype=np.float64) - self.intercept) / self.slope)
        return np.clip(raw, lo, hi).astype(self.dtype)

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Stored values -> HU float32 of the same shape."""
        return (np.asarray(raw, dtype=np.float64) * self.slope + self.intercept).astype(np.float32)


# Kinds seen from scanners: signed 16-bit with intercept 0; unsigned with intercept -1024, in 16 or 12 bits (12 bits
# hold exactly -1024..3071 HU); and scaled storage where one stored step is half an HU or two HU.
STORAGES: dict[str, Storage] = {
    s.name: s
    for s in (
        Storage("signed", signed=True, bits_stored=16, slope=1.0, intercept=0.0),
        Storage("unsigned", signed=False, bits_stored=16, slope=1.0, intercept=-1024.0),
        Storage("unsigned12", signed=False, bits_stored=12, slope=1.0, intercept=-1024.0),
        Storage("half", signed=False, bits_stored=16, slope=0.5, intercept=-1024.0),
        Storage("double", signed=False, bits_stored=12, slope=2.0, intercept=-2048.0),
    )
}
_WEIGHTS = {"signed": 0.35, "unsigned": 0.2, "unsigned12": 0.25, "half": 0.1, "double": 0.1}


def random_storage(rng: np.random.Generator) -> Storage:
    """A storage kind drawn with roughly the frequencies seen from scanners."""
    names = list(_WEIGHTS)
    return STORAGES[names[int(rng.choice(len(names), p=list(_WEIGHTS.values())))]]


def draw_storage(seed: int) -> Storage:
    """The storage kind of case ``seed``, from its own random stream (so drawing it changes nothing else)."""
    return random_storage(np.random.default_rng([seed, 0x5707]))


def storage_named(name: str) -> Storage:
    if name not in STORAGES:
        raise ValueError(f"storage must be one of {sorted(STORAGES)}, got {name!r}")
    return STORAGES[name]


def round_trip(hu: np.ndarray, storage: Storage) -> np.ndarray:
    """HU (any shape) -> float32 HU as a reader decodes them after writing with ``storage``: rounded to the stored
    step (``slope``) and clipped to :attr:`Storage.hu_range`."""
    return storage.decode(storage.encode(hu))
