"""Models from outside: a MONAI UNet trained at test time, as TorchScript, ONNX and a MONAI bundle, run by the generic
analyzers from their cards alone; broken cards are refused at load with the card's key path."""

from __future__ import annotations

import io
import json
import shutil
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import yaml
from external_models import bleed_series_hu, build_all, card, export_torchscript, train_unet, volume_of, write_card

from triage_node.cli import main
from triage_node.config import Config
from triage_node.inference.card import ModelCard, device_uid_for
from triage_node.inference.errors import ModelLoadError
from triage_node.inference.external import card_settings, parse, sha256_path
from triage_node.inference.generic import (
    NotAccepted,
    apply_orientation,
    axis_codes,
    invert_orientation,
    orientation_plan,
)
from triage_node.inference.registry import list_models, load_analyzer, load_analyzers, read_card

NAMES = ("ext_ts", "ext_onnx", "ext_bundle")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("external-models")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the ONNX exporter's note about instance norm in eval mode
        build_all(d)
    return d


def test_each_format_outlines_the_bleed_from_its_card_alone(models_dir: Path) -> None:
    analyzers = load_analyzers(models_dir, NAMES)
    hu, spacing = bleed_series_hu()
    volume = volume_of(hu, spacing)
    truth = hu == 75.0
    masks = {}
    for name, a in analyzers.items():
        assert a.device_uid == device_uid_for(read_card(models_dir, name).sha256)
        out = a.analyze(volume)
        (f,) = out.findings
        assert f.label == f"{name}_bleed" and f.present and f.probability > 0.9, f
        mask = out.masks[f.label]
        assert mask.shape == hu.shape
        dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
        assert dice > 0.7, (name, dice)
        assert set(f.key_slices) == {4, 5, 6, 7} and f.volume_ml and f.volume_ml > 0
        masks[name] = mask
    # the same network in three formats gives the same mask
    assert (masks["ext_ts"] == masks["ext_onnx"]).mean() > 0.999
    assert (masks["ext_ts"] == masks["ext_bundle"]).all()


def test_a_normal_head_has_no_finding_and_an_mr_series_is_not_accepted(models_dir: Path) -> None:
    a = load_analyzers(models_dir, ["ext_ts"])["ext_ts"]
    hu, spacing = bleed_series_hu()
    hu[hu == 75.0] = 30.0
    (f,) = a.analyze(volume_of(hu, spacing)).findings
    assert not f.present and f.volume_ml == 0
    with pytest.raises(NotAccepted, match=r"modality MR \(accepts.modalities \['CT'\]\)"):
        a.analyze(volume_of(hu, spacing, modality="MR"))


