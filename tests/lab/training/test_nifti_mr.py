"""ISLES'22 and VALDO folders (``triage_lab/training/nifti_mr.py``): layout discovery with its common variants,
orientation, pairing errors, bleed centres from label masks, and a few training steps of each MR model through
``train-mr --nifti-dir``."""

from __future__ import annotations

import argparse
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from triage_lab.training.nifti import NiftiPairError
from triage_lab.training.nifti_mr import (
    NiftiLayoutError,
    bleed_centres,
    find_isles,
    find_valdo,
    isles_split,
    split_subjects,
    valdo_split,
)

# Voxel (i, j, k) -> RAS+ mm with axes toward patient Left, Posterior, Superior: the canonical orientation.
LPS_DWI = np.array([[-2.0, 0, 0, 48.0], [0, -2.0, 0, 48.0], [0, 0, 4.0, -10.0], [0, 0, 0, 1]])
LPS_T2S = np.array([[-1.0, 0, 0, 24.0], [0, -1.0, 0, 24.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])


def _save(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def _to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same world image stored RAS (both in-plane voxel axes reversed)."""
    ni, nj = data.shape[:2]
    ras = affine.copy()
    ras[:3, :2] *= -1
    ras[:3, 3] = affine[:3, :3] @ [ni - 1, nj - 1, 0] + affine[:3, 3]
    return data[::-1, ::-1].copy(), ras


# --------------------------------------------------------------------------------------------------------------------
# ISLES'22


def _dwi_case(seed: int, shape: tuple[int, int, int] = (48, 48, 6)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dwi, adc, mask) in (i, j, k): a brain ellipse with a bright DWI / dark ADC lesion at a seed-dependent place."""
    rng = np.random.default_rng(seed)
    i, j = np.mgrid[: shape[0], : shape[1]] - (shape[0] - 1) / 2
    brain = (np.hypot(i / 20, j / 18) < 1)[:, :, None].repeat(shape[2], axis=2)
    mask = np.zeros(shape, np.uint8)
    ci, cj = 14 + 3 * seed, 20
    mask[ci : ci + 8, cj : cj + 7, 2:5] = 1
    dwi = np.where(brain, 300.0, 0.0) + rng.normal(0, 10, shape)
    dwi[mask > 0] = 900.0
    adc = np.where(brain, 800.0, 0.0)
    adc[mask > 0] = 450.0
    return dwi.astype(np.float32), adc.astype(np.float32), mask


def _isles(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Three subjects in three layout variants; returns subject -> (dwi, mask) as written (LPS, (i, j, k))."""
    truth = {}
    # 1: the release layout: ses-0001, dwi/, .nii.gz, with ADC.
    s, ses = "sub-strokecase0001", "ses-0001"
    dwi, adc, mask = _dwi_case(1)
    _save(root / f"rawdata/{s}/{ses}/dwi/{s}_{ses}_dwi.nii.gz", dwi, LPS_DWI)
    _save(root / f"rawdata/{s}/{ses}/dwi/{s}_{ses}_adc.nii.gz", adc, LPS_DWI)
    _save(root / f"derivatives/{s}/{ses}/{s}_{ses}_msk.nii.gz", mask, LPS_DWI)
    truth[s] = (dwi, mask)
    # 2: no session level, no dwi/ folder, uncompressed .nii, no ADC, stored RAS (mask too).
    s = "sub-strokecase0002"
    dwi, _, mask = _dwi_case(2)
    _save(root / f"rawdata/{s}/{s}_dwi.nii", *_to_ras(dwi, LPS_DWI))
    _save(root / f"derivatives/{s}/{s}_msk.nii", *_to_ras(mask, LPS_DWI))
    truth[s] = (dwi, mask)
    # 3: session in rawdata only; the mask stored RAS while the DWI is LPS.
    s = "sub-strokecase0003"
    dwi, adc, mask = _dwi_case(3)
    _save(root / f"rawdata/{s}/{ses}/dwi/{s}_{ses}_dwi.nii.gz", dwi, LPS_DWI)
    _save(root / f"rawdata/{s}/{ses}/dwi/{s}_{ses}_adc.nii.gz", adc, LPS_DWI)
    _save(root / f"derivatives/{s}/{s}_msk.nii.gz", *_to_ras(mask, LPS_DWI))
    truth[s] = (dwi, mask)
    return truth


def test_isles_layout_variants_are_found_and_read_in_one_orientation(tmp_path: Path) -> None:
    truth = _isles(tmp_path)
    files = find_isles(tmp_path)
    assert [f.subject for f in files] == sorted(truth)
    assert [f.adc is not None for f in files] == [True, False, True]
    split = isles_split(tmp_path, val_fraction=0.34)
    assert split.train == ("sub-strokecase0001", "sub-strokecase0003") and split.val == ("sub-strokecase0002",)
    cases = {c.subject: c for c in [*split.cases("train"), *split.cases("val")]}
    for s, (dwi, mask) in truth.items():
        c = cases[s]
        assert c.dwi.shape == c.mask.shape == (6, 48, 48) and c.mask.dtype == bool
        assert c.spacing == pytest.approx((4.0, 2.0, 2.0))
        assert np.allclose(c.dwi, dwi.transpose(2, 1, 0)), s  # RAS-stored subjects come back as the LPS ones
        assert np.array_equal(c.mask, mask.transpose(2, 1, 0) > 0), s
        assert c.dwi[c.mask].min() == 900.0  # the mask sits on the lesion
    assert cases["sub-strokecase0001"].adc is not None and cases["sub-strokecase0002"].adc is None
    assert "ISLES'22" in split.describe("train") and "sub-strokecase0003" in split.describe("train")


def test_isles_pairing_errors_name_the_subject(tmp_path: Path) -> None:
    _isles(tmp_path)
    s = "sub-strokecase0004"
    dwi, _, mask = _dwi_case(4)
    _save(tmp_path / f"rawdata/{s}/ses-0001/dwi/{s}_ses-0001_dwi.nii.gz", dwi, LPS_DWI)
    with pytest.raises(
        NiftiPairError, match=rf"subject {s}: DWI image .* has no lesion mask; expected .*{s}_ses-0001_msk"
    ):
        find_isles(tmp_path)
    _save(tmp_path / f"derivatives/{s}/ses-0001/{s}_ses-0001_msk.nii.gz", mask[:, :, :5], LPS_DWI)
    assert len(find_isles(tmp_path)) == 4
    split = isles_split(tmp_path, 0.25)
    with pytest.raises(NiftiPairError, match=r"mask .*sub-strokecase0004_ses-0001_msk.nii.gz has shape \(5, 48, 48\)"):
        list(split.cases("train"))
    _save(tmp_path / "derivatives/sub-strokecase0009/sub-strokecase0009_msk.nii.gz", mask, LPS_DWI)
    with pytest.raises(NiftiPairError, match="subject sub-strokecase0009: a mask in .* but no images"):
        find_isles(tmp_path)


def test_isles_layout_errors(tmp_path: Path) -> None:
    with pytest.raises(NiftiLayoutError, match=r"no rawdata/ folder .*expected the ISLES'22 layout"):
        find_isles(tmp_path)
    (tmp_path / "rawdata").mkdir()
    (tmp_path / "derivatives").mkdir()
    with pytest.raises(NiftiLayoutError, match="no sub-\\* folders"):
        find_isles(tmp_path)
    dwi, _, mask = _dwi_case(1)
    _save(tmp_path / "rawdata/sub-x/sub-x_dwi.nii.gz", dwi, LPS_DWI)
    _save(tmp_path / "derivatives/sub-x/sub-x_msk.nii.gz", mask, LPS_DWI)
    with pytest.raises(NiftiLayoutError, match="need at least two subjects"):
        isles_split(tmp_path)
    _save(tmp_path / "rawdata/sub-x/sub-x_dwi.nii", dwi, LPS_DWI)
    with pytest.raises(NiftiLayoutError, match="subject sub-x: several DWI files"):
        find_isles(tmp_path)


def test_split_subjects_spreads_validation_over_the_ids() -> None:
    ids = [f"sub-{c}{k:02d}" for c in (1, 2, 3) for k in range(10)]
    train, val = split_subjects(ids, 0.1)
    assert len(val) == 3 and {v[4] for v in val} == {"1", "2", "3"}  # one per cohort block
    assert sorted(train + val) == sorted(ids)
    with pytest.raises(ValueError, match="val_fraction must be between 0 and 1"):
        split_subjects(ids, 0.0)


# --------------------------------------------------------------------------------------------------------------------
# VALDO


def _t2s_case(seed: int, shape: tuple[int, int, int] = (48, 48, 12)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(t2s, label mask, true centres (i, j, k)): a bright brain with noise, a dark vein-like tube (a distractor) and
    two or three dark microbleeds of radius ~2 voxels, the labelled ones."""
    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*(np.arange(n, dtype=float) for n in shape), indexing="ij")
    brain = ((ii - 23.5) / 20) ** 2 + ((jj - 23.5) / 18) ** 2 + ((kk - 5.5) / 8) ** 2 < 1
    img = np.where(brain, 1000.0, 20.0) + rng.normal(0, 15, shape)
    img[(np.hypot(ii - 30, kk - 6) < 1.2) & brain] = 350.0
    centres = np.array([[16.0, 18, 5], [26, 30, 6], [20, 12, 4]])[: 2 + seed % 2]
    mask = np.zeros(shape, np.uint8)
    for c in centres:
        d = np.sqrt((ii - c[0]) ** 2 + (jj - c[1]) ** 2 + ((kk - c[2]) * 2) ** 2)
        img[d < 2.5] = 150.0
        mask[d < 2.0] = 1
    return img.astype(np.float32), mask, centres


def _valdo(root: Path) -> dict[str, np.ndarray]:
    truth = {}
    for n, s in enumerate(("sub-101", "sub-201", "sub-301")):
        img, mask, centres = _t2s_case(n)
        ext = ".nii" if s == "sub-201" else ".nii.gz"
        if s == "sub-301":  # stored RAS, and an unmasked T2* next to the masked one
            (img, affine), (mask, _) = _to_ras(img, LPS_T2S), _to_ras(mask, LPS_T2S)
            _save(root / s / f"{s}_space-T2S_T2S.nii.gz", img * 0, affine)
        else:
            affine = LPS_T2S
        _save(root / s / f"{s}_space-T2S_desc-masked_T2S{ext}", img, affine)
        _save(root / s / f"{s}_space-T2S_CMB{ext}", mask, affine)
        _save(root / s / f"{s}_space-T2S_desc-masked_T1.nii.gz", img, affine)  # other VALDO files are ignored
        truth[s] = centres
    return truth


def test_bleed_centres_are_component_centroids_with_equal_volume_radii() -> None:
    mask = np.zeros((6, 10, 10), bool)
    mask[2:4, 2:4, 2:4] = True  # 8 voxels
    mask[1, 7, 7] = mask[2, 8, 8] = True  # touching at a corner only: one bleed
    centres, radii = bleed_centres(mask, (2.0, 0.5, 0.5))
    order = np.argsort(centres[:, 1])
    assert np.allclose(centres[order], [[2.5, 2.5, 2.5], [1.5, 7.5, 7.5]])
    vol = np.array([8, 2]) * 0.5
    assert np.allclose(radii[order], np.cbrt(3 * vol / (4 * np.pi)), rtol=1e-5)
    empty_c, empty_r = bleed_centres(np.zeros((3, 3, 3), bool), (1.0, 1.0, 1.0))
    assert empty_c.shape == (0, 3) and empty_r.shape == (0,)


def test_valdo_layout_orientation_and_bleeds(tmp_path: Path) -> None:
    truth = _valdo(tmp_path)
    files = find_valdo(tmp_path)
    assert [f.subject for f in files] == ["sub-101", "sub-201", "sub-301"]
    assert all("desc-masked" in f.image.name for f in files)
    split = valdo_split(tmp_path, 0.34)
    assert split.val == ("sub-201",)
    cases = {c.subject: c for c in [*split.cases("train"), *split.cases("val")]}
    for s, centres in truth.items():
        c = cases[s]
        assert c.volume.shape == (12, 48, 48) and c.spacing == pytest.approx((2.0, 1.0, 1.0))
        assert c.source == "valdo"
        # Centres come back in (z, y, x) voxels of the canonical array, also for the RAS-stored subject.
        got = c.centres[np.lexsort(c.centres.T[::-1])]
        want = centres[:, ::-1][np.lexsort(centres[:, ::-1].T[::-1])]
        assert np.allclose(got, want, atol=0.01), s
        assert np.all((c.radii > 1.5) & (c.radii < 2.5))
        assert all(c.volume[tuple(np.round(p).astype(int))] == 150.0 for p in c.centres)


def test_valdo_pairing_errors_name_the_subject(tmp_path: Path) -> None:
    _valdo(tmp_path)
    img, mask, _ = _t2s_case(0)
    _save(tmp_path / "sub-102" / "sub-102_space-T2S_desc-masked_T2S.nii.gz", img, LPS_T2S)
    with pytest.raises(
        NiftiPairError, match=r"subject sub-102: T2\* image .* has no microbleed mask; expected .*sub-102_space-T2S_CMB"
    ):
        find_valdo(tmp_path)
    (tmp_path / "sub-102" / "sub-102_space-T2S_desc-masked_T2S.nii.gz").unlink()
    _save(tmp_path / "sub-102" / "sub-102_space-T2S_CMB.nii.gz", mask, LPS_T2S)
    with pytest.raises(NiftiPairError, match=r"subject sub-102: mask .* has no T2\* image"):
        find_valdo(tmp_path)
    with pytest.raises(NiftiLayoutError, match="no sub-\\* folders; expected the VALDO layout"):
        find_valdo(tmp_path / "sub-101")


# --------------------------------------------------------------------------------------------------------------------
# train-mr --nifti-dir


def _train_mr(argv: list[str]) -> int:
    from triage_lab.training.mr_commands import cmd_train_mr, register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return cmd_train_mr(parser.parse_args(argv))


def test_train_mr_infarct_on_an_isles_folder(tmp_path: Path) -> None:
    root = tmp_path / "isles"
    _isles(root)
    out = tmp_path / "infarct"
    argv = ["train-mr", "infarct", "--out", str(out), "--nifti-dir", str(root), "--val-fraction", "0.34",
            "--base", "4", "--epochs", "1", "--batch-size", "4", "--steps-per-epoch", "2", "--no-progress",
            "--no-amp", "--cache", str(tmp_path / "unused-cache")]  # fmt: skip
    assert _train_mr(argv) == 0
    card = yaml.safe_load((out / "model.yaml").read_text())
    data = card["training"]["data"]
    assert data.startswith(f"2 subjects of the ISLES'22 NIfTI folder {root} (sub-strokecase0001, sub-strokecase0003)")
    assert "seed" not in data and "synthetic" not in data
    assert card["training"]["validation"].startswith("1 subject of the ISLES'22 NIfTI folder")
    assert "synthetic" not in card["intended_use"] and "synthetic" not in card["limitations"]
    assert "ISLES'22 NIfTI folder" in card["limitations"]
    assert not (tmp_path / "unused-cache").exists()  # no synthetic case was generated


def test_train_mr_cmb_on_a_valdo_folder(tmp_path: Path) -> None:
    root = tmp_path / "valdo"
    _valdo(root)
    out = tmp_path / "cmb"
    argv = ["train-mr", "cmb", "--out", str(out), "--nifti-dir", str(root), "--val-fraction", "0.34",
            "--epochs", "1", "--batch-size", "8", "--steps-per-epoch", "2", "--no-progress", "--no-amp",
            "--cache", str(tmp_path / "unused-cache")]  # fmt: skip
    assert _train_mr(argv) == 0
    card = yaml.safe_load((out / "model.yaml").read_text())
    assert card["training"]["data"].startswith(f"2 subjects of the VALDO NIfTI folder {root} (sub-101, sub-301)")
    assert card["training"]["positive_patches"] >= 4  # the labelled bleeds became positives
    assert card["training"]["validation"].startswith("1 subject of the VALDO NIfTI folder")
    assert 0.0 < card["thresholds"]["microbleed"] < 1.0
    assert "synthetic" not in card["limitations"] and "VALDO NIfTI folder" in card["limitations"]
    assert not (tmp_path / "unused-cache").exists()


def test_train_mr_nifti_dir_refuses_seed_options(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="drop --train-seeds"):
        _train_mr(["train-mr", "cmb", "--out", str(tmp_path), "--nifti-dir", str(tmp_path), "--train-seeds", "0-3"])
