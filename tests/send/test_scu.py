"""The C-STORE SCU against in-process pynetdicom SCPs scripted to answer with a given status (the statuses a real
PACS rarely produces on demand), and against a closed port."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from scripted_scp import ScriptedSCP

from triage_node.config import Destination
from triage_node.results.build import SEG_SOP_CLASS, SR_SOP_CLASS, ResultFile
from triage_node.send.scu import Outcome, Outgoing, classify, send_batch

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _dest(port: int) -> Destination:
    return Destination(name="pacs", ae_title="TESTSCP", host="127.0.0.1", port=port)


def _outgoing(files: list[ResultFile]) -> list[Outgoing]:
    return [Outgoing(i, f.path, f.sop_class_uid, f.sop_instance_uid) for i, f in enumerate(files)]


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (0x0000, Outcome.DELIVERED),
        (0xB000, Outcome.DELIVERED),
        (0xB007, Outcome.DELIVERED),
        (0xA700, Outcome.RETRY),
        (0xA7FF, Outcome.RETRY),
        (0x0213, Outcome.RETRY),
        (0xA900, Outcome.PERMANENT),
        (0xC000, Outcome.PERMANENT),
        (0x0122, Outcome.PERMANENT),
        (0x0124, Outcome.PERMANENT),
        (0x0110, Outcome.RETRY),  # processing failure: unknown cause, retried within max_attempts
    ],
)
def test_classify(status: int, outcome: Outcome) -> None:
    assert classify(status) is outcome


def test_delivers_over_one_association_proposing_exactly_the_sent_classes(
    scripted_scp: Callable[..., ScriptedSCP], files: list[ResultFile]
) -> None:
    scp = scripted_scp()
    results = send_batch(_dest(scp.port), "TRIAGE_NODE", _outgoing(files))
    assert {r.outcome for r in results} == {Outcome.DELIVERED}
    assert sorted(scp.received) == sorted(f.sop_instance_uid for f in files)
    assert scp.proposed == [{SEG_SOP_CLASS, SR_SOP_CLASS}]


def test_a900_is_permanent_with_the_error_comment(
    scripted_scp: Callable[..., ScriptedSCP], files: list[ResultFile]
) -> None:
    scp = scripted_scp(status=0xA900)
    (result,) = send_batch(_dest(scp.port), "TRIAGE_NODE", _outgoing(files[:1]))
    assert (result.outcome, result.status) == (Outcome.PERMANENT, 0xA900)
    assert result.error == "C-STORE status 0xA900: test SCP refuses"


def test_out_of_resources_retries(scripted_scp: Callable[..., ScriptedSCP], files: list[ResultFile]) -> None:
    scp = scripted_scp(status=0xA700)
    results = send_batch(_dest(scp.port), "TRIAGE_NODE", _outgoing(files))
    assert {(r.outcome, r.status) for r in results} == {(Outcome.RETRY, 0xA700)}


def test_sop_class_the_peer_does_not_accept_is_permanent(
    scripted_scp: Callable[..., ScriptedSCP], files: list[ResultFile]
) -> None:
    scp = scripted_scp(contexts=(CT_IMAGE_STORAGE, SR_SOP_CLASS))
    by_kind = {f.kind: f for f in files}
    results = {r.key: r for r in send_batch(_dest(scp.port), "TRIAGE_NODE", _outgoing(files))}
    for i, f in enumerate(files):
        expected = Outcome.DELIVERED if f.kind == "sr" else Outcome.PERMANENT
        assert results[i].outcome is expected, f.kind
    assert results[0].error == f"SOP class {SEG_SOP_CLASS} not accepted"
    assert scp.received == [by_kind["sr"].sop_instance_uid]


def test_closed_port_retries_everything(files: list[ResultFile]) -> None:
    from peers import free_port

    results = send_batch(_dest(free_port()), "TRIAGE_NODE", _outgoing(files), timeout_s=5)
    assert {r.outcome for r in results} == {Outcome.RETRY}
    assert all(r.error and r.error.startswith("no association") for r in results)


def test_unreadable_file_is_permanent_and_does_not_block_the_rest(
    scripted_scp: Callable[..., ScriptedSCP], files: list[ResultFile], tmp_path: Path
) -> None:
    scp = scripted_scp()
    missing = Outgoing(99, tmp_path / "gone.dcm", SEG_SOP_CLASS, "1.2.3")
    results = {r.key: r for r in send_batch(_dest(scp.port), "TRIAGE_NODE", [missing, *_outgoing(files)])}
    assert results[99].outcome is Outcome.PERMANENT and "cannot read" in (results[99].error or "")
    assert [results[i].outcome for i in range(len(files))] == [Outcome.DELIVERED] * len(files)
