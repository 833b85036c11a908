"""The masks file: the analysed volume's lesion masks and heat maps a job leaves in its results folder, for the
key images and the viewer. This module alone knows its format.

``masks.npz`` holds ``sop_instance_uids`` (str, the analysed volume's z order) and one array per layer, keyed
``[shadow__]mask__<label>`` (bool (z, y, x)) or ``[shadow__]heatmap__<label>`` (uint8 (z, y, x), 0-255 for 0-1);
``shadow__`` marks a shadow-mode model's layer (the viewer shows it apart, key images never).
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from triage_node.inference.types import ModelOutput

FILE_NAME = "masks.npz"
_UIDS = "sop_instance_uids"
_SHADOW = "shadow__"

Kind = Literal["mask", "heatmap"]


class MasksError(Exception):
    """The masks file cannot be read."""


def masks_path(results_dir: str | os.PathLike[str]) -> Path:
    """The masks file in a job's results folder."""
    return Path(results_dir) / FILE_NAME


@dataclass(frozen=True)
class Layer:
    """One stored array: a mask or a heat map of one label, from a live or a shadow model."""

    kind: Kind
    label: str
    shadow: bool = False

    @property
    def key(self) -> str:
        return f"{_SHADOW if self.shadow else ''}{self.kind}__{self.label}"

    @classmethod
    def from_key(cls, key: str) -> Layer | None:
        """The layer a key names; None for the UID array."""
        shadow = key.startswith(_SHADOW)
        kind, sep, label = key.removeprefix(_SHADOW).partition("__")
        if not sep or kind not in ("mask", "heatmap"):
            return None
        return cls("mask" if kind == "mask" else "heatmap", label, shadow)


def save_masks(
    path: Path, uids: Sequence[str], outputs: Sequence[ModelOutput], shadow: Collection[str] = ()
) -> None:
    """Write the outputs' masks and heat maps (models in ``shadow`` marked so) atomically to ``path``."""
    arrays: dict[str, np.ndarray] = {_UIDS: np.asarray(uids)}
    for out in outputs:
        in_shadow = out.model in shadow
        for label, mask in out.masks.items():
            arrays[Layer("mask", label, in_shadow).key] = np.asarray(mask, dtype=bool)
        for label, heat in out.heatmaps.items():
            arrays[Layer("heatmap", label, in_shadow).key] = np.clip(np.asarray(heat) * 255.0, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **arrays)  # type: ignore[arg-type]
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class Masks:
    """An open masks file: the analysed UIDs and the layers, each read when asked for."""

    def __init__(self, npz: np.lib.npyio.NpzFile):
        self._npz = npz
        self.uids = [str(u) for u in npz[_UIDS]]

    def layers(self, kind: Kind, *, shadow: bool | None = False) -> Iterator[tuple[Layer, np.ndarray]]:
        """The layers of ``kind`` (live ones; shadow ones with ``shadow=True``; both with None), bool masks or uint8
        heat maps."""
        for key in self._npz.files:
            layer = Layer.from_key(key)
            if layer is None or layer.kind != kind or (shadow is not None and layer.shadow != shadow):
                continue
            arr = self._npz[key]
            yield layer, np.asarray(arr, dtype=bool if kind == "mask" else np.uint8)


@contextmanager
def open_masks(path: Path) -> Iterator[Masks]:
    """Open a masks file; raises MasksError when it cannot be read (also for errors while reading its layers)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            yield Masks(npz)
    except (OSError, KeyError, ValueError, IndexError, zipfile.BadZipFile) as exc:
        raise MasksError(f"cannot read masks file {path.name}: {exc}") from exc
