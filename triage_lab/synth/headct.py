"""The real head CT shipped by Debian's ``invesalius-examples`` package.

The package holds ``Cranium.inv3``: a gzip tar with ``main.plist`` (shape, dtype, spacing) and ``matrix.dat``
(raw int16 Hounsfield units, 108 x 256 x 256). The data is GPL-2 and is read from the installed package at run
time; it is never copied into this repository.
"""

from __future__ import annotations

import functools
import plistlib
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_PATH = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")


class HeadCTUnavailable(FileNotFoundError):
    """Raised when the invesalius-examples package is not installed."""


@dataclass(frozen=True)
class HeadCT:
    """A head CT volume.

    ``hu`` is int16 Hounsfield units, shape (z, y, x), z running from the first stored slice. ``spacing`` is
    (z, y, x) in mm.
    """

    hu: np.ndarray
    spacing: tuple[float, float, float]


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    for m in tar.getmembers():
        if m.isfile() and Path(m.name).name == name:
            f = tar.extractfile(m)
            if f is not None:
                return f.read()
    raise HeadCTUnavailable(f"{name} not found in {tar.name!r}")


@functools.lru_cache(maxsize=2)
def load_head_ct(path: Path = DEFAULT_PATH) -> HeadCT:
    """Load the invesalius example head CT (cached; the returned array is read-only)."""
    if not path.exists():
        raise HeadCTUnavailable(
            f"{path} is missing: install Debian's invesalius-examples (apt-get install -y invesalius-examples)"
        )
    with tarfile.open(path, "r:gz") as tar:
        meta = plistlib.loads(_member(tar, "main.plist"))
        raw = _member(tar, meta["matrix"]["filename"])
    shape = tuple(int(s) for s in meta["matrix"]["shape"])
    # matrix.dat carries one extra leading element per axis in some invesalius versions; take the tail.
    hu = np.frombuffer(raw, dtype=np.dtype(meta["matrix"]["dtype"]))
    n = int(np.prod(shape))
    hu = hu[-n:].reshape(shape).copy()
    hu.setflags(write=False)
    sx, sy, sz = (float(v) for v in meta["spacing"])
    return HeadCT(hu=hu, spacing=(sz, sy, sx))
