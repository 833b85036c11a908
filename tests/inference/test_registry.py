"""Model registry: sha256 verification, clear errors, analyzer import paths, listing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from triage_node.inference.card import ModelCard
from triage_node.inference.errors import ModelLoadError
from triage_node.inference.ich import IchAnalyzer
from triage_node.inference.registry import list_models, load_analyzers


def test_loads_verified_models(tiny_ich_dir: Path, tiny_seg_dir: Path) -> None:
    found = load_analyzers(tiny_ich_dir.parent, ["ich", "ct_segmenter"], threads=1)
    assert isinstance(found["ich"], IchAnalyzer)
    card = ModelCard.load(tiny_ich_dir / "model.yaml")
    assert found["ich"].device_uid == card.device_uid and card.device_uid.startswith("2.25.")
    assert found["ich"].card.manufacturer == "triage-node project"
    assert [r.status for r in list_models(tiny_ich_dir.parent)] == ["ok", "ok"]


def test_modified_weights_are_refused(tiny_ich_dir: Path) -> None:
    with (tiny_ich_dir / "model.safetensors").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(ModelLoadError, match=r"model.safetensors has sha256 [0-9a-f]{64}, but the card expects"):
        load_analyzers(tiny_ich_dir.parent, ["ich"])
    assert list_models(tiny_ich_dir.parent)[0].status == "mismatch"


def test_missing_weights_are_refused(tiny_ich_dir: Path) -> None:
    (tiny_ich_dir / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match="weights file .*model.safetensors is missing"):
        load_analyzers(tiny_ich_dir.parent, ["ich"])
    assert list_models(tiny_ich_dir.parent)[0].status == "missing"


def test_missing_card_and_bad_analyzer(tiny_ich_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match="card .*model.yaml not found"):
        load_analyzers(tiny_ich_dir.parent, ["nope"])
    card = tiny_ich_dir / "model.yaml"
    card.write_text(card.read_text().replace("triage_node.inference.ich:IchAnalyzer", "triage_node.nowhere:X"))
    with pytest.raises(ModelLoadError, match="cannot import analyzer 'triage_node.nowhere:X'"):
        load_analyzers(tiny_ich_dir.parent, ["ich"])


def test_card_with_wrong_name_is_refused(tiny_ich_dir: Path) -> None:
    shutil.copytree(tiny_ich_dir, tiny_ich_dir.parent / "other")
    with pytest.raises(ModelLoadError, match="names the model 'ich'"):
        load_analyzers(tiny_ich_dir.parent, ["other"])

