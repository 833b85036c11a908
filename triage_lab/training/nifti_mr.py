"""Real MR data as NIfTI folders: ISLES'22 (acute infarct on DWI / ADC) and VALDO 2021 task 2 (microbleeds on T2*).

ISLES'22 (BIDS-like; ``ses-XXXX`` level optional, ``.nii`` or ``.nii.gz``, the ``dwi/`` folder optional)::

    <root>/rawdata/sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_dwi.nii.gz   b=1000 trace image
    <root>/rawdata/sub-strokecase0001/ses-0001/dwi/sub-strokecase0001_ses-0001_adc.nii.gz   ADC map (optional)
    <root>/derivatives/sub-strokecase0001/ses-0001/sub-strokecase0001_ses-0001_msk.nii.gz  infarct mask (> 0)

VALDO 2021 task 2 (``.nii`` or ``.nii.gz``)::

    <root>/sub-101/sub-101_space-T2S_desc-masked_T2S.nii.gz   T2*-weighted image (skull-stripped)
    <root>/sub-101/sub-101_space-T2S_CMB.nii.gz               microbleed label mask (> 0)

Every volume is read in the canonical orientation of :mod:`triage_lab.training.nifti` (arrays (z, y, x) like the
daemon's DICOM volumes) and checked to share its image's voxel grid. Discovery is eager, so pairing errors surface
before any training; the volumes themselves are read one subject at a time when a split is iterated.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

import numpy as np

from triage_lab.training.nifti import (
    NIFTI_SUFFIXES,
    NiftiPairError,
    check_same_grid,
    load_canonical,
    nifti_stem,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

ISLES_LAYOUT = (
    "<root>/rawdata/sub-strokecaseNNNN/[ses-0001/][dwi/]sub-strokecaseNNNN[_ses-0001]_dwi.nii.gz (and _adc) with "
    "<root>/derivatives/sub-strokecaseNNNN/[ses-0001/]sub-strokecaseNNNN[_ses-0001]_msk.nii.gz"
)
VALDO_LAYOUT = (
    "<root>/sub-NNN/sub-NNN_space-T2S_desc-masked_T2S.nii.gz with <root>/sub-NNN/sub-NNN_space-T2S_CMB.nii.gz"
)


class NiftiLayoutError(NiftiPairError):
    """A folder does not follow the ISLES'22 or VALDO layout (missing folder, no subjects, several candidates)."""


# --------------------------------------------------------------------------------------------------------------------
# Cases


@dataclass(frozen=True)
class IslesCase:
    """One ISLES'22 subject for the infarct segmenter.

    ``dwi``: float32 (z, y, x) b=1000 trace; ``adc``: float32 (z, y, x) or None when the subject has no ADC map;
    ``mask``: bool (z, y, x) infarct; ``spacing``: (z, y, x) mm.
    """

    subject: str
    dwi: np.ndarray
    adc: np.ndarray | None
    mask: np.ndarray
    spacing: tuple[float, float, float]


@dataclass(frozen=True)
class ValdoCase:
    """One VALDO subject for the microbleed model, with the fields a synthetic ``SwiCase`` has.

    ``volume``: float32 (z, y, x) T2*-weighted magnitude; ``spacing``: (z, y, x) mm; ``centres``: float64 (N, 3) voxel
    (z, y, x) centroids of the label mask's connected components; ``radii``: float32 (N,) mm, radius of the sphere of
    each component's volume (the labelled dark spot, blooming included); ``source``: ``valdo``.
    """

    subject: str
    volume: np.ndarray
    spacing: tuple[float, float, float]
    centres: np.ndarray
    radii: np.ndarray
    source: str = "valdo"


@dataclass(frozen=True)
class IslesFiles:
    subject: str  # "sub-strokecase0001", or "sub-strokecase0001/ses-0002" when a subject has several sessions
    dwi: Path
    adc: Path | None
    mask: Path


@dataclass(frozen=True)
class ValdoFiles:
    subject: str
    image: Path
    mask: Path


@dataclass(frozen=True)
class SubjectSplit(Generic[T]):
    """The subjects of a real-data folder split into training and validation; ``load`` reads one subject's case.

    ``dataset``: "ISLES'22" | "VALDO"; ``content``: what the images and labels are, for the model card.
    """

    dataset: str
    root: Path
    content: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    load: Callable[[str], T]

    def cases(self, part: Literal["train", "val"]) -> Iterator[T]:
        for subject in self.train if part == "train" else self.val:
            yield self.load(subject)

    def describe(self, part: Literal["train", "val"]) -> str:
        ids = self.train if part == "train" else self.val
        shown = ", ".join(ids) if len(ids) <= 12 else f"{', '.join(ids[:6])}, ... {ids[-1]}"
        noun = "subject" if len(ids) == 1 else "subjects"
        return f"{len(ids)} {noun} of the {self.dataset} NIfTI folder {self.root} ({shown})"


