"""A pseudo-CT head from the MNI152 T1 template: brain HU from T1 intensity, then CSF, skull and scalp shells."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from triage_lab.synth.tissue import Tissue


def mni_pseudo_ct() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Build the pseudo-CT.

    Returns ``hu`` float32 (z, y, x), ``labels`` uint8 (z, y, x) of :class:`Tissue` and spacing (1, 1, 1) mm, oriented
    like the invesalius CT: z towards the vertex, anterior at row 0.
    """
    from nilearn import datasets

    t1 = np.asarray(datasets.load_mni152_template(resolution=1).get_fdata(), np.float32)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).get_fdata()) > 0.5
    # NIfTI RAS voxel order (x, y, z) -> (z, y, x) with anterior first.
    t1 = np.ascontiguousarray(t1.transpose(2, 1, 0)[:, ::-1, :])
    brain = np.ascontiguousarray(brain.transpose(2, 1, 0)[:, ::-1, :])
    brain = ndimage.binary_fill_holes(brain)

    # T1 is dark for CSF, mid for grey matter, bright for white matter; CT has grey brighter than white.
    brain_hu = np.interp(t1, [0.0, 0.3, 0.45, 0.62, 0.75, 0.9, 1.0], [2, 6, 22, 37, 33, 27, 26]).astype(np.float32)
    out_dist = ndimage.distance_transform_edt(~brain)
    in_dist = ndimage.distance_transform_edt(brain)

    hu = np.full(t1.shape, -1000.0, np.float32)
    labels = np.zeros(t1.shape, np.uint8)
    csf_shell = out_dist <= 2.5
    bone_shell = (out_dist > 2.5) & (out_dist <= 9.0)
    scalp = (out_dist > 9.0) & (out_dist <= 14.0)
    hu[scalp] = 35.0
    labels[scalp] = Tissue.SOFT
    # Cortical tables dense, diploe in between less so.
    mid = np.abs(out_dist - 5.75) / 3.25
    hu[bone_shell] = (650.0 + 900.0 * mid[bone_shell] ** 2).astype(np.float32)
    labels[bone_shell] = Tissue.BONE
    hu[csf_shell & ~brain] = 6.0
    labels[csf_shell & ~brain] = Tissue.CSF
    hu[brain] = brain_hu[brain]
    labels[brain] = Tissue.BRAIN
    csf_in = brain & (t1 < 0.4)
    labels[csf_in] = Tissue.CSF
    vent = csf_in & (in_dist > 12.0)
    vent = ndimage.binary_opening(vent, iterations=1)
    lab, n = ndimage.label(vent)
    if n:
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        vent = np.isin(lab, np.flatnonzero(sizes > 400))
    labels[vent] = Tissue.VENTRICLE
    return hu, labels, (1.0, 1.0, 1.0)
