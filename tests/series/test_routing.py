from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from triage_node.config import Match, Pipeline, RoutingRule, Series, load_config
from triage_node.series.diffusion import select_dwi
from triage_node.series.routing import ImageKind, SeriesAttributes, describe, matches, route, select_images

ROOT = Path(__file__).resolve().parents[2]
RULES = Series().rules


def ds(**kw: object) -> Dataset:
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def routed(datasets: list[Dataset], rules: tuple[RoutingRule, ...] = RULES) -> Pipeline | None:
    """What the daemon does with a completed series (pipeline._process): attributes from every header, first rule."""
    rule = route(rules, SeriesAttributes.from_datasets(datasets))
    return None if rule is None else rule.pipeline


# --- vendor-style headers ------------------------------------------------------------------------------------------


def mr_images(manufacturer: str, description: str, image_type: str, n: int, **extra: object) -> list[Dataset]:
    """``n`` MR headers of one series, 5 mm apart; ``extra`` are further attributes."""
    return [
        ds(Modality="MR", Manufacturer=manufacturer, SeriesDescription=description,
           ImageType=image_type.split("\\"), ImagePositionPatient=[0, 0, 5.0 * i], **extra)
        for i in range(n)
    ]  # fmt: skip


def siemens(description: str, sequence: str, image_type: str, b: int | None = None, n: int = 3) -> list[Dataset]:
    out = mr_images("SIEMENS", description, image_type, n, ProtocolName=description.split("_Images")[0],
                    SequenceName=sequence, ScanningSequence="EP" if sequence.startswith("*ep") else "GR")  # fmt: skip
    for d in out:
        if b is not None:
            d.add_new((0x0019, 0x0010), "LO", "SIEMENS CSA HEADER")
            d.add_new((0x0019, 0x100C), "IS", b)
    return out


def ge(description: str, image_type: str = "ORIGINAL\\PRIMARY\\OTHER", ge_type: int | None = None,
       b: int | None = None, n: int = 3) -> list[Dataset]:  # fmt: skip
    out = mr_images("GE MEDICAL SYSTEMS", description, image_type, n)
    for d in out:
        d.add_new((0x0043, 0x0010), "LO", "GEMS_PARM_01")
        if ge_type is not None:
            d.add_new((0x0043, 0x102F), "SS", ge_type)
        if b is not None:
            d.add_new((0x0043, 0x1039), "IS", [1_000_000_000 + b, 8, 0, 0])
    return out


def philips(description: str, image_type: str, b: float | None = None, n: int = 3) -> list[Dataset]:
    out = mr_images("Philips Medical Systems", description, image_type, n)
    for d in out:
        if b is not None:
            d.add_new((0x2001, 0x0010), "LO", "Philips Imaging DD 001")
            d.add_new((0x2001, 0x1003), "FL", b)
    return out


SIEMENS_DWI_TRACE = siemens("ep2d_diff_3scan_trace_p2_TRACEW", "*ep_b0", "ORIGINAL\\PRIMARY\\DIFFUSION\\NONE\\ND\\NORM",
                            b=0) + siemens("ep2d_diff_3scan_trace_p2_TRACEW", "*ep_b1000t",
                                           "ORIGINAL\\PRIMARY\\DIFFUSION\\TRACEW\\ND\\NORM", b=1000)  # fmt: skip

