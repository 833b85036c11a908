"""NIfTI image/mask pairs for segmentation training.

A folder holds ``<id>_image.nii[.gz]`` with ``<id>_mask.nii[.gz]`` (mask > 0 is lesion). Arrays are returned (z, y, x)
(NIfTI voxel order is x, y, z). Pairs are split 90/10 into training and validation by sorted id.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class NiftiPairError(ValueError):
    """An image without its mask, or a mask whose shape differs from its image."""


def find_pairs(folder: Path) -> list[tuple[Path, Path]]:
    pairs = []
    for img in sorted(folder.glob("*_image.nii*")):
        stem = img.name.split("_image.nii")[0]
        masks = sorted(folder.glob(f"{stem}_mask.nii*"))
        if not masks:
            raise NiftiPairError(f"{img} has no mask: expected {stem}_mask.nii.gz next to it")
        pairs.append((img, masks[0]))
    if not pairs:
        raise NiftiPairError(f"no '<id>_image.nii.gz' files in {folder}")
    return pairs


def load_pair(img: Path, mask: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(pixels float32 (z, y, x), mask bool (z, y, x), spacing (z, y, x) mm)."""
    import nibabel as nib

    im: Any = nib.load(str(img))  # a Nifti1Image; nibabel's stubs type load() as the generic FileBasedImage
    mk: Any = nib.load(str(mask))
    a = np.asarray(im.get_fdata(), np.float32)
    m = np.asarray(mk.get_fdata()) > 0
    if a.shape != m.shape:
        raise NiftiPairError(f"{mask} has shape {m.shape} but {img} has {a.shape}")
    zooms = im.header.get_zooms()[:3]
    return a.transpose(2, 1, 0).copy(), m.transpose(2, 1, 0).copy(), (float(zooms[2]), float(zooms[1]), float(zooms[0]))


def split_pairs(folder: Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    pairs = find_pairs(folder)
    n_val = max(1, len(pairs) // 10) if len(pairs) > 1 else 0
    vols = [load_pair(i, m)[:2] for i, m in pairs]
    return vols[n_val:], vols[:n_val] or vols[:1]
