"""NIfTI image/mask pairs for segmentation training, read in one canonical orientation.

A folder holds ``<id>_image.nii[.gz]`` with ``<id>_mask.nii[.gz]`` (mask > 0 is lesion). Pairs are split 90/10 into
training and validation by sorted id.

Orientation: every volume is reoriented (nibabel ``as_reoriented``, the same operation as ``as_closest_canonical`` but
to a different target) so that its voxel axes run toward patient Left, Posterior and Superior (NIfTI axis codes
``L, P, S``), then returned as a (z, y, x) array. That is the layout of the daemon's DICOM axial volumes (columns toward
the patient's left, rows toward posterior, slices upward), so a model trained on NIfTI sees what it will see at
inference. nibabel's own canonical RAS would hand over the same arrays mirrored left-right and front-back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

CANONICAL_AXCODES = ("L", "P", "S")
# Image and mask voxel-to-world affines must agree to this many mm (float32 storage of a ~100 mm offset is ~1e-5 mm).
AFFINE_TOL_MM = 0.01
NIFTI_SUFFIXES = (".nii.gz", ".nii")


class NiftiPairError(ValueError):
    """An image without its mask, or a mask whose voxel grid (shape or affine) differs from its image's."""


@dataclass(frozen=True)
class NiftiVolume:
    """One NIfTI volume in the canonical orientation.

    ``pixels``: float32 (z, y, x), voxel x toward patient left, y toward posterior, z toward superior.
    ``affine``: float64 (4, 4), voxel (x, y, z) index -> RAS+ world mm, after reorientation. ``spacing``: (z, y, x) mm.
    """

    path: Path
    pixels: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]


def nifti_stem(path: Path) -> str:
    """``sub-1_dwi.nii.gz`` -> ``sub-1_dwi``."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def load_canonical(path: Path) -> NiftiVolume:
    """Read a 3-D NIfTI (trailing singleton dimensions are dropped) and reorient it to ``CANONICAL_AXCODES``."""
    import nibabel as nib
    from nibabel.orientations import axcodes2ornt, io_orientation, ornt_transform

    img: Any = nib.load(str(path))  # a Nifti1Image; nibabel's stubs type load() as the generic FileBasedImage
    img = nib.funcs.squeeze_image(img)
    if len(img.shape) != 3:
        raise NiftiPairError(f"{path}: expected a 3-D volume, got shape {tuple(img.shape)}")
    ornt = ornt_transform(io_orientation(img.affine), axcodes2ornt(CANONICAL_AXCODES))
    img = img.as_reoriented(ornt)
    data = np.asarray(img.get_fdata(dtype=np.float32), np.float32)
    affine = np.asarray(img.affine, np.float64)
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))  # voxel size along x, y, z (also for oblique affines)
    spacing = (float(zooms[2]), float(zooms[1]), float(zooms[0]))
    return NiftiVolume(path, np.ascontiguousarray(data.transpose(2, 1, 0)), affine, spacing)


def check_same_grid(image: NiftiVolume, other: NiftiVolume, what: str = "mask") -> None:
    """Raise :class:`NiftiPairError` unless ``other`` lies on ``image``'s voxel grid (same shape and affine)."""
    if image.pixels.shape != other.pixels.shape:
        raise NiftiPairError(
            f"{what} {other.path} has shape {other.pixels.shape} (z, y, x after reorientation to "
            f"{''.join(CANONICAL_AXCODES)}) but its image {image.path} has {image.pixels.shape}: they must share one "
            "voxel grid (resample the mask onto the image first)"
        )
    diff = float(np.abs(image.affine - other.affine).max())
    if diff > AFFINE_TOL_MM:
        raise NiftiPairError(
            f"{what} {other.path} has a different affine from its image {image.path} (largest difference "
            f"{diff:.4g} mm, tolerance {AFFINE_TOL_MM} mm): they must share one voxel grid\n"
            f"image:\n{np.array2string(image.affine, precision=3)}\n{what}:\n"
            f"{np.array2string(other.affine, precision=3)}"
        )


def find_pairs(folder: Path) -> list[tuple[Path, Path]]:
    """``(image, mask)`` paths of a flat ``<id>_image.nii[.gz]`` / ``<id>_mask.nii[.gz]`` folder, sorted by id."""
    if not folder.is_dir():
        raise NiftiPairError(f"{folder} is not a folder")
    images = {
        nifti_stem(p)[: -len("_image")]: p for p in folder.glob("*_image.nii*") if p.name.endswith(NIFTI_SUFFIXES)
    }
    masks = {nifti_stem(p)[: -len("_mask")]: p for p in folder.glob("*_mask.nii*") if p.name.endswith(NIFTI_SUFFIXES)}
    if not images:
        raise NiftiPairError(f"no '<id>_image.nii.gz' files in {folder}")
    no_mask = sorted(set(images) - set(masks))
    if no_mask:
        raise NiftiPairError(
            f"{len(no_mask)} image(s) in {folder} without a mask, e.g. {images[no_mask[0]].name}: expected "
            f"{no_mask[0]}_mask.nii.gz next to it"
        )
    no_image = sorted(set(masks) - set(images))
    if no_image:
        raise NiftiPairError(f"mask {masks[no_image[0]]} has no image: expected {no_image[0]}_image.nii.gz next to it")
    return [(images[k], masks[k]) for k in sorted(images)]


def load_pair(img: Path, mask: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """(pixels float32 (z, y, x), mask bool (z, y, x), spacing (z, y, x) mm), both in the canonical orientation."""
    im, mk = load_canonical(img), load_canonical(mask)
    check_same_grid(im, mk)
    return im.pixels, mk.pixels > 0, im.spacing


def split_pairs(folder: Path) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[tuple[np.ndarray, np.ndarray]]]:
    """(training, validation) lists of (pixels, mask); the first tenth by sorted id validates (one pair: itself)."""
    pairs = find_pairs(folder)
    n_val = max(1, len(pairs) // 10) if len(pairs) > 1 else 0
    vols = [load_pair(i, m)[:2] for i, m in pairs]
    return vols[n_val:], vols[:n_val] or vols[:1]


def declare_real_data(model_dir: Path, source: str) -> None:
    """Rewrite a freshly written card whose boilerplate says "trained on synthetic lesions only" to say where its
    training data came from instead (``source``, e.g. "the ISLES'22 NIfTI folder /data/isles"). Used by every
    real-data trainer (RSNA, NIfTI, ISLES, VALDO); weights and hash are untouched."""
    from triage_lab.training.mr_cards import SYNTHETIC_ONLY, SYNTHETIC_ONLY_DWI
    from triage_node.inference.card import NOT_FOR_CLINICAL_USE, ModelCard

    notice = (
        f"Trained on {source}, supplied by the user; the project has not validated it on patients. Not for clinical "
        "use: research and testing of the triage pipeline only."
    )
    card = ModelCard.load(model_dir / "model.yaml")

    def swap(text: str) -> str:
        for synthetic in (SYNTHETIC_ONLY, SYNTHETIC_ONLY_DWI, NOT_FOR_CLINICAL_USE):
            text = text.replace(synthetic, notice)
        return text

    new = dataclasses.replace(
        card,
        intended_use=swap(card.intended_use),
        limitations=swap(card.limitations),
        training=MappingProxyType({**card.training, "real_data": source}),
        directory=model_dir,
    )
    new.save(model_dir / "model.yaml")