# --------------------------------------------------------------------------------------------------------------------
# Discovery


def _nifti_files(folder: Path, suffix: str) -> list[Path]:
    """``*_<suffix>.nii[.gz]`` anywhere under ``folder``, sorted."""
    return sorted(p for p in folder.rglob(f"*_{suffix}.nii*") if p.name.endswith(NIFTI_SUFFIXES) and p.is_file())


def _by_session(subject_dir: Path, suffix: str) -> dict[str, list[Path]]:
    """Files of one subject keyed by their ``ses-*`` folder ("" when there is no session level)."""
    out: dict[str, list[Path]] = defaultdict(list)
    if subject_dir.is_dir():
        for p in _nifti_files(subject_dir, suffix):
            ses = next((part for part in p.relative_to(subject_dir).parts[:-1] if part.startswith("ses-")), "")
            out[ses].append(p)
    return dict(out)


def _one(files: list[Path], what: str, subject: str) -> Path:
    if len(files) > 1:
        raise NiftiLayoutError(f"subject {subject}: several {what} files, expected one: {[str(f) for f in files]}")
    return files[0]


def find_isles(root: Path) -> list[IslesFiles]:
    """Every (DWI, ADC, mask) of an ISLES'22 folder, sorted by subject (see the module docstring for the layout)."""
    raw, der = root / "rawdata", root / "derivatives"
    for folder, what in ((raw, "images"), (der, "lesion masks")):
        if not folder.is_dir():
            raise NiftiLayoutError(
                f"{root}: no {folder.name}/ folder ({what}); expected the ISLES'22 layout {ISLES_LAYOUT}"
            )
    subjects = sorted(p for p in raw.iterdir() if p.is_dir() and p.name.startswith("sub-"))
    if not subjects:
        raise NiftiLayoutError(f"{raw}: no sub-* folders; expected the ISLES'22 layout {ISLES_LAYOUT}")
    orphans = sorted(
        {p.name for p in der.iterdir() if p.is_dir() and p.name.startswith("sub-")} - {s.name for s in subjects}
    )
    if orphans:
        raise NiftiPairError(f"subject {orphans[0]}: a mask in {der / orphans[0]} but no images in {raw / orphans[0]}")
    out = []
    for sdir in subjects:
        dwis = _by_session(sdir, "dwi")
        if not dwis:
            raise NiftiPairError(f"subject {sdir.name}: no *_dwi.nii.gz under {sdir}; expected {ISLES_LAYOUT}")
        adcs = _by_session(sdir, "adc")
        masks = _by_session(der / sdir.name, "msk")
        for ses in sorted(dwis):
            subject = sdir.name if len(dwis) == 1 else f"{sdir.name}/{ses}"
            dwi = _one(dwis[ses], "DWI", subject)
            mask_files = masks.get(ses)
            if mask_files is None and len(dwis) == 1 and len(masks) == 1:
                mask_files = next(iter(masks.values()))  # sessions named in rawdata only (or in derivatives only)
            if not mask_files:
                expected = der / sdir.name / ses / f"{nifti_stem(dwi).removesuffix('_dwi')}_msk.nii.gz"
                raise NiftiPairError(f"subject {subject}: DWI image {dwi} has no lesion mask; expected {expected}")
            adc_files = adcs.get(ses) or (next(iter(adcs.values())) if len(dwis) == 1 and len(adcs) == 1 else [])
            adc = _one(adc_files, "ADC", subject) if adc_files else None
            out.append(IslesFiles(subject, dwi, adc, _one(mask_files, "mask", subject)))
    return out


def find_valdo(root: Path) -> list[ValdoFiles]:
    """Every (T2*, microbleed mask) of a VALDO folder, sorted by subject. The skull-stripped ``desc-masked`` T2* is
    preferred when a subject also has an unmasked one."""
    if not root.is_dir():
        raise NiftiLayoutError(f"{root} is not a folder; expected the VALDO layout {VALDO_LAYOUT}")
    subjects = sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("sub-"))
    if not subjects:
        raise NiftiLayoutError(f"{root}: no sub-* folders; expected the VALDO layout {VALDO_LAYOUT}")
    out = []
    for sdir in subjects:
        s = sdir.name
        images = _nifti_files(sdir, "T2S")
        images = [p for p in images if "desc-masked" in p.name] or images
        masks = _nifti_files(sdir, "CMB")
        if not images:
            what = f"mask {masks[0]} has no T2* image" if masks else f"no T2* image in {sdir}"
            raise NiftiPairError(f"subject {s}: {what}; expected {sdir / f'{s}_space-T2S_desc-masked_T2S.nii.gz'}")
        image = _one(images, "T2* image", s)
        if not masks:
            raise NiftiPairError(
                f"subject {s}: T2* image {image} has no microbleed mask; expected {sdir / f'{s}_space-T2S_CMB.nii.gz'}"
            )
        out.append(ValdoFiles(s, image, _one(masks, "microbleed mask", s)))
    return out


