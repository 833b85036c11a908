"""The real head CT shipped by Debian's ``invesalius-examples`` package.

The package holds ``Cranium.inv3``: a gzip tar with ``main.plist`` (shape, dtype, spacing) and ``matrix.dat``
(raw int16 Hounsfield units, 108 x 256 x 256). The data is GPL-2 and is read from the installed package at run
time; it is never copied into this repository.

The stored slices are **coronal**: the first axis runs from the face (index 0) to the occiput in 1.5 mm steps, rows
run from the vertex (row 0) down, columns across the head. :func:`axial_head_ct` turns it into the axial layout every
generator here assumes (z towards the vertex, anterior at row 0). Until ich 2.0 the generators used the stored layout
as if it were axial, so 60% of the CT training heads (and the "ct" DWI source) were coronal images labelled axial.
"""

from __future__ import annotations

import functools
import os
import plistlib
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Debian's invesalius-examples (GPL-2): read where the package puts it, or where TRIAGE_LAB_INVESALIUS points (a copy
# made for a machine without the package, e.g. a lent GPU host); never copied into the repository.
DEFAULT_PATH = Path(os.environ.get("TRIAGE_LAB_INVESALIUS", "/usr/share/doc/invesalius-examples/examples/Cranium.inv3"))


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


@functools.lru_cache(maxsize=1)
def axial_head_ct(path: Path = DEFAULT_PATH) -> HeadCT:
    """The same head in axial layout: (z towards the vertex, y anterior at row 0, x across), spacing permuted."""
    ct = load_head_ct(path)
    hu = np.ascontiguousarray(ct.hu.transpose(1, 0, 2)[::-1])
    hu.setflags(write=False)
    s_ap, s_si, s_lr = ct.spacing
    return HeadCT(hu=hu, spacing=(s_si, s_ap, s_lr))
