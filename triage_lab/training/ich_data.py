"""In-memory slice datasets for the ich classifier: synthetic cache cases or RSNA 2019 DICOM + CSV."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from triage_lab.training.augment import AugmentConfig, augment
from triage_lab.training.synthdata import iter_cases
from triage_node.inference.slices import window_resize


@dataclass
class SliceSet:
    """``x`` uint8 (N, 3, S, S) windowed slices (x 255), ``y`` float32 (N, 6), ``case`` int64 (N,) case id per slice,
    ``prev``/``next`` int64 (N,) index of the neighbouring slice in the same case (itself at the ends)."""

    x: torch.Tensor
    y: torch.Tensor
    case: torch.Tensor
    prev: torch.Tensor
    next: torch.Tensor

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def inputs(self, idx: torch.Tensor, context: int = 0) -> torch.Tensor:
        """Float (n, 3 * (2 * context + 1), S, S) in [0, 1] for slice indices ``idx``."""
        parts = [self.x[idx]]
        lo, hi = idx, idx
        for _ in range(context):
            lo, hi = self.prev[lo], self.next[hi]
            parts += [self.x[lo], self.x[hi]]
        return torch.cat(parts, dim=1).float() / 255.0

    def to(self, device: str | torch.device) -> SliceSet:
        """The same set on ``device`` (a GPU holds a whole training set; batches are then cut and augmented there)."""
        return SliceSet(*(t.to(device) for t in (self.x, self.y, self.case, self.prev, self.next)))


def windowed_uint8(hu: np.ndarray, size: int) -> torch.Tensor:
    """HU slices (z, y, x) -> uint8 (z, 3, size, size): the three windows x 255, as a SliceSet stores them."""
    return (window_resize(hu, size) * 255.0).round().to(torch.uint8)


def from_volumes(volumes: Iterable[tuple[np.ndarray, np.ndarray]], size: int) -> SliceSet:
    """Build a SliceSet from (hu (z, y, x), labels bool (z, 6)) pairs."""
    return from_windowed((windowed_uint8(hu, size), labels) for hu, labels in volumes)


def from_windowed(items: Iterable[tuple[torch.Tensor, np.ndarray]]) -> SliceSet:
    """Build a SliceSet from (windowed uint8 (z, 3, S, S), labels bool (z, 6)) pairs, one pair per case."""
    xs, ys, cs, pv, nx = [], [], [], [], []
    offset = 0
    for cid, (w, labels) in enumerate(items):
        xs.append(w)
        ys.append(torch.from_numpy(np.asarray(labels, np.float32)))
        n = w.shape[0]
        cs.append(torch.full((n,), cid, dtype=torch.int64))
        i = torch.arange(n) + offset
        pv.append(torch.cat([i[:1], i[:-1]]))
        nx.append(torch.cat([i[1:], i[-1:]]))
        offset += n
    return SliceSet(torch.cat(xs), torch.cat(ys), torch.cat(cs), torch.cat(pv), torch.cat(nx))


def synthetic_slices(cache: Path, seeds: Sequence[int], size: int) -> SliceSet:
    return from_volumes(((c.hu, c.labels) for c in iter_cases(cache, seeds)), size)


def batches(
    data: SliceSet, batch_size: int, aug: AugmentConfig, context: int = 0
) -> Callable[[int, int | None, torch.Generator], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """The ``batches(epoch, size, generator)`` callable for :func:`triage_lab.training.loop.fit`."""

    def gen(epoch: int, size: int | None, g: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        perm = torch.randperm(len(data), generator=g)
        for i in range(0, len(perm) - batch_size + 1, batch_size):
            idx = perm[i : i + batch_size]
            x = data.inputs(idx, context)
            x, _ = augment(x, aug, g)
            if size is not None and size != x.shape[-1]:
                x = F.interpolate(x, size=(size, size), mode="area")
            yield x, data.y[idx]

    return gen
