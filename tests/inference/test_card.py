"""Model cards: the Device UID is a function of the weights hash, checked on every load."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydicom.uid import UID

from triage_node.inference.card import CardError, ModelCard, device_uid_for

MODELS = Path(__file__).resolve().parents[2] / "models"


def test_device_uid_is_derived_from_the_weights_hash() -> None:
    a, b = "a" * 64, "b" * 64
    assert device_uid_for(a) == device_uid_for(a) == device_uid_for(a.upper())
    assert device_uid_for(a) != device_uid_for(b)
    uid = UID(device_uid_for(a))
    assert uid.startswith("2.25.") and uid.is_valid and len(uid) <= 64


def test_card_without_device_uid_gets_the_derived_one_and_a_wrong_one_is_refused(tiny_ich_dir: Path) -> None:
    path = tiny_ich_dir / "model.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["device_uid"] == device_uid_for(raw["sha256"])  # training writes the derived UID
    del raw["device_uid"]
    path.write_text(yaml.safe_dump(raw))
    assert ModelCard.load(path).device_uid == device_uid_for(raw["sha256"])
    path.write_text(yaml.safe_dump(raw | {"device_uid": "2.25.1234"}))
    with pytest.raises(CardError, match="device_uid 2.25.1234 is not the one derived from its sha256"):
        ModelCard.load(path)


@pytest.mark.parametrize("name", ["ich", "ct_segmenter", "cmb", "infarct"])
def test_shipped_cards_carry_their_derived_device_uid(name: str) -> None:
    raw = yaml.safe_load((MODELS / name / "model.yaml").read_text())
    assert raw["device_uid"] == device_uid_for(raw["sha256"])


def test_to_dict_and_from_dict_round_trip_with_the_domain(tmp_path: Path) -> None:
    import shutil

    from triage_lab.training.domains import DOMAINS, write_domain
    from triage_node.inference.card import CardError, ModelCard

    for f in ("model.yaml", "model.safetensors"):
        shutil.copy(MODELS / "ich" / f, tmp_path / f)
    write_domain(tmp_path, "ich")
    card = ModelCard.load(tmp_path / "model.yaml")
    assert dict(card.domain) == DOMAINS["ich"]
    assert list(card.input["ranges"]["slice_thickness_mm"]) == [0.6, 5.0]
    again = ModelCard.from_dict(card.to_dict(), tmp_path / "model.yaml")
    assert again == card
    bad = card.to_dict()
    bad["thresholds"]["any_hemorrhage"] = 1.5
    with pytest.raises(CardError, match="threshold any_hemorrhage must be in"):
        ModelCard.from_dict(bad, tmp_path / "model.yaml")
    # The one value above 1 a card may hold: a subtype that validation never made precise enough is never present.
    from triage_node.inference.card import NEVER_PRESENT

    never = card.to_dict()
    never["thresholds"]["epidural"] = NEVER_PRESENT
    assert ModelCard.from_dict(never, tmp_path / "model.yaml").thresholds["epidural"] == NEVER_PRESENT


def test_a_model_tuned_behind_a_gate_is_named_when_it_runs_without_it(tiny_seg_dir: Path) -> None:
    import dataclasses
    from types import MappingProxyType

    from triage_node.inference.card import gate_warnings

    card = ModelCard.load(tiny_seg_dir / "model.yaml")
    post = MappingProxyType({**card.postprocess, "tuned_behind_gate": "any_hemorrhage"})
    gated = {"ct_segmenter": dataclasses.replace(card, postprocess=post)}
    assert gate_warnings(gated, {"ct_segmenter": "any_hemorrhage"}) == []
    [line] = gate_warnings(gated, {})
    assert "ct_segmenter" in line and "ungated" in line and "models.gates.ct_segmenter: any_hemorrhage" in line
    [line] = gate_warnings(gated, {"ct_segmenter": "subdural"})
    assert "behind 'subdural'" in line
    assert gate_warnings({"ct_segmenter": card}, {}) == []
