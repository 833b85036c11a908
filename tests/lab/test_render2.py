"""The second, test-only renderer (triage_lab.render2): unit checks of its physics and truth, and the fast gate.

The gate (marker ``render2_gate``; ``pytest -m render2_gate tests/lab/test_render2.py``) renders a few fixed cases,
reads them back through the daemon's decode path, runs the shipped models and asserts issue 15's targets. It fails
while the shipped models miss them; that is its purpose.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peers import require

from triage_lab.render2 import projector
from triage_lab.render2.cases import CaseSpec, render_and_write
from triage_lab.render2.evaluate import TARGETS, decode, evaluate, format_table
from triage_node.config import Config, Pipeline

ROOT = Path(__file__).resolve().parents[2]


def _need_invesalius() -> None:
    from triage_lab.synth.headct import DEFAULT_PATH

    require(DEFAULT_PATH.exists(), f"{DEFAULT_PATH} missing (apt-get install invesalius-examples)")


def test_training_never_imports_the_test_renderer() -> None:
    """render2 only tests: no training or training-data module may import it."""
    import ast

    offenders = []
    for folder in ("synth", "training"):
        for path in sorted((ROOT / "triage_lab" / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if isinstance(node, ast.ImportFrom) and node.module:
                    names.append(node.module)
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("triage_lab.render2")]
    assert offenders == []


def test_fbp_of_uniform_disc_is_flat() -> None:
    n = 128
    yy, xx = np.mgrid[:n, :n]
    disc = (((yy - 64) ** 2 + (xx - 60) ** 2) < 45**2).astype(np.float32) * 0.02
    theta = projector.angles(180)
    sino = projector.forward(torch.from_numpy(disc)[None], theta)
    inner = ((yy - 64) ** 2 + (xx - 60) ** 2) < 35**2
    for name in projector.FILTERS:
        rec = projector.filtered_backprojection(sino, theta, name)[0].numpy()
        assert abs(rec[inner].mean() - 0.02) < 0.0003, name  # within 15 HU of water
        assert rec[inner].std() < 0.0003, name
    gen = torch.Generator().manual_seed(1)
    noisy = projector.add_poisson_noise(sino, 1e6, gen)
    rec = projector.filtered_backprojection(noisy, theta, "hann")[0].numpy()
    assert abs(rec[inner].mean() - 0.02) < 0.0004
    rows = [rec[r][inner[r]].mean() for r in range(30, 98, 8)]
    assert np.ptp(rows) < 0.0006  # no cupping or gradient beyond noise


@pytest.fixture(scope="module")
def ipd_case(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    spec = CaseSpec("ct", 7_950_000, {"subtypes": ("intraparenchymal",), "head": "mni", "matrix": 256,
                                      "thickness": 5.0})
    return render_and_write(spec, tmp_path_factory.mktemp("r2ct") / spec.key)


def test_ct_lesion_is_denser_than_brain_after_fbp(ipd_case) -> None:  # type: ignore[no-untyped-def]
    case = ipd_case.case
    assert case.subtypes == ("intraparenchymal",) and case.any_hemorrhage
    mask = case.masks["intraparenchymal"]
    assert mask.sum() > 50
    core = mask & (np.abs(case.hu - 70.0) < 40.0)
    z = int(np.argmax(mask.sum(axis=(1, 2))))
    brain = (case.hu[z] > 15) & (case.hu[z] < 45) & ~mask[z]
    assert np.median(case.hu[core]) > np.median(case.hu[z][brain]) + 20.0


def test_ct_dicom_round_trip_through_daemon_decode(ipd_case) -> None:  # type: ignore[no-untyped-def]
    volume, pipeline = decode(ipd_case.paths, Config())
    assert pipeline == Pipeline.CT_HEAD
    index = {u: k for k, u in enumerate(ipd_case.slice_uids)}
    k = [index[u] for u in volume.sop_instance_uids]
    hu = ipd_case.case.hu[k]
    n = hu.shape[1]
    c = (np.arange(n) - (n - 1) / 2.0) ** 2
    inside = (c[:, None] + c[None, :]) <= ((n - 1) / 2.0) ** 2
    diff = np.abs(volume.pixels[:, inside] - np.clip(np.rint(hu[:, inside]), -1024, 3071))
    assert diff.max() <= 1.0  # rounding to integer stored values only
    assert volume.spacing[1] == pytest.approx(ipd_case.case.planes.pixel[0], rel=1e-4)


def test_mr_truths() -> None:
    from triage_lab.render2.mr import make_dwi_case, make_swi_case
    from triage_node.inference.atlas import Region

    dwi = make_dwi_case(7_950_100, infarct=True, region=Region.FRONTAL, side="left")
    assert dwi.mask.any() and dwi.location == "left frontal lobe"
    lesion = np.median(dwi.b1000[dwi.mask])
    assert lesion > 1.3 * np.median(dwi.b1000[dwi.b1000 > 0.3 * np.percentile(dwi.b1000, 99)])
    normal = make_dwi_case(7_950_101, infarct=False)
    assert not normal.mask.any() and normal.region is None
    swi = make_swi_case(7_950_102, n_bleeds=3)
    assert swi.count == 3 and len(swi.radii) == 3


GATE_CT = [
    ({"subtypes": (), "head": "invesalius"}, 7_900_000),
    ({"subtypes": (), "head": "mni"}, 7_900_001),
    ({"subtypes": ("epidural",), "head": "invesalius"}, 7_900_002),
    ({"subtypes": ("subdural",), "head": "mni"}, 7_900_003),
    ({"subtypes": ("intraparenchymal",), "head": "invesalius"}, 7_900_004),
]
GATE_MR = [
    CaseSpec("dwi", 7_900_100, {"infarct": True}),
    CaseSpec("dwi", 7_900_101, {"infarct": False}),
    CaseSpec("swi", 7_900_200, {"n_bleeds": 3}),
    CaseSpec("swi", 7_900_201, {"n_bleeds": 0}),
]


def gate_specs() -> list[CaseSpec]:
    ct = [CaseSpec("ct", seed, {**opts, "matrix": 256, "thickness": 5.0}) for opts, seed in GATE_CT]
    return ct + GATE_MR


@pytest.mark.render2_gate
def test_render2_gate_meets_issue_targets(tmp_path: Path) -> None:
    _need_invesalius()
    # Two processes (render-test --jobs): the fork path is exercised, and the gate takes half the time on two cores.
    report = evaluate(gate_specs(), ROOT / "models", work_dir=tmp_path, jobs=2)
    print(format_table(report))
    assert [r["case"] for k in ("ct", "dwi", "swi") for r in report["cases"][k]] == [s.key for s in gate_specs()]
    assert not report["failures"], [f["error"] for f in report["failures"]]
    assert set(report["targets"]) == set(TARGETS)
    # Every issue-15 target is held here (ct_segmenter 3.0.0 reaches Dice 0.92 on these cases; 1.2.0 needed a 0.70
    # floor). A floor would go here for a target a shipped model does not yet reach on these cases.
    floors: dict[str, float] = {}
    missed = {
        k: t for k, t in report["targets"].items()
        if t["met"] is not True and not (k in floors and t["value"] is not None and t["value"] >= floors[k])
    }
    assert not missed, f"second-renderer targets missed: {missed}"
