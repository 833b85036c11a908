"""Whole synthetic head-CT cases with hemorrhage masks and per-slice labels, deterministic per seed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from triage_lab.synth.acquisition import Acquisition, acquire, draw_acquisition, resample_head
from triage_lab.synth.anatomy import head_model
from triage_lab.synth.hemorrhage import SUBTYPES, Canvas, draw_lesion, paint_blood
from triage_lab.synth.storage import Storage, draw_storage, round_trip

CLASSES: tuple[str, ...] = ("any_hemorrhage", *SUBTYPES)
MIN_SLICE_AREA_MM2 = 12.0  # a subtype counts on a slice only when it covers at least this much of it


@dataclass(frozen=True)
class CTCase:
    """A synthetic head CT.

    ``hu``: int16 (z, y, x) Hounsfield units. ``spacing``: (z, y, x) mm. ``masks``: subtype -> bool (z, y, x) for the
    subtypes drawn. ``labels``: bool (z, 6), columns in :data:`CLASSES` order (``any_hemorrhage`` first).
    ``tissue``: uint8 (z, y, x) :class:`~triage_lab.synth.tissue.Tissue` labels of the normal head.
    ``storage``: the storage whose quantisation ``hu`` went through (``vary_storage``), else None.
    """

    seed: int
    source: str
    hu: np.ndarray
    spacing: tuple[float, float, float]
    masks: dict[str, np.ndarray]
    labels: np.ndarray
    tissue: np.ndarray
    acquisition: Acquisition
    storage: Storage | None = None
    mimics: tuple[str, ...] = ()

    @property
    def hemorrhage(self) -> np.ndarray:
        """Union of all subtype masks, bool (z, y, x)."""
        out = np.zeros(self.hu.shape, bool)
        for m in self.masks.values():
            out |= m
        return out

    @property
    def positive(self) -> bool:
        return bool(self.labels[:, 0].any())


def slice_labels(
    masks: dict[str, np.ndarray], shape: tuple[int, ...], spacing: tuple[float, float, float]
) -> np.ndarray:
    """bool (z, 6) per-slice labels in :data:`CLASSES` order from subtype masks."""
    labels = np.zeros((shape[0], len(CLASSES)), bool)
    px_mm2 = spacing[1] * spacing[2]
    for name, m in masks.items():
        labels[:, CLASSES.index(name)] = m.sum(axis=(1, 2)) * px_mm2 >= MIN_SLICE_AREA_MM2
    labels[:, 0] = labels[:, 1:].any(axis=1)
    return labels


PROFILES = ("randomised", "legacy")
P_NEGATIVE = {"randomised": 0.45, "legacy": 0.25}  # randomised: at least 40% normal heads, full of mimics


def draw_subtypes(rng: np.random.Generator, p_negative: float = 0.25) -> tuple[str, ...]:
    if rng.random() < p_negative:
        return ()
    k = int(rng.choice([1, 1, 1, 2, 2, 3]))
    return tuple(sorted(rng.choice(SUBTYPES, size=k, replace=False).tolist()))


def make_ct_case(
    seed: int,
    subtypes: Sequence[str] | None = None,
    source: str = "invesalius",
    n_slices: int | None = None,
    matrix: int | None = 256,
    vary_storage: bool = False,
    shifted: bool = False,
    profile: str = "randomised",
) -> CTCase:
    """Generate one synthetic head CT.

    ``subtypes``: the hemorrhage subtypes to draw (one lesion each); ``()`` gives a negative case and ``None`` draws
    them at random (a quarter negative). ``source``: ``"invesalius"`` (the real head CT) or ``"mni"`` (pseudo-CT from
    MNI152). ``n_slices`` fixes the slice count. ``vary_storage`` passes the HU through the quantisation of a
    storage kind drawn from the seed (``storage.draw_storage``: slope 2 keeps even HU only); off by default, so the
    cached training data stay what the shipped models were trained on, and everything else in the case is the same
    either way. ``shifted`` draws the acquisition outside every training range (``augment.draw_acquisition``). The
    same arguments always give the same case.

    ``profile``: ``randomised`` (default; :mod:`triage_lab.synth.randomise`: every appearance and acquisition
    parameter drawn per case, mimics in every head, storage always drawn, 45% normal when ``subtypes`` is None;
    ``matrix`` None draws 256 or 512) or ``legacy`` (the narrower 1.x rendering, with ``shifted`` and
    ``vary_storage`` as described above).
    """
    for s in subtypes or ():
        if s not in SUBTYPES:
            raise ValueError(f"subtypes must be drawn from {SUBTYPES}, got {s!r}")
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {profile!r}")
    if profile == "randomised":
        return _randomised_case(seed, subtypes, source, n_slices, matrix)
    rng = np.random.default_rng([seed, 0x1C4])
    head = head_model(source)
    if subtypes is None:
        subtypes = draw_subtypes(rng)
    acq = draw_acquisition(rng, matrix=matrix or 256, shifted=shifted)
    hu, tissue, spacing = resample_head(head, acq, rng, n_slices=n_slices)
    masks: dict[str, np.ndarray] = {}
    if subtypes:
        canvas = Canvas.from_labels(tissue, spacing)
        for name in subtypes:
            m = draw_lesion(name, canvas, rng)
            hu = paint_blood(hu, m, rng, name)
            masks[name] = m
    labels = slice_labels(masks, hu.shape, spacing)
    stored = acquire(hu, acq, rng)
    storage = None
    if vary_storage:
        storage = draw_storage(seed)
        # Every kind holds the case's -1024..3071 HU; what remains is the stored step, rounded back to integer HU.
        stored = np.clip(np.rint(round_trip(stored, storage)), -1024, 3071).astype(np.int16)
    return CTCase(seed, source, stored, spacing, masks, labels, tissue, acq, storage)


def _randomised_case(
    seed: int, subtypes: Sequence[str] | None, source: str, n_slices: int | None, matrix: int | None
) -> CTCase:
    from triage_lab.synth.randomise import render

    rng = np.random.default_rng([seed, 0x1C5])
    if subtypes is None:
        subtypes = draw_subtypes(rng, P_NEGATIVE["randomised"])
    hu, tissue, masks, spacing, acq, mimics = render(seed, tuple(subtypes), source, matrix, n_slices)
    masks = {k: v for k, v in masks.items() if v.any()}
    labels = slice_labels(masks, hu.shape, spacing)
    storage = draw_storage(seed)
    stored = np.clip(np.rint(round_trip(np.clip(hu, -1024, 3071), storage)), -1024, 3071).astype(np.int16)
    return CTCase(seed, source, stored, spacing, masks, labels, tissue, acq, storage, mimics)