def test_detector_counts_separate_bleeds(models_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "ext_det"
    shutil.copy(models_dir / "ext_ts" / "unet.ts", folder.mkdir() or folder / "unet.ts")
    d = card("ext_det", "torchscript", "unet.ts", folder, kind="detector",
             postprocess={"min_component_mm3": 50.0, "min_count": 1})
    d["labels"][1] = {"name": "ext_det_blob", "priority": "routine"}
    write_card(folder, d)
    hu, spacing = bleed_series_hu()
    hu[4:8, 80:90, 40:50] = 75.0  # a second bleed on the other side
    (f,) = load_analyzer(read_card(tmp_path, "ext_det")).analyze(volume_of(hu, spacing)).findings
    assert f.present and f.count == 2 and len(f.positions) == 2


def test_classifier_bundle_with_gradcam_heat_map(tmp_path: Path) -> None:
    import torch
    from monai.networks.nets import Classifier

    torch.manual_seed(0)
    net = Classifier(in_shape=(2, 64, 64), classes=2, channels=(4, 8), strides=(2, 2))
    bundle = tmp_path / "ext_cls" / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(json.dumps({"network_def": {
        "_target_": "monai.networks.nets.Classifier", "in_shape": [2, 64, 64], "classes": 2, "channels": [4, 8],
        "strides": [2, 2]}}))
    (bundle / "configs" / "metadata.json").write_text(json.dumps({"network_data_format": {
        "inputs": {"image": {"num_channels": 2}}, "outputs": {"pred": {"num_channels": 2}}}}))
    torch.save(net.state_dict(), str(bundle / "models" / "model.pt"))
    d = card("ext_cls", "monai_bundle", "bundle", tmp_path / "ext_cls", kind="classifier",
             output={"activation": "sigmoid", "aggregation": "max"},
             labels=[{"name": "ext_any", "threshold": 0.0, "priority": "critical"},
                     {"name": "ext_other", "threshold": 1.0}],
             heatmap={"layer": "net.layer_1", "max_slices": 3})
    write_card(tmp_path / "ext_cls", d)
    a = load_analyzer(read_card(tmp_path, "ext_cls"))
    hu, spacing = bleed_series_hu()
    out = a.analyze(volume_of(hu, spacing))
    f_any, f_other = out.findings
    assert f_any.present and len(f_any.key_slices) == 12 and not f_other.present
    heat = out.heatmaps["ext_any"]
    assert heat.shape == hu.shape and heat.max() > 0 and (heat.reshape(12, -1).max(axis=1) > 0).sum() <= 3


def test_three_output_channels_for_two_labels_is_refused_with_the_key_path(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    export_torchscript(train_unet(steps=1, out_channels=3), folder / "unet.ts")
    write_card(folder, card("bad", "torchscript", "unet.ts", folder))
    with pytest.raises(ModelLoadError) as e:
        load_analyzer(read_card(tmp_path, "bad"))
    msg = str(e.value)
    assert "model.yaml: labels: the network gives 3 output channel(s), the card lists 2 label(s)" in msg, msg
    assert str(folder / "model.yaml") in msg


def test_modified_weights_and_bundles_are_refused(models_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "m"
    shutil.copytree(models_dir / "ext_bundle", d / "ext_bundle")
    assert load_analyzer(read_card(d, "ext_bundle"))
    cfg = d / "ext_bundle" / "bundle" / "configs" / "inference.json"
    cfg.write_text(cfg.read_text().replace('"num_res_units": 1', '"num_res_units": 2'))
    with pytest.raises(ModelLoadError, match="has sha256 .* but the card expects"):
        load_analyzer(read_card(d, "ext_bundle"))
    rows = {r.name: r for r in list_models(d)}
    assert rows["ext_bundle"].status == "mismatch"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "regressor"}, "kind: must be one of classifier, segmenter, detector"),
        ({"format": "pickle"}, "format: must be one of torchscript, onnx, monai_bundle"),
        ({"labels": [{"name": "background"}, {"name": "x", "threshold": 2}]}, r"labels\[1\].threshold: must be in"),
        ({"labels": [{"name": "background"}, {"name": "x", "priority": "asap"}]}, r"labels\[1\].priority"),
        ({"labels": [{"name": "background"}, {"name": "x", "code": {"scheme": "SCT"}}]},
         r"labels\[1\].code.value: required"),
        ({"input": {"size": [64, 64], "channels": [{"window": [40, -1]}]}}, r"input.channels\[0\].window\[1\]"),
        ({"input": {"size": [64]}}, "input.size: must be 2 integers"),
        ({"accepts": {"pipelines": ["ct_head"]}}, "accepts.modalities: required"),
        ({"heatmap": {"layer": "x"}}, "heatmap: Grad-CAM maps are made for classifiers"),
    ],
)
def test_card_problems_name_their_key_path(tmp_path: Path, change: dict, message: str) -> None:  # type: ignore[type-arg]
    (tmp_path / "w.ts").write_bytes(b"x")
    d = card("x", "torchscript", "w.ts", tmp_path)
    d.update(change)
    path = write_card(tmp_path / "x", d)
    with pytest.raises(ValueError, match=message):
        ModelCard.load(path)


