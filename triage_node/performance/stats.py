"""Pure statistics for the performance page: Wilson score intervals, PPV and sensitivity from verdict counts,
percentiles, and input-drift flags against a model card's ranges. No I/O."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Z95 = 1.959963984540054  # two-sided 95%


@dataclass(frozen=True)
class Proportion:
    """``k`` of ``n``, with its point estimate and Wilson score interval (None when ``n`` is 0)."""

    k: int
    n: int
    value: float | None
    low: float | None
    high: float | None

    def as_dict(self) -> dict[str, Any]:
        return {"k": self.k, "n": self.n, "value": self.value, "low": self.low, "high": self.high}


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion k/n (Wilson 1927); None when n is 0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at k = 0 and k = n, which is where a
    site's first weeks of verdicts are."""
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    if n == 0:
        return None
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    # exact at the ends (the formula leaves rounding dust there)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def proportion(k: int, n: int) -> Proportion:
    interval = wilson(k, n)
    if interval is None:
        return Proportion(k, n, None, None, None)
    return Proportion(k, n, k / n, interval[0], interval[1])


def ppv(agree: int, disagree: int) -> Proportion:
    """Positive predictive value of the flags the radiologists rated: agreed / (agreed + disagreed); ``unsure`` is
    left out of both."""
    return proportion(agree, agree + disagree)


def sensitivity(true_positives: int, missed: int) -> Proportion:
    """Sensitivity on audited negatives: flags confirmed (agree) / (confirmed + findings marked missed on studies the
    model did not flag). It only counts what someone audited: a study nobody marked is not a negative."""
    return proportion(true_positives, true_positives + missed)


def percentiles(values: Sequence[float], qs: Iterable[float] = (50, 90, 95)) -> dict[str, float | None]:
    """``{"p50": ..., ...}`` by linear interpolation between closest ranks (numpy's default); None when empty."""
    ordered = sorted(float(v) for v in values)
    out: dict[str, float | None] = {}
    for q in qs:
        key = f"p{q:g}"
        if not ordered:
            out[key] = None
            continue
        pos = (len(ordered) - 1) * q / 100.0
        lo, hi = math.floor(pos), math.ceil(pos)
        out[key] = ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
    return out


# ---- input drift ---------------------------------------------------------------------------------------------------

# The acquisition attributes a card may bound in ``input.ranges``: numeric ones as [low, high], categorical ones as a
# list of accepted values (matched case-insensitively, as a prefix: "SIEMENS" accepts "SIEMENS Healthineers").
NUMERIC = {
    "slice_thickness_mm": "slice thickness (mm)",
    "pixel_spacing_mm": "pixel spacing (mm)",
    "head_width_mm": "patient size: head width (mm)",
}
CATEGORICAL = {"manufacturer": "manufacturer", "kernel": "reconstruction kernel"}
ATTRIBUTES = {**CATEGORICAL, **NUMERIC}


@dataclass
class AttributeDrift:
    """One attribute of the recent series against the card's range. ``outside``: series outside the range;
    ``known``: series where the attribute was present; ``warning``: outside share above the threshold."""

    name: str
    title: str
    kind: str  # numeric | categorical
    expected: Any  # [low, high] or list of values; None when the card does not bound it
    known: int = 0
    missing: int = 0
    outside: int = 0
    fraction_outside: float | None = None
    warning: bool = False
    values: list[float] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    outside_values: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "title": self.title,
            "kind": self.kind,
            "expected": self.expected,
            "known": self.known,
            "missing": self.missing,
            "outside": self.outside,
            "fraction_outside": self.fraction_outside,
            "warning": self.warning,
        }
        if self.kind == "numeric":
            stats = percentiles(self.values, (0, 50, 100)) if self.values else {"p0": None, "p50": None, "p100": None}
            out.update(min=stats["p0"], median=stats["p50"], max=stats["p100"])
        else:
            out.update(counts=dict(sorted(self.counts.items(), key=lambda kv: -kv[1])),
                       outside_values=sorted(set(self.outside_values)))
        return out


def _accepted(value: str, allowed: Sequence[str]) -> bool:
    v = value.strip().upper()
    return any(v.startswith(str(a).strip().upper()) for a in allowed)


def drift_flags(
    series: Sequence[Mapping[str, Any]],
    ranges: Mapping[str, Any] | None,
    *,
    warn_fraction: float = 0.1,
    min_series: int = 3,
) -> list[AttributeDrift]:
    """Each attribute of ``series`` (dicts with the ATTRIBUTES keys, None when absent) against ``ranges`` (a card's
    ``input.ranges``). An attribute warns when at least ``min_series`` series carry it and more than
    ``warn_fraction`` of them fall outside its range; an attribute the card does not bound never warns but its
    distribution is still reported."""
    ranges = ranges or {}
    out: list[AttributeDrift] = []
    for name, title in ATTRIBUTES.items():
        expected = ranges.get(name)
        kind = "numeric" if name in NUMERIC else "categorical"
        if expected is not None:
            expected = [float(v) for v in expected] if kind == "numeric" else [str(v) for v in expected]
            if kind == "numeric" and (len(expected) != 2 or expected[0] > expected[1]):
                raise ValueError(f"range of {name} must be [low, high], got {expected}")
        d = AttributeDrift(name, title, kind, expected)
        counts: Counter[str] = Counter()
        for s in series:
            value = s.get(name)
            if value is None or value == "":
                d.missing += 1
                continue
            d.known += 1
            if kind == "numeric":
                x = float(value)
                d.values.append(x)
                if expected is not None and not (expected[0] <= x <= expected[1]):
                    d.outside += 1
            else:
                text = str(value)
                counts[text] += 1
                if expected is not None and not _accepted(text, expected):
                    d.outside += 1
                    d.outside_values.append(text)
        d.counts = dict(counts)
        if d.known and expected is not None:
            d.fraction_outside = d.outside / d.known
            d.warning = d.known >= min_series and d.fraction_outside > warn_fraction
        out.append(d)
    return out
