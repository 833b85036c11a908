"""Hostile input: every malformed or unusual object gets the right C-STORE status at receive time or a rejected /
skipped job with its reason; raw garbage on the port does no harm; a normal study sent alongside is processed."""

from __future__ import annotations

from pathlib import Path

import pytest
from hostile_corpus import ENHANCED_CT, Case, build_corpus, enhanced_ct
from peers import wait_for
from pydicom import dcmread
from pynetdicom import AE
from reliability_support import (
    Figures,
    echo,
    garbage_association,
    half_association,
    job_rows,
    new_daemon,
    phantom_series,
    send_files,
    stub_models,
)

# SQLite only: fault injection, doubled by transport already; PostgreSQL's is test_multinode.py
pytestmark = pytest.mark.reliability

TERMINAL = {"delivered", "rejected", "skipped", "dead_letter", "failed"}


def _context_rejected(port: int, case: Case) -> bool:
    ae = AE(ae_title="HOSTILE")
    ae.add_requested_context(case.sop_class, [case.transfer_syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE_NODE")
    if not assoc.is_established:
        return True
    try:
        return not assoc.accepted_contexts
    finally:
        assoc.release()


def test_hostile_corpus_gets_the_right_answers_and_a_normal_study_still_goes_through(
    tmp_path: Path, figures: Figures, transport: str
) -> None:
    cases = build_corpus(tmp_path / "corpus")
    assert len(cases) >= 25
    normal = phantom_series(tmp_path / "normal", seed=9100, slices=8)
    env = {**stub_models(tmp_path / "models"), "TRIAGE_NODE__SERIES__QUIET_PERIOD_S": "2",
           "TRIAGE_NODE__WEB__ENABLED": "false", "TRIAGE_NODE__SCP__TRANSPORT": transport}
    outcomes: dict[str, str] = {}
    with_job: dict[str, Case] = {}
    d = new_daemon(figures, tmp_path / "d", **env).start()
    try:
        for i, case in enumerate(cases):
            if i == len(cases) // 2:  # the normal study arrives in the middle of the hostile traffic
                garbage_association(d.port)
                half_association(d.port)
                assert send_files(d.port, normal).acked == {str(dcmread(p).SOPInstanceUID) for p in normal}
            if case.expect == "context":
                assert _context_rejected(d.port, case), case.name
                outcomes[case.name] = "presentation context rejected"
                continue
            sent = send_files(d.port, case.paths, calling="HOSTILE", sop_class=case.sop_class,
                              transfer_syntaxes=[case.transfer_syntax])
            got = sorted({st for st in sent.statuses.values()}, key=lambda s: -1 if s is None else s)
            if case.expect == "refused":
                assert got and set(got) <= case.statuses, f"{case.name}: statuses {got}"
                outcomes[case.name] = "refused " + ",".join(f"0x{s:04X}" for s in got if s is not None)
            else:
                assert got == [0], f"{case.name}: statuses {got}"
                with_job[str(dcmread(case.paths[0], stop_before_pixels=True).SeriesInstanceUID)] = case
            assert echo(d.port), f"the daemon stopped answering after {case.name}"

        def settled() -> bool:
            jobs = {r[1]: r for r in job_rows(d)}
            return all(uid in jobs and jobs[uid][3] in TERMINAL for uid in [*with_job, normal_uid])

        normal_uid = str(dcmread(normal[0], stop_before_pixels=True).SeriesInstanceUID)
        wait_for(settled, timeout=120, what="every accepted series to settle")
        jobs = {r[1]: r for r in job_rows(d)}
        wrong = []
        for uid, case in with_job.items():
            _, _, _, state, reason = jobs[uid]
            outcomes[case.name] = f"{state}: {reason}" if reason else str(state)
            ok = state == case.expect and (case.reason in str(reason or "")) or state in case.accepted
            if not ok:
                wrong.append(f"{case.name}: expected {case.expect} ({case.reason!r}), got {state} ({reason!r})")
        assert wrong == [], "\n".join(wrong)
        # the normal study went through the whole pipeline: routed, stub model run, SEG and SR built
        job_id, _, _, state, _ = jobs[normal_uid]
        assert state == "delivered"
        assert d.sql(f"select pipeline, slices_kept > 0 from jobs where id = {job_id}") == [("ct_head", 1)]
        assert (d.workdir / "results" / f"job-{job_id:08d}" / "sr.dcm").is_file()
        assert (d.workdir / "results" / f"job-{job_id:08d}" / "seg.dcm").is_file()
        # nothing escaped the spool, whatever the UIDs said
        for (path,) in d.sql("select path from instances"):
            assert (d.spool / str(path)).resolve().is_relative_to(d.spool.resolve())
        assert d.proc is not None and d.proc.poll() is None
    finally:
        figures.hostile_inputs += len(outcomes) + 2  # + the raw-socket garbage and the abandoned association
        figures.hostile_outcomes.update(outcomes)
        d.stop()
    for name, outcome in outcomes.items():
        print(f"{name:50s} {outcome}")


def test_enhanced_multiframe_ct_is_processed_into_results(tmp_path: Path, figures: Figures) -> None:
    paths = enhanced_ct(tmp_path / "corpus", 9038)
    env = {**stub_models(tmp_path / "models"), "TRIAGE_NODE__SERIES__QUIET_PERIOD_S": "1",
           "TRIAGE_NODE__SERIES__MAX_JOB_ATTEMPTS": "1", "TRIAGE_NODE__WEB__ENABLED": "false"}
    d = new_daemon(figures, tmp_path / "d", **env).start()
    try:
        assert send_files(d.port, paths, sop_class=ENHANCED_CT).acked
        wait_for(lambda: [r[3] for r in job_rows(d)] and job_rows(d)[0][3] in TERMINAL, timeout=60)
        assert [r[3] for r in job_rows(d)] == ["delivered"], job_rows(d)
    finally:
        d.stop()
