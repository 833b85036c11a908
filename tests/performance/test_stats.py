"""The statistics behind /performance: Wilson intervals, PPV and sensitivity on audited negatives, percentiles, and
the drift flags against a model card's ranges."""

from __future__ import annotations

import math

import pytest

from triage_node.performance.stats import drift_flags, percentiles, ppv, proportion, sensitivity, wilson


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Reference values (Newcombe 1998, Table I; and statsmodels proportion_confint(method="wilson")).
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
        (29, 29, 0.8830, 1.0),
        (1, 1, 0.2065, 1.0),
        (5, 10, 0.2366, 0.7634),
    ],
)
def test_wilson_matches_published_values(k: int, n: int, low: float, high: float) -> None:
    got = wilson(k, n)
    assert got is not None
    assert got[0] == pytest.approx(low, abs=6e-5) and got[1] == pytest.approx(high, abs=6e-5)


def test_wilson_properties() -> None:
    assert wilson(0, 0) is None
    with pytest.raises(ValueError):
        wilson(3, 2)
    for n in (1, 7, 50, 1000):
        for k in range(0, n + 1, max(1, n // 7)):
            lo, hi = wilson(k, n) or (math.nan, math.nan)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
            lo2, hi2 = wilson(n - k, n) or (math.nan, math.nan)
            assert lo2 == pytest.approx(1 - hi) and hi2 == pytest.approx(1 - lo)  # symmetric
    # narrower with more data at the same proportion
    assert (lambda a, b: a[1] - a[0] > b[1] - b[0])(wilson(5, 10), wilson(500, 1000))


def test_ppv_leaves_unsure_out_and_sensitivity_counts_only_audited_negatives() -> None:
    p = ppv(agree=6, disagree=2)
    assert (p.k, p.n, p.value) == (6, 8, 0.75)
    assert (p.low, p.high) == wilson(6, 8)
    # 6 confirmed flags, 2 findings marked missed on unflagged series: 6 / 8; unaudited studies do not count
    s = sensitivity(true_positives=6, missed=2)
    assert (s.k, s.n, s.value) == (6, 8, 0.75)
    assert sensitivity(0, 0).value is None and proportion(0, 0).low is None
    assert sensitivity(3, 0).value == 1.0 and sensitivity(3, 0).low == pytest.approx(0.4385, abs=1e-4)


def test_percentiles_interpolate_like_numpy() -> None:
    import numpy as np

    values = [0.8, 4.0, 1.2, 2.5, 9.0, 3.3, 1.1]
    got = percentiles(values, (0, 50, 90, 95, 100))
    for q in (0, 50, 90, 95, 100):
        assert got[f"p{q}"] == pytest.approx(float(np.percentile(values, q)))
    assert percentiles([], (50,)) == {"p50": None}


RANGES = {
    "manufacturer": ["SIEMENS", "GE MEDICAL SYSTEMS"],
    "kernel": ["H", "STANDARD"],
    "slice_thickness_mm": [0.6, 5.0],
    "pixel_spacing_mm": [0.35, 1.0],
    "head_width_mm": [120, 170],
}


def series(**kw: object) -> dict[str, object]:
    base = {"manufacturer": "SIEMENS Healthineers", "kernel": "Hr38", "slice_thickness_mm": 5.0,
            "pixel_spacing_mm": 0.45, "head_width_mm": 145.0}
    return {**base, **kw}


def test_drift_flags_warn_only_when_enough_recent_series_fall_outside() -> None:
    inside = [series() for _ in range(8)]
    flags = {d.name: d for d in drift_flags(inside, RANGES)}
    assert not any(d.warning for d in flags.values())
    assert flags["manufacturer"].fraction_outside == 0.0  # prefix match: "SIEMENS Healthineers" is a SIEMENS

    # 3 of 11 series with 8 mm slices, a new vendor on 1 of 11, a child's head on 1 of 11
    mixed = inside + [series(slice_thickness_mm=8.0, manufacturer="CANON")] + [series(slice_thickness_mm=8.0)] * 2
    mixed[0] = series(head_width_mm=95.0)
    flags = {d.name: d for d in drift_flags(mixed, RANGES, warn_fraction=0.1, min_series=3)}
    thick = flags["slice_thickness_mm"]
    assert (thick.outside, thick.known, thick.warning) == (3, 11, True)
    assert thick.fraction_outside == pytest.approx(3 / 11)
    assert (flags["manufacturer"].outside, flags["manufacturer"].warning) == (1, False)  # 1/11 is not > 10%
    assert flags["manufacturer"].as_dict()["outside_values"] == ["CANON"]
    assert (flags["head_width_mm"].outside, flags["head_width_mm"].warning) == (1, False)
    assert flags["head_width_mm"].as_dict()["min"] == 95.0


def test_drift_flags_need_a_minimum_of_series_and_ignore_missing_values() -> None:
    two = [series(pixel_spacing_mm=1.4), series(pixel_spacing_mm=1.5)]
    flags = {d.name: d for d in drift_flags(two, RANGES, min_series=3)}
    assert flags["pixel_spacing_mm"].fraction_outside == 1.0 and not flags["pixel_spacing_mm"].warning
    flags = {d.name: d for d in drift_flags(two, RANGES, min_series=2)}
    assert flags["pixel_spacing_mm"].warning
    no_kernel = [series(kernel=None) for _ in range(5)]
    k = {d.name: d for d in drift_flags(no_kernel, RANGES)}["kernel"]
    assert (k.known, k.missing, k.outside, k.warning, k.fraction_outside) == (0, 5, 0, False, None)


def test_attributes_without_a_card_range_are_reported_but_never_warn() -> None:
    odd = [series(slice_thickness_mm=10.0) for _ in range(6)]
    flags = {d.name: d for d in drift_flags(odd, None)}
    assert not any(d.warning for d in flags.values())
    assert flags["slice_thickness_mm"].as_dict()["median"] == 10.0
    with pytest.raises(ValueError):
        drift_flags(odd, {"slice_thickness_mm": [5.0, 1.0]})
