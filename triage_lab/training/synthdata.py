"""A disk cache of synthetic CT cases for training and evaluation.

Generating a case costs one to four seconds of CPU, so training reads cases generated once. The cache is derived from
GPL data (the invesalius head) and lives outside the repository (default ``~/.cache/triage-node/synth``).

Splits use disjoint seed ranges: training seeds start at 0, validation (early stopping, threshold choice) at 500 000,
held-out test at 900 000, and a second held-out test at 950 000 whose cases are also made with settings never used in
training: acquisitions drawn outside every training range and a stored-pixel encoding (unsigned, 12-bit, rescale
slope 0.5 or 2) drawn per case. Nothing generated from test seeds is ever used in training.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from triage_lab.synth.cases import CTCase, make_ct_case
from triage_lab.synth.hemorrhage import SUBTYPES

log = logging.getLogger(__name__)

SPLIT_SEED_BASE = {"train": 0, "val": 500_000, "test": 900_000, "test_shifted": 950_000}
DEFAULT_CACHE = Path(os.environ.get("TRIAGE_NODE_SYNTH_CACHE", Path.home() / ".cache" / "triage-node" / "synth-r2"))


@dataclass(frozen=True)
class CachedCase:
    """``hu`` int16 (z, y, x), ``lesions`` uint8 (z, y, x) bit i set for SUBTYPES[i], ``labels`` bool (z, 6)."""

    seed: int
    source: str
    hu: np.ndarray
    lesions: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]

    @property
    def hemorrhage(self) -> np.ndarray:
        return self.lesions > 0


def split_seeds(split: str, n: int) -> list[int]:
    if split not in SPLIT_SEED_BASE:
        raise ValueError(f"split must be one of {sorted(SPLIT_SEED_BASE)}, got {split!r}")
    return [SPLIT_SEED_BASE[split] + i for i in range(n)]


def source_for_seed(seed: int, mni_fraction: float = 0.4) -> str:
    """Deterministic head source per seed: about ``mni_fraction`` of seeds use the MNI pseudo-CT."""
    return "mni" if (seed * 2654435761 % 1000) / 1000.0 < mni_fraction else "invesalius"


def is_shifted(seed: int) -> bool:
    """Seeds of the ``test_shifted`` split: generated with settings never used in training."""
    return seed >= SPLIT_SEED_BASE["test_shifted"]


def case_path(cache: Path, seed: int) -> Path:
    return cache / f"case_{seed:07d}.npz"


def generate(cache: Path, seeds: Sequence[int], progress: bool = True) -> None:
    """Generate and store the cases for ``seeds`` that are not yet in ``cache`` (atomic writes)."""
    from tqdm import tqdm

    cache.mkdir(parents=True, exist_ok=True)
    todo = [s for s in seeds if not case_path(cache, s).exists()]
    for seed in tqdm(todo, desc="synth cases", disable=not progress):
        if is_shifted(seed):  # the legacy rendering outside its own ranges (the 1.x models' shifted split)
            case = make_ct_case(seed, source=source_for_seed(seed), vary_storage=True, shifted=True, profile="legacy")
        else:
            case = make_ct_case(seed, source=source_for_seed(seed), matrix=None)
        write_case(cache, seed, case)


def write_case(cache: Path, seed: int, case: CTCase) -> None:
    """Store ``case`` under ``seed`` (atomic): HU, the subtype masks as one bit each, labels, spacing, source."""
    lesions = np.zeros(case.hu.shape, np.uint8)
    for name, m in case.masks.items():
        lesions |= (m.astype(np.uint8) << SUBTYPES.index(name)).astype(np.uint8)
    tmp = case_path(cache, seed).with_suffix(".tmp.npz")
    np.savez(
        tmp,
        hu=case.hu,
        lesions=lesions,
        labels=case.labels,
        spacing=np.asarray(case.spacing),
        source=np.asarray(case.source),
    )
    os.replace(tmp, case_path(cache, seed))


def load(cache: Path, seed: int) -> CachedCase:
    with np.load(case_path(cache, seed)) as z:
        return CachedCase(
            seed=seed,
            source=str(z["source"]),
            hu=z["hu"],
            lesions=z["lesions"],
            labels=z["labels"].astype(bool),
            spacing=tuple(float(v) for v in z["spacing"]),  # type: ignore[arg-type]
        )


def iter_cases(cache: Path, seeds: Sequence[int]) -> Iterator[CachedCase]:
    for s in seeds:
        yield load(cache, s)




def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Generate the synthetic CT case cache")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--split", choices=sorted(SPLIT_SEED_BASE), default="train")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--start", type=int, default=0, help="offset into the split's seed range")
    a = p.parse_args(argv)
    seeds = [s + a.start for s in split_seeds(a.split, a.n)]
    generate(a.cache, seeds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
