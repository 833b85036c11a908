"""Load: 8 DCMTK storescu senders at once (40 instances each by default, 250 with TRIAGE_NODE_FULL=1): everything is
stored, nothing refused; peak RSS reported. Associations beyond ``scp.max_associations`` get A-ASSOCIATE-RJ and the
daemon keeps serving."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from peers import dcmtk_env, find_tool, wait_for
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from reliability_support import FULL, NO_MODELS, Figures, echo, job_rows, new_daemon, phantom_series

# SQLite only: fault injection, doubled by transport already; PostgreSQL's is test_multinode.py
pytestmark = pytest.mark.reliability

SENDERS = 8
PER_SENDER = 250 if FULL else 40
MAX_ASSOCIATIONS = 10


def _vm(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def test_eight_concurrent_senders_are_all_stored_and_excess_associations_are_rejected(
    tmp_path: Path, figures: Figures, transport: str
) -> None:
    folders = []
    for i in range(SENDERS):
        phantom_series(tmp_path / f"sender{i}", seed=9500 + i, slices=PER_SENDER, size=256)
        folders.append(tmp_path / f"sender{i}")
    env = {**NO_MODELS, "TRIAGE_NODE__WEB__ENABLED": "false",
           "TRIAGE_NODE__SCP__MAX_ASSOCIATIONS": str(MAX_ASSOCIATIONS), "TRIAGE_NODE__SCP__TRANSPORT": transport}
    d = new_daemon(figures, tmp_path / "d", **env).start()
    try:
        assert d.proc is not None
        rss_idle = _vm(d.proc.pid, "VmRSS")
        exe = find_tool("storescu")
        t0 = time.monotonic()
        senders = [subprocess.Popen([exe, "-aet", f"CT{i}", "-aec", "TRIAGE_NODE", "+sd", "127.0.0.1", str(d.port),
                                     str(folder)], env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True)
                   for i, folder in enumerate(folders)]
        outputs = [s.communicate(timeout=600)[0] for s in senders]
        elapsed = time.monotonic() - t0
        assert [s.returncode for s in senders] == [0] * SENDERS, outputs
        total = SENDERS * PER_SENDER
        assert d.sql("select count(*), count(distinct sop_instance_uid) from instances") == [(total, total)]
        assert d.sql("select count(*) from series where received_instances = expected_instances") == [(SENDERS,)]
        assert " refused " not in d.log()
        peak_kb = _vm(d.proc.pid, "VmHWM")

        # over the limit: hold MAX_ASSOCIATIONS open, the next one is rejected (transient, local limit exceeded)
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(Verification)
        held = [ae.associate("127.0.0.1", d.port, ae_title="TRIAGE_NODE") for _ in range(MAX_ASSOCIATIONS)]
        try:
            assert all(a.is_established for a in held)
            extra = ae.associate("127.0.0.1", d.port, ae_title="TRIAGE_NODE")
            assert extra.is_rejected and not extra.is_established
        finally:
            for a in held:
                a.release()
        wait_for(lambda: echo(d.port), timeout=30, what="the daemon to serve again after the excess association")
        wait_for(lambda: len(job_rows(d)) == SENDERS and {r[3] for r in job_rows(d)} == {"delivered"}, timeout=300,
                 what="every loaded series to be processed")
        figures.instances_acked += total
        figures.instances_stored += total
        figures.load.update({
            "senders": SENDERS, "instances_per_sender": PER_SENDER, "instances_stored": total, "refused": 0,
            "instance_kib": 256 * 256 * 2 // 1024, "seconds": round(elapsed, 2),
            "instances_per_s": round(total / elapsed, 1), "rss_idle_mib": round(rss_idle / 1024, 1),
            "peak_rss_mib": round(peak_kb / 1024, 1), "max_associations": MAX_ASSOCIATIONS,
            "excess_association": "A-ASSOCIATE-RJ",
        })
    finally:
        d.stop()
    print(figures.load)