CASES: dict[str, tuple[list[Dataset], Pipeline | None]] = {
    # Siemens SWI comes as four series from one acquisition; the magnitude ones feed the cmb model.
    "siemens SWI_Images": (siemens("SWI_Images", "*swi3d1r", "ORIGINAL\\PRIMARY\\M\\SWI\\ND\\NORM"), Pipeline.MR_SWI),
    "siemens Mag_Images": (siemens("Mag_Images", "*swi3d1r", "ORIGINAL\\PRIMARY\\M\\ND\\NORM"), Pipeline.MR_SWI),
    "siemens Pha_Images": (siemens("Pha_Images", "*swi3d1r", "ORIGINAL\\PRIMARY\\P\\ND"), None),
    "siemens mIP_Images(SW)": (siemens("mIP_Images(SW)", "*swi3d1r", "ORIGINAL\\PRIMARY\\MNIP\\ND\\NORM"), None),
    "siemens t2_fl2d_tra (GRE T2*)": (
        siemens("t2_fl2d_tra", "*fl2d1r3", "ORIGINAL\\PRIMARY\\M\\ND\\NORM"),
        Pipeline.MR_SWI,
    ),  # fmt: skip
    "siemens t1_fl2d_tra (T1 GRE)": (siemens("t1_fl2d_tra", "*fl2d1", "ORIGINAL\\PRIMARY\\M\\ND\\NORM"), None),
    "siemens tof_fl3d_tra": (siemens("tof_fl3d_tra_p3", "*fl3d1r_t70", "ORIGINAL\\PRIMARY\\M\\ND\\NORM"), None),
    "siemens DWI TRACEW b0+b1000": (SIEMENS_DWI_TRACE, Pipeline.MR_DWI),
    "siemens ADC": (
        siemens("ep2d_diff_3scan_trace_p2_ADC", "*ep_b0_1000", "DERIVED\\PRIMARY\\DIFFUSION\\ADC\\ND\\NORM"),
        None,
    ),  # fmt: skip
    "siemens FA": (
        siemens("ep2d_diff_mddw_20_p2_FA", "*ep_b0_1000", "DERIVED\\PRIMARY\\DIFFUSION\\FA\\ND\\NORM"),
        None,
    ),  # fmt: skip
    # GE says magnitude / phase in its private image type (0043,102F), not in ImageType.
    "ge SWAN magnitude": (ge("Ax SWAN", ge_type=0), Pipeline.MR_SWI),
    "ge SWAN phase": (ge("Ax SWAN", ge_type=1), None),
    "ge SWAN minIP reformat": (ge("Ax SWAN MinIP", "DERIVED\\SECONDARY\\REFORMATTED\\AVERAGE"), None),
    "ge T2* GRE": (ge("Ax T2* GRE"), Pipeline.MR_SWI),
    "ge DWI b0+b1000": (ge("Ax DWI 1000b", b=0) + ge("Ax DWI 1000b", b=1000), Pipeline.MR_DWI),
    # GE's ADC keeps the source b-value: only the description tells it apart.
    "ge ADC map": (ge("ADC (10^-6 mm²/s):Jan 01 2026", "DERIVED\\PRIMARY\\OTHER", b=1000), None),
    "ge exponential ADC": (ge("Exponential Apparent Diffusion Coefficient", "DERIVED\\PRIMARY\\OTHER", b=1000), None),
    # Philips
    "philips T2*W_FFE": (philips("T2*W_FFE", "ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE"), Pipeline.MR_SWI),
    "philips SWIp phase only": (philips("SWIp", "ORIGINAL\\PRIMARY\\PHASE MAP\\P\\FFE"), None),
    "philips SWIp mIP": (philips("SWIp_mIP", "DERIVED\\PRIMARY\\MNIP\\M\\FFE"), None),
    "philips 3D T1 FFE": (philips("sT1W_3D_FFE", "ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE"), None),
    "philips DWI b1000 (b-value only)": (
        philips("Neuro 3 ax", "ORIGINAL\\PRIMARY\\M_SE\\M\\SE", b=1000.0),
        Pipeline.MR_DWI,
    ),  # fmt: skip
    "philips dADC": (philips("dADC", "DERIVED\\PRIMARY\\ADC\\ADC"), None),
    "philips eADC": (philips("eADC", "DERIVED\\PRIMARY\\EADC\\EADC"), None),
    "philips b0 only": (philips("Neuro 3 ax", "ORIGINAL\\PRIMARY\\M_SE\\M\\SE", b=0.0), None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_default_rules_route_vendor_series(name: str) -> None:
    datasets, expected = CASES[name]
    assert routed(datasets) == expected


def test_each_dwi_and_swi_signal_routes_on_its_own() -> None:
    """Every kind of evidence is enough without a telling description."""
    bland = {"Modality": "MR", "SeriesDescription": "Neuro 7"}
    std_b = ds(**bland, ImageType=["ORIGINAL", "PRIMARY", "OTHER"])
    std_b.add_new((0x0018, 0x9087), "FD", 1000.0)
    assert routed([std_b]) == Pipeline.MR_DWI
    assert routed([ds(**bland, SequenceName="*ep_b1000t", ImageType=["ORIGINAL", "PRIMARY"])]) == Pipeline.MR_DWI
    assert routed([ds(**bland, ImageType=["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"])]) == Pipeline.MR_DWI
    assert routed([ds(**bland, ImageType=["ORIGINAL", "PRIMARY", "M", "SWI"])]) == Pipeline.MR_SWI
    assert routed([ds(**bland, SequenceName="*swi3d1r", ImageType=["ORIGINAL", "PRIMARY", "M"])]) == Pipeline.MR_SWI
    enhanced = ds(**bland, ImageType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], AcquisitionContrast="T2_STAR")
    assert routed([enhanced]) == Pipeline.MR_SWI
    enhanced_phase = ds(**bland, ImageType=["ORIGINAL", "PRIMARY", "VOLUME", "NONE"], AcquisitionContrast="T2_STAR")
    enhanced_phase.ComplexImageComponent = "PHASE"
    assert routed([enhanced_phase]) is None
    assert routed([ds(**bland, ImageType=["ORIGINAL", "PRIMARY", "M"])]) is None  # nothing says SWI or DWI


def test_mixed_series_route_and_keep_only_the_images_the_model_reads() -> None:
    # Philips SWIp: magnitude and phase interleaved in one series.
    swip = [
        d
        for z in range(3)
        for d in (
            *philips("SWIp", "ORIGINAL\\PRIMARY\\M_FFE\\M\\FFE", n=1),
            *philips("SWIp", "ORIGINAL\\PRIMARY\\PHASE MAP\\P\\FFE", n=1),
        )
    ]
    attrs = SeriesAttributes.from_datasets(swip)
    rule = route(RULES, attrs)
    assert rule is not None and rule.pipeline == Pipeline.MR_SWI
    kept = select_images(rule.match, attrs, swip)
    assert len(kept) == 3 and all("P" not in d.ImageType for d in kept)

    # GE SWAN with magnitude and phase in one series, told apart only by the private type.
    swan = ge("Ax SWAN", ge_type=0) + ge("Ax SWAN", ge_type=1)
    attrs = SeriesAttributes.from_datasets(swan)
    rule = route(RULES, attrs)
    assert rule is not None and [d[0x0043, 0x102F].value for d in select_images(rule.match, attrs, swan)] == [0] * 3

    # Philips DWI with b0, b1000 and the ADC map in one series: b1000 survives, the map does not.
    dwi = (
        philips("DWI_SENSE", "ORIGINAL\\PRIMARY\\M_SE\\M\\SE", b=0.0)
        + philips("DWI_SENSE", "ORIGINAL\\PRIMARY\\M_SE\\M\\SE", b=1000.0)
        + philips("DWI_SENSE", "DERIVED\\PRIMARY\\ADC\\ADC")
    )
    attrs = SeriesAttributes.from_datasets(dwi)
    rule = route(RULES, attrs)
    assert rule is not None and rule.pipeline == Pipeline.MR_DWI
    chosen = select_dwi(select_images(rule.match, attrs, dwi))
    assert len(chosen) == 3 and all(float(d[0x2001, 0x1003].value) == 1000.0 for d in chosen)

    # Siemens trace series whose first image is b0 (*ep_b0): the b1000 images are what the model reads.
    attrs = SeriesAttributes.from_datasets(SIEMENS_DWI_TRACE)
    rule = route(RULES, attrs)
    assert rule is not None
    assert {d.SequenceName for d in select_dwi(select_images(rule.match, attrs, SIEMENS_DWI_TRACE))} == {"*ep_b1000t"}


def test_ct_series_with_a_localizer_routes_without_it() -> None:
    axial = [ds(Modality="CT", BodyPartExamined="HEAD", ImageType=["ORIGINAL", "PRIMARY", "AXIAL"]) for _ in range(3)]
    scout = ds(Modality="CT", BodyPartExamined="HEAD", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    attrs = SeriesAttributes.from_datasets([scout, *axial])
    rule = route(RULES, attrs)
    assert rule is not None and rule.pipeline == Pipeline.CT_HEAD
    assert select_images(rule.match, attrs, [scout, *axial]) == axial
    assert routed([scout]) is None


def test_default_rules_route_ct_head_by_body_part_or_study_description() -> None:
    assert routed([ds(Modality="CT", BodyPartExamined="HEAD", ImageType=["ORIGINAL", "PRIMARY"])]) == Pipeline.CT_HEAD
    assert routed([ds(Modality="CT", StudyDescription="CT Schaedel nativ")]) == Pipeline.CT_HEAD
    assert routed([ds(Modality="CT", BodyPartExamined="CHEST", StudyDescription="CT THORAX")]) is None


def test_shipped_config_repeats_the_built_in_rules() -> None:
    assert load_config(ROOT / "config.yaml").series.rules == RULES


def test_conditions_all_must_hold_and_patterns_ignore_case() -> None:
    m = Match(modality=("CT",), study_description="head", image_type_contains=("AXIAL",))
    assert matches(
        m, SeriesAttributes(modality="ct", study_description="CT HEAD W/O", image_type=("ORIGINAL", "AXIAL"))
    )
    assert not matches(m, SeriesAttributes(modality="CT", study_description="CT HEAD", image_type=("ORIGINAL",)))
    assert not matches(m, SeriesAttributes(modality="MR", study_description="HEAD", image_type=("AXIAL",)))


def test_any_of_needs_one_alternative_for_the_same_image() -> None:
    m = Match(modality=("MR",), any_of=(Match(image_type_contains=("SWI",)), Match(min_b_value=800)))
    swi_b0 = ImageKind(("M", "SWI"), "", 0.0)
    other_b1000 = ImageKind(("M",), "", 1000.0)
    plain = ImageKind(("M",), "", None)
    assert matches(m, SeriesAttributes(modality="MR", images=(plain, swi_b0)))
    assert matches(m, SeriesAttributes(modality="MR", images=(other_b1000,)))
    assert not matches(m, SeriesAttributes(modality="MR", images=(plain,)))
    # image conditions of the rule and of the alternative must hold for one and the same image
    both = Match(image_type_excludes=("P",), any_of=(Match(image_type_contains=("SWI",)),))
    assert not matches(both, SeriesAttributes(images=(ImageKind(("P", "SWI")), ImageKind(("M",)))))


def test_b_value_from_standard_and_vendor_tags() -> None:
    std = ds(Modality="MR")
    std.add_new((0x0018, 0x9087), "FD", 1000.0)
    ge_b = ds(Modality="MR")
    ge_b.add_new((0x0043, 0x1039), "IS", [1000000000 + 1000, 8, 0, 0])
    b0 = ds(Modality="MR")
    b0.add_new((0x0018, 0x9087), "FD", 0.0)
    attrs = SeriesAttributes.from_datasets([b0, std, ge_b])
    assert attrs.b_values == (0.0, 1000.0)
    rule = RoutingRule(name="dwi", pipeline=Pipeline.MR_DWI, match=Match(modality=("MR",), min_b_value=800))
    assert route((rule,), attrs) == rule
    assert route((rule,), SeriesAttributes.from_datasets([b0])) is None


def test_ge_private_image_type_needs_its_creator_and_survives_implicit_vr() -> None:
    d = ds(Modality="MR", ImageType=["ORIGINAL", "PRIMARY", "OTHER"])
    d.add_new((0x0043, 0x102F), "SS", 1)
    assert "PHASE" not in ImageKind.from_dataset(d).image_type  # no GEMS_PARM_01 creator: not GE's tag
    d.add_new((0x0043, 0x0010), "LO", "GEMS_PARM_01")
    assert "PHASE" in ImageKind.from_dataset(d).image_type
    d.add_new((0x0043, 0x102F), "UN", (1).to_bytes(2, "little"))
    assert "PHASE" in ImageKind.from_dataset(d).image_type


def test_describe_is_phi_free_summary() -> None:
    attrs = SeriesAttributes.from_datasets([ds(Modality="MR", SeriesDescription="PD FS", PatientName="DOE^JANE")])
    text = describe(attrs)
    assert "modality=MR" in text and "PD FS" in text and "DOE" not in text
    dwi = SeriesAttributes.from_datasets(SIEMENS_DWI_TRACE)
    assert "b_values=0,1000" in describe(dwi) and "sequence_name='*ep_b0'" in describe(dwi)
