"""Crash safety: SIGKILL the daemon at seeded random moments in each stage, restart it, and prove nothing is lost or
delivered twice.

Phases: ``receive`` (mid-association, after k acknowledged C-STOREs), ``between`` (series complete, job queued),
``inference`` (job processing inside the model), ``build`` (SEG/SR being written), ``send`` (outbox items being
sent to Orthanc). The default run kills 6 times (every phase at least once); ``TRIAGE_NODE_FULL=1`` kills 32 times.
``TRIAGE_NODE_RELIABILITY_SEED`` picks another seed.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from peers import Daemon, wait_for
from peers_orthanc import start_orthanc
from pydicom import dcmread
from reliability_support import (
    FULL,
    Figures,
    SendLog,
    destination,
    job_rows,
    new_daemon,
    phantom_series,
    results_in_orthanc,
    send_files,
    stub_models,
)

# SQLite only: fault injection, doubled by transport already; PostgreSQL's is test_multinode.py
pytestmark = pytest.mark.reliability

PHASES = ("receive", "between", "inference", "build", "send")
KILLS = 32 if FULL else 6
SEED = int(os.environ.get("TRIAGE_NODE_RELIABILITY_SEED", "8"))
TERMINAL = {"delivered", "rejected", "skipped", "dead_letter"}


def _poll(predicate: Callable[[], object], timeout: float, interval: float = 0.005) -> bool:
    """True as soon as ``predicate`` holds, False at the deadline (the kill then happens anyway)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def _job_state(d: Daemon, series_uid: str) -> str | None:
    rows = [r for r in job_rows(d) if r[1] == series_uid]
    return str(rows[-1][3]) if rows else None


def _kill_in_phase(d: Daemon, phase: str, paths: list[Path], series_uid: str, rng: random.Random,
                   sent: SendLog) -> str:
    """Drive the daemon into ``phase`` for this series, SIGKILL it there; return what was hit."""
    results = d.workdir / "results"
    seen = {p.parent for p in results.glob("job-*/masks.npz")} if results.exists() else set()
    if phase == "receive":
        k = rng.randint(1, len(paths) - 2)
        # 10 s: a C-STORE is answered in milliseconds, and the sender the kill leaves waiting gives up sooner.
        sender = threading.Thread(target=send_files, args=(d.port, paths, sent), kwargs={"timeout_s": 10},
                                  daemon=True)
        sender.start()
        hit = _poll(lambda: len(sent.acked) >= k, timeout=60, interval=0.001)
        d.kill()
        sender.join(timeout=60)
        return f"receive after {len(sent.acked)} of {len(paths)} acks" if hit else "receive (missed)"
    send_files(d.port, paths, sent)
    if phase == "between":
        time.sleep(rng.uniform(0, 0.03))  # a random moment, not a condition: the job is queued within ms
        state = _job_state(d, series_uid)
        d.kill()
        return f"between (job {state})"
    if phase == "inference":
        hit = _poll(lambda: _job_state(d, series_uid) == "processing", timeout=30)
        time.sleep(rng.uniform(0.1, 0.6))  # inside the stub's 0.8 s of "inference"
        d.kill()
        return "inference" if hit else "inference (missed)"
    if phase == "build":
        hit = _poll(lambda: any(p.parent not in seen for p in results.glob("job-*/masks.npz")), timeout=30,
                    interval=0.002)
        time.sleep(rng.uniform(0, 0.15))
        d.kill()
        return "build" if hit else "build (missed)"
    assert phase == "send"
    hit = _poll(lambda: d.sql("select count(*) from outbox where state = 'sending'")[0][0] > 0, timeout=30,
                interval=0.002)
    time.sleep(rng.uniform(0, 0.05))
    d.kill()
    return "send" if hit else "send (missed)"


def test_sigkill_at_random_moments_loses_nothing_and_delivers_each_result_once(
    tmp_path: Path, figures: Figures, transport: str
) -> None:
    rng = random.Random(SEED)
    orthanc = start_orthanc(tmp_path / "pacs")
    env = {
        **stub_models(tmp_path / "models", delay_s=0.8),
        "TRIAGE_NODE__DESTINATIONS": destination(orthanc.dicom_port),
        # Series complete by their declared size; a long quiet period keeps a half-received series open over a kill.
        "TRIAGE_NODE__SERIES__QUIET_PERIOD_S": "600",
        "TRIAGE_NODE__WEB__ENABLED": "false",
        "TRIAGE_NODE__SCP__TRANSPORT": transport,
    }
    d = new_daemon(figures, tmp_path / "d", **env).start()
    acked: dict[str, Path] = {}
    studies: list[str] = []
    hits: list[str] = []
    try:
        for i in range(KILLS):
            phase = PHASES[i % len(PHASES)] if i < len(PHASES) else rng.choice(PHASES)
            paths = phantom_series(tmp_path / f"series{i:02d}", seed=5000 + i, slices=12 if phase == "receive" else 8)
            head = dcmread(paths[0], stop_before_pixels=True)
            series_uid = str(head.SeriesInstanceUID)
            studies.append(str(head.StudyInstanceUID))
            sent = SendLog()
            hits.append(_kill_in_phase(d, phase, paths, series_uid, rng, sent))
            figures.kills += 1
            figures.kills_by_phase[phase] += 1
            by_uid = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}
            acked.update({uid: by_uid[uid] for uid in sent.acked})
            d.start()
            if phase == "receive":  # the modality saw its association fail and sends the whole series again
                again = send_files(d.port, paths)
                assert again.acked == set(by_uid), f"resend after the kill was refused: {again.statuses}"
                acked.update(by_uid)
            wait_for(lambda uid=series_uid: _job_state(d, uid) in TERMINAL, timeout=90,
                     what=f"series {i} ({hits[-1]}) to settle")

        wait_for(lambda: {r[3] for r in job_rows(d)} <= TERMINAL, timeout=60, what="every job to settle")
        jobs = job_rows(d)
        # no job left non-terminal, and one job per series: nothing was processed twice as a new version
        assert [r[3] for r in jobs] == ["delivered"] * KILLS, jobs
        assert sorted(r[2] for r in jobs) == [1] * KILLS
        # every instance that got a success status is in the database and in the spool, byte for byte
        rows = {str(u): (str(p), int(s), str(h)) for u, p, s, h in
                d.sql("select sop_instance_uid, path, size, sha256 from instances where superseded = 0")}
        lost = []
        for uid in acked:
            if uid not in rows:
                lost.append(uid)
                continue
            rel, size, digest = rows[uid]
            stored = (d.spool / rel).read_bytes()
            assert len(stored) == size and hashlib.sha256(stored).hexdigest() == digest
        figures.instances_acked += len(acked)
        figures.instances_stored += len(acked) - len(lost)
        figures.instances_lost += len(lost)
        assert lost == []
        assert not list(d.spool.rglob("*.tmp"))
        # every complete series has exactly one delivered result set in the PACS
        assert d.sql("select distinct state from outbox") == [("delivered",)]
        counts = results_in_orthanc(orthanc)
        duplicates = {s: dict(c) for s, c in counts.items() if c["SEG"] != 1 or c["SR"] != 1}
        figures.duplicate_results += len(duplicates)
        figures.result_sets_delivered += sum(1 for s in studies if counts.get(s, {}).get("SR") == 1)
        assert sorted(counts) == sorted(studies), "a study lacks results in the PACS"
        assert duplicates == {}
    finally:
        d.stop()
        orthanc.stop()
    print(f"kills: {hits}")
