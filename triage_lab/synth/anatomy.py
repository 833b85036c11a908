"""Normal head models in Hounsfield units with a tissue label map, the canvas that lesions are painted on.

Two sources: the real head CT from ``invesalius-examples`` (labels derived by thresholds and morphology) and a
pseudo-CT built from the MNI152 template (see :mod:`triage_lab.synth.pseudoct`). Both are cached per process and
returned read-only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image

from triage_lab.synth.headct import axial_head_ct
from triage_lab.synth.pseudoct import mni_pseudo_ct
from triage_lab.synth.tissue import INTRACRANIAL, Tissue


@dataclass(frozen=True)
class HeadModel:
    """A normal head: ``hu`` float32 (z, y, x), ``labels`` uint8 (z, y, x) of :class:`Tissue`, ``spacing`` (z, y, x) mm.

    Arrays are oriented with z increasing towards the vertex and y increasing towards the back of the head
    (anterior at row 0), as in the invesalius CT.
    """

    name: str
    hu: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]

    def intracranial(self) -> np.ndarray:
        return np.isin(self.labels, [int(t) for t in INTRACRANIAL])

    def centre_mm(self) -> np.ndarray:
        """Centroid of the intracranial space in mm (z, y, x)."""
        idx = np.argwhere(self.intracranial())
        return idx.mean(axis=0) * np.asarray(self.spacing)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def label_head_ct(hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Tissue labels for a head CT by thresholds and morphology.

    ``hu``: (z, y, x) HU -> uint8 (z, y, x) of :class:`Tissue`. The intracranial space is the soft tissue enclosed by
    the skull on each axial slice (holes filled slice by slice), kept as its largest 3-D component.
    """
    bone = hu > 200
    # Thin temporal and occipital bone leaves gaps in the ring at this threshold. Fill the ring where it closes; where
    # it does not, take the convex hull of the largest bone component (the vault is convex in axial slices).
    filled = np.zeros_like(bone)
    for z in range(hu.shape[0]):
        f = ndimage.binary_fill_holes(bone[z])
        if (f & ~bone[z]).sum() * spacing[1] * spacing[2] < 2500.0 and bone[z].any():
            f = convex_hull_image(_largest_component(bone[z]))
        filled[z] = f
    inside = filled & ~bone & (hu > -40) & (hu < 100)
    inside = ndimage.binary_opening(inside, structure=np.ones((1, 3, 3), bool), iterations=2)
    inside = _largest_component(inside)
    labels = np.zeros(hu.shape, np.uint8)
    labels[(hu > -300) & (hu < 250)] = Tissue.SOFT
    labels[bone] = Tissue.BONE
    labels[inside] = Tissue.BRAIN
    smooth = ndimage.gaussian_filter(hu, sigma=(0.0, 1.0, 1.0))
    csf = inside & (smooth < 14)
    labels[csf] = Tissue.CSF
    depth = ndimage.distance_transform_edt(inside, sampling=spacing)
    vent = csf & (depth > 18.0)
    vent = ndimage.binary_opening(vent, iterations=1)
    lab, n = ndimage.label(vent)
    if n:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        keep = np.flatnonzero(sizes * float(np.prod(spacing)) > 400.0)  # ventricles are > 0.4 ml; drop sulcal specks
        vent = np.isin(lab, keep)
    labels[vent] = Tissue.VENTRICLE
    return labels


@functools.lru_cache(maxsize=1)
def invesalius_head() -> HeadModel:
    """The invesalius head CT with its tissue labels (raises HeadCTUnavailable when the package is missing)."""
    ct = axial_head_ct()
    hu = ct.hu.astype(np.float32)
    labels = label_head_ct(hu, ct.spacing)
    hu.setflags(write=False)
    labels.setflags(write=False)
    return HeadModel("invesalius", hu, labels, ct.spacing)


@functools.lru_cache(maxsize=1)
def mni_head() -> HeadModel:
    """A pseudo-CT built from the MNI152 template (offline, bundled with nilearn)."""
    hu, labels, spacing = mni_pseudo_ct()
    hu.setflags(write=False)
    labels.setflags(write=False)
    return HeadModel("mni", hu, labels, spacing)


def head_model(source: str) -> HeadModel:
    if source == "invesalius":
        return invesalius_head()
    if source == "mni":
        return mni_head()
    raise ValueError(f"source must be 'invesalius' or 'mni', got {source!r}")
