from __future__ import annotations

from pydicom.dataset import Dataset

from triage_node.config import Match, Pipeline, RoutingRule, Series
from triage_node.series.routing import SeriesAttributes, describe, matches, route


def ds(**kw: object) -> Dataset:
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def test_default_rules_route_ct_head_swi_and_dwi() -> None:
    rules = Series().rules
    ct = SeriesAttributes.from_datasets([ds(Modality="CT", BodyPartExamined="HEAD", ImageType=["ORIGINAL", "PRIMARY"])])
    swi = SeriesAttributes.from_datasets([ds(Modality="MR", SeriesDescription="SWI_Images")])
    dwi = SeriesAttributes.from_datasets([ds(Modality="MR", SeriesDescription="ep2d_diff_b1000_TRACE")])
    adc = SeriesAttributes.from_datasets(
        [ds(Modality="MR", SeriesDescription="ep2d_diff ADC", ImageType=["DERIVED", "ADC"])]
    )
    scout = SeriesAttributes.from_datasets(
        [ds(Modality="CT", BodyPartExamined="HEAD", ImageType=["ORIGINAL", "LOCALIZER"])]
    )
    assert route(rules, ct).pipeline == Pipeline.CT_HEAD  # type: ignore[union-attr]
    assert route(rules, swi).pipeline == Pipeline.MR_SWI  # type: ignore[union-attr]
    assert route(rules, dwi).pipeline == Pipeline.MR_DWI  # type: ignore[union-attr]
    assert route(rules, adc) is None
    assert route(rules, scout) is None


def test_conditions_all_must_hold_and_patterns_ignore_case() -> None:
    m = Match(modality=("CT",), study_description="head", image_type_contains=("AXIAL",))
    assert matches(
        m, SeriesAttributes(modality="ct", study_description="CT HEAD W/O", image_type=("ORIGINAL", "AXIAL"))
    )
    assert not matches(m, SeriesAttributes(modality="CT", study_description="CT HEAD", image_type=("ORIGINAL",)))
    assert not matches(m, SeriesAttributes(modality="MR", study_description="HEAD", image_type=("AXIAL",)))


def test_b_value_from_standard_and_vendor_tags() -> None:
    std = ds(Modality="MR")
    std.add_new((0x0018, 0x9087), "FD", 1000.0)
    ge = ds(Modality="MR")
    ge.add_new((0x0043, 0x1039), "IS", [1000000000 + 1000, 8, 0, 0])
    b0 = ds(Modality="MR")
    b0.add_new((0x0018, 0x9087), "FD", 0.0)
    attrs = SeriesAttributes.from_datasets([b0, std, ge])
    assert attrs.b_values == (0.0, 1000.0)
    rule = RoutingRule(name="dwi", pipeline=Pipeline.MR_DWI, match=Match(modality=("MR",), min_b_value=800))
    assert route((rule,), attrs) == rule
    assert route((rule,), SeriesAttributes.from_datasets([b0])) is None


def test_describe_is_phi_free_summary() -> None:
    attrs = SeriesAttributes.from_datasets([ds(Modality="MR", SeriesDescription="PD FS", PatientName="DOE^JANE")])
    text = describe(attrs)
    assert "modality=MR" in text and "PD FS" in text and "DOE" not in text
