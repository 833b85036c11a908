from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from triage_node.config import SCP
from triage_node.ops import conformance
from triage_node.receive.contexts import PREFERENCE, STORAGE_SOP_CLASSES, VERIFICATION_SOP_CLASS
from triage_node.receive.scp import StorageSCP
from triage_node.send.commitment import STORAGE_COMMITMENT_PUSH, add_commitment_context

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"


def test_docs_conformance_md_is_the_rendered_statement() -> None:
    assert DOC.read_text(encoding="utf-8") == conformance.render(), (
        "docs/conformance.md is stale: run `triage-node conformance --output docs/conformance.md`"
    )


def test_the_statement_lists_what_the_running_scp_negotiates() -> None:
    # The SCP builds its AE from contexts.py; check that the statement's lists are what it really supports.
    no_spool: Any = None
    ae = StorageSCP(SCP(), no_spool, no_spool).ae
    supported = {str(cx.abstract_syntax): [str(ts) for ts in cx.transfer_syntax] for cx in ae.supported_contexts}
    assert set(supported) == set(STORAGE_SOP_CLASSES) | {VERIFICATION_SOP_CLASS}
    for uid in STORAGE_SOP_CLASSES:
        assert supported[uid] == list(PREFERENCE), uid
    assert supported[VERIFICATION_SOP_CLASS] == list(conformance.VERIFICATION_TRANSFER_SYNTAXES)
    text = conformance.render()
    assert f"`{ae.implementation_class_uid}`" in text
    for uid in (*STORAGE_SOP_CLASSES, *PREFERENCE, *conformance.SENT_SOP_CLASSES, STORAGE_COMMITMENT_PUSH):
        assert f"`{uid}`" in text
    # With a commitment destination the SCP also takes the PACS's N-EVENT-REPORT, in the syntaxes stated.
    add_commitment_context(ae)
    [cx] = [cx for cx in ae.supported_contexts if cx.abstract_syntax == STORAGE_COMMITMENT_PUSH]
    names = ", ".join(conformance.TRANSFER_SYNTAXES[str(ts)] for ts in cx.transfer_syntax)
    assert f"| Storage Commitment Push Model | `{STORAGE_COMMITMENT_PUSH}` | {names} |" in text


def test_main_writes_and_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "docs" / "conformance.md"
    assert conformance.main(["--output", str(out)]) == 0
    assert conformance.main(["--check", str(out)]) == 0
    out.write_text(out.read_text() + "edited by hand\n")
    assert conformance.main(["--check", str(out)]) == 1
    assert "is stale" in capsys.readouterr().err
    assert conformance.main(["--check", str(tmp_path / "missing.md")]) == 1
    assert conformance.main([]) == 0
    assert capsys.readouterr().out == conformance.render()