# --------------------------------------------------------------------------------------------------------------------
# Reading


def load_isles(files: IslesFiles) -> IslesCase:
    dwi = load_canonical(files.dwi)
    mask = load_canonical(files.mask)
    check_same_grid(dwi, mask, "mask")
    adc = None
    if files.adc is not None:
        a = load_canonical(files.adc)
        check_same_grid(dwi, a, "ADC map")
        adc = a.pixels
    return IslesCase(files.subject, dwi.pixels, adc, mask.pixels > 0, dwi.spacing)


def bleed_centres(mask: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Microbleeds of a label mask: bool (z, y, x) -> (centroids float64 (N, 3) voxel (z, y, x), radii float32 (N,) mm).

    Components are 26-connected (a small bleed's voxels may touch only at corners); the radius is that of the sphere
    with the component's volume.
    """
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return np.zeros((0, 3), np.float64), np.zeros(0, np.float32)
    index = np.arange(1, n + 1)
    centres = np.asarray(ndimage.center_of_mass(mask, lab, index), np.float64).reshape(n, 3)
    volume_mm3 = np.bincount(lab.ravel(), minlength=n + 1)[1:] * float(np.prod(spacing))
    radii = np.cbrt(3.0 * volume_mm3 / (4.0 * np.pi)).astype(np.float32)
    return centres, radii


def load_valdo(files: ValdoFiles) -> ValdoCase:
    img = load_canonical(files.image)
    mask = load_canonical(files.mask)
    check_same_grid(img, mask, "microbleed mask")
    centres, radii = bleed_centres(mask.pixels > 0, img.spacing)
    return ValdoCase(files.subject, img.pixels, img.spacing, centres, radii)


# --------------------------------------------------------------------------------------------------------------------
# Splits


def split_subjects(subjects: Sequence[str], val_fraction: float) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(training, validation) subject ids; validation takes ``round(n * val_fraction)`` (at least one, never all)
    subjects spread evenly over the sorted ids, since datasets number their sites or cohorts in blocks (VALDO:
    1xx, 2xx, 3xx) and a block of the first ids would validate on one scanner only."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    ids = sorted(subjects)
    n = len(ids)
    if n < 2:
        raise NiftiLayoutError(f"need at least two subjects (one for validation), found {n}: {ids}")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    val_idx = {int((k + 0.5) * n / n_val) for k in range(n_val)}
    return tuple(s for i, s in enumerate(ids) if i not in val_idx), tuple(ids[i] for i in sorted(val_idx))


def isles_split(root: Path, val_fraction: float = 0.1) -> SubjectSplit[IslesCase]:
    files = {f.subject: f for f in find_isles(root)}
    train, val = split_subjects(list(files), val_fraction)
    with_adc = sum(f.adc is not None for f in files.values())
    log.info("ISLES'22 %s: %d subjects (%d with ADC), %d for validation", root, len(files), with_adc, len(val))
    return SubjectSplit(
        dataset="ISLES'22",
        root=root,
        content=(
            "DWI b=1000 trace images with the expert infarct masks of derivatives/ (mask > 0), reoriented to L,P,S "
            f"axes; {with_adc} of {len(files)} subjects also have an ADC map, read and grid-checked but not used (the "
            "segmenter takes DWI only)"
        ),
        train=train,
        val=val,
        load=lambda s: load_isles(files[s]),
    )


def valdo_split(root: Path, val_fraction: float = 0.1) -> SubjectSplit[ValdoCase]:
    files = {f.subject: f for f in find_valdo(root)}
    train, val = split_subjects(list(files), val_fraction)
    log.info("VALDO %s: %d subjects, %d for validation", root, len(files), len(val))
    return SubjectSplit(
        dataset="VALDO",
        root=root,
        content=(
            "T2*-weighted images (space-T2S, desc-masked when present) with the microbleed label masks (CMB > 0), "
            "reoriented to L,P,S axes; bleed centres are the centroids of the 26-connected mask components, radii "
            "those of equal-volume spheres"
        ),
        train=train,
        val=val,
        load=lambda s: load_valdo(files[s]),
    )
