"""Infarct analyzer: random-weight plumbing, laterality under mirroring, and the shipped model on a right thalamus."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from triage_lab.synth.mr import DwiCase, dwi_volume, make_dwi_case
from triage_lab.training.mr_cards import write_infarct_dir
from triage_lab.training.mr_infarct import InfarctRecipe
from triage_node.inference.atlas import Registration
from triage_node.inference.card import ModelCard
from triage_node.inference.infarct import InfarctAnalyzer, adc_ratio, locate
from triage_node.inference.nets import build_segmenter
from triage_node.preprocess.volume import Volume

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture(scope="module")
def thalamus_case() -> DwiCase:
    # Seed 900002 lies outside every training / validation / test range of the infarct model.
    return make_dwi_case(900_002, region="thalamus", side="right")


def test_random_weight_analyzer_returns_aligned_outputs(tmp_path: Path, thalamus_case: DwiCase) -> None:
    torch.manual_seed(0)
    recipe = InfarctRecipe(size=64, base=4)
    card = write_infarct_dir(tmp_path / "infarct", build_segmenter(1, 4).state_dict(), recipe, {"data": "random"}, "0")
    an = InfarctAnalyzer(ModelCard.load(card.directory / "model.yaml"))
    out = an.analyze(dwi_volume(thalamus_case))
    f = out.findings[0]
    assert f.label == "infarct" and out.masks["infarct"].shape == thalamus_case.dwi.shape
    assert (f.location is None) == (not f.present)


def test_mirrored_lesion_reports_the_other_side() -> None:
    """Laterality comes from patient geometry, so mirroring the image flips the reported side (never a stale label)."""
    v = dwi_volume(make_dwi_case(900_003, infarct=False))
    mask = np.zeros(v.pixels.shape, bool)
    z, ny, nx = v.pixels.shape
    mask[z // 2, ny // 2 - 2 : ny // 2 + 2, nx // 4 : nx // 4 + 4] = True  # image left = patient right
    reg = Registration(np.diag([1.0, 1.0, 1.0, 1.0]), 0.0)
    # With an identity patient->MNI map the midline is the patient x = 0 plane: centre the volume on it.
    from dataclasses import replace

    dz, dy, dx = v.spacing
    v = replace(v, origin=(-nx * dx / 2, -ny * dy / 2, -z * dz / 2))
    assert locate(v, mask, reg).side == "right"
    assert locate(v, mask[:, :, ::-1].copy(), reg).side == "left"


def test_shipped_model_reports_right_thalamus(thalamus_case: DwiCase) -> None:
    path = MODELS / "infarct" / "model.yaml"
    if not path.exists():
        pytest.fail(f"shipped model missing: {path}")
    an = InfarctAnalyzer(ModelCard.load(path))
    out = an.analyze(dwi_volume(thalamus_case))
    f = out.findings[0]
    assert f.present
    assert f.location == "right thalamus"
    assert f.laterality == "right"
    assert f.volume_ml is not None and f.volume_ml > 0
    mask = out.masks["infarct"]
    # Mostly on the lesion; 2.0 (trained on randomised DWI) outlines 28% of this legacy-profile lesion, 1.1 more.
    assert (mask & thalamus_case.mask).sum() / max(thalamus_case.mask.sum(), 1) > 0.2


def _with_b0(case: DwiCase, adc: np.ndarray) -> Volume:
    """The case's volume with a b=0 companion that gives it the ADC map ``adc`` (1e-6 mm^2/s) at b=1000."""
    v = dwi_volume(case)
    return dataclasses.replace(v, companions={"b0": (v.pixels * np.exp(adc / 1000.0)).astype(np.float32)})


def test_adc_ratio_reads_restricted_diffusion_off_b0_and_b1000() -> None:
    rng = np.random.default_rng(0)
    b1000 = rng.uniform(80, 120, (6, 40, 40)).astype(np.float32)
    adc = np.full(b1000.shape, 800.0, np.float32)
    lesion = np.zeros(b1000.shape, bool)
    lesion[2:4, 10:20, 10:20] = True
    adc[lesion] = 400.0  # an acute infarct: half the parenchyma's ADC
    b0 = b1000 * np.exp(adc / 1000.0)
    assert adc_ratio(b1000, b0, lesion) == pytest.approx(0.5, abs=0.01)
    adc[lesion] = 1200.0  # T2 shine-through: bright on b=1000 with a raised ADC
    assert adc_ratio(b1000, b1000 * np.exp(adc / 1000.0), lesion) == pytest.approx(1.5, abs=0.01)
    assert adc_ratio(b1000, np.zeros_like(b1000), lesion) is None


def test_shipped_model_drops_a_lesion_not_dark_on_adc_and_keeps_an_infarct(thalamus_case: DwiCase) -> None:
    """With the series' b=0 images (``Volume.companions["b0"]``) an infarct is kept only where diffusion is restricted:
    the same b=1000 image with a raised ADC under the lesion (T2 shine-through) is no infarct."""
    an = InfarctAnalyzer(ModelCard.load(MODELS / "infarct" / "model.yaml"))
    assert an.max_adc_ratio is not None
    restricted = np.where(thalamus_case.mask, 450.0, 800.0).astype(np.float32)
    kept = an.analyze(_with_b0(thalamus_case, restricted)).findings[0]
    assert kept.present and kept.location == "right thalamus"
    raised = np.where(ndimage.binary_dilation(thalamus_case.mask, iterations=3), 1300.0, 800.0).astype(np.float32)
    assert not an.analyze(_with_b0(thalamus_case, raised)).findings[0].present


def test_a_larger_unrestricted_bright_region_does_not_hide_the_infarct(thalamus_case: DwiCase) -> None:
    """T2 shine-through larger than the infarct: bright on b=1000 as the infarct, but not dark on ADC. The ADC rule
    judges every candidate before the largest is kept, so the patch is passed over and the infarct is still found
    (the rule used to judge only the largest candidate, and the infarct went with it)."""
    an = InfarctAnalyzer(ModelCard.load(MODELS / "infarct" / "model.yaml"))
    v = dwi_volume(thalamus_case)
    les = thalamus_case.mask
    zc, yc, xc = np.argwhere(les).mean(axis=0)
    zz, yy, xx = np.mgrid[: les.shape[0], : les.shape[1], : les.shape[2]]
    sp = v.spacing  # a patch in the other hemisphere, 25 mm forward, about 4x the infarct
    patch = ((zz - zc) * sp[0] / 6) ** 2 + ((yy - yc) * sp[1] + 25) ** 2 / 14**2 + (
        (xx - (les.shape[2] - xc)) * sp[2] / 14
    ) ** 2 < 1
    pixels = np.where(patch, np.maximum(v.pixels, v.pixels[les].mean()), v.pixels).astype(np.float32)
    adc = np.where(les, 450.0, np.where(patch, 1300.0, 800.0)).astype(np.float32)
    vol = dataclasses.replace(v, pixels=pixels, companions={"b0": (pixels * np.exp(adc / 1000.0)).astype(np.float32)})
    largest, _ = an.segmenter.segment(pixels, v.spacing)
    assert (largest & patch).any()  # without the rule, the patch is the one lesion kept
    f = an.analyze(vol).findings[0]
    assert f.present and f.location == "right thalamus"


def test_a_companion_must_match_the_volume() -> None:
    v = Volume(np.zeros((2, 4, 4), np.float32), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0),
               ("1", "2"), "MR")
    with pytest.raises(ValueError, match="companion 'b0'"):
        dataclasses.replace(v, companions={"b0": np.zeros((2, 4, 5), np.float32)})
