"""The tissue labels of a head model's label map (``anatomy.HeadModel.labels``)."""

from __future__ import annotations

from enum import IntEnum


class Tissue(IntEnum):
    """Label values of :attr:`HeadModel.labels`."""

    OUTSIDE = 0
    BONE = 1
    BRAIN = 2
    CSF = 3  # extra-axial / sulcal / cisternal CSF
    VENTRICLE = 4
    SOFT = 5  # extracranial soft tissue


INTRACRANIAL = (Tissue.BRAIN, Tissue.CSF, Tissue.VENTRICLE)