def test_card_priorities_complete_the_configuration_and_pipelines_are_checked(models_dir: Path) -> None:
    analyzers = load_analyzers(models_dir, ["ext_ts"])
    cfg = Config().model_copy(update={"models": Config().models.model_copy(update={"pipelines": {
        "ct_head": ("ext_ts",)}})})
    merged = card_settings(cfg, analyzers)
    assert merged.models.priority["ext_ts_bleed"] == "urgent"
    assert merged.models.priority["any_hemorrhage"] == "critical"  # the configuration's own entries stay
    wrong = cfg.model_copy(update={"models": cfg.models.model_copy(update={"pipelines": {"mr_swi": ("ext_ts",)}})})
    with pytest.raises(ModelLoadError, match=r"accepts.pipelines: the card accepts \['ct_head'\]"):
        card_settings(wrong, analyzers)


def test_orientation_round_trip() -> None:
    hu, spacing = bleed_series_hu()
    v = volume_of(hu[:, :, :100], spacing)
    assert axis_codes(v) == "SPL"
    perm, flips = orientation_plan("SPL", "RAS")
    assert perm == (2, 1, 0) and flips == (True, True, False)
    a = np.random.default_rng(0).normal(size=(2, *v.pixels.shape))
    b = apply_orientation(a, perm, flips)
    assert b.shape == (2, 100, 128, 12)
    assert np.array_equal(invert_orientation(b, perm, flips), a)


def test_sha256_of_a_bundle_folder_follows_every_file(models_dir: Path, tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(models_dir / "ext_bundle" / "bundle", b)
    before = sha256_path(b)
    assert before == sha256_path(models_dir / "ext_bundle" / "bundle")
    (b / "configs" / "extra.json").write_text("{}")
    assert sha256_path(b) != before


def _cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out), redirect_stderr(out):
        rc = main(list(argv))
    return rc, out.getvalue()


def test_check_config_and_models_check_load_and_run_external_models(models_dir: Path, tmp_path: Path) -> None:
    conf = tmp_path / "config.yaml"
    conf.write_text(yaml.safe_dump({"models": {"dir": str(models_dir), "threads": 1, "precision": "fp32",
                                               "pipelines": {"ct_head": list(NAMES), "mr_swi": [], "mr_dwi": []}}}))
    rc, out = _cli("check-config", "--config", str(conf))
    assert rc == 0 and "external model(s) ext_bundle, ext_onnx, ext_ts loaded and run once" in out, out
    rc, out = _cli("models", "--check", "--config", str(conf))
    assert rc == 0 and out.count("loaded and run on a synthetic input") == 3, out
    assert "segmenter (monai_bundle)" in out
    rc, out = _cli("models", "--hash", str(models_dir / "ext_bundle" / "bundle"))
    assert rc == 0 and out.strip() == read_card(models_dir, "ext_bundle").sha256

    bad = tmp_path / "bad_models"
    shutil.copytree(models_dir / "ext_ts", bad / "ext_ts")
    export_torchscript(train_unet(steps=1, out_channels=3), bad / "ext_ts" / "unet.ts")
    d = yaml.safe_load((bad / "ext_ts" / "model.yaml").read_text())
    d["sha256"] = sha256_path(bad / "ext_ts" / "unet.ts")
    write_card(bad / "ext_ts", d)
    conf.write_text(yaml.safe_dump({"models": {"dir": str(bad), "threads": 1, "precision": "fp32",
                                               "pipelines": {"ct_head": ["ext_ts"], "mr_swi": [], "mr_dwi": []}}}))
    rc, out = _cli("check-config", "--config", str(conf))
    assert rc == 1 and "labels: the network gives 3 output channel(s), the card lists 2" in out, out
    assert parse(d).labels[1].name == "ext_ts_bleed"
