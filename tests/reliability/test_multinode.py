"""Several nodes on one PostgreSQL: 2 receive processes sharing one port (SO_REUSEPORT), 2 work processes, 1 send
process and 1 web process, all on one shared spool and one database, under load and faults:

- 8 DCMTK storescu senders at once (30 instances each by default, 250 with TRIAGE_NODE_FULL=1), spread over the
  receivers by the kernel;
- SIGKILL of a receiver in the middle of the associations; it is restarted and every sender sends its series again;
- SIGKILL of a worker in the middle of inference; its job is taken over by the other worker when its lease runs out,
  and the worker is restarted;
- PostgreSQL stopped for 10 s while jobs run.

Expected: 0 instances lost; one job per series, each done exactly once ("job N done" once in all worker logs, every
job delivered); each SEG and SR exactly once in Orthanc; each worker did at least a quarter of the jobs.

A second test: two workers on one database claim jobs and none is processed twice.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from peers import Daemon, dcmtk_env, find_tool, free_port, wait_for
from peers_orthanc import start_orthanc
from reliability_support import FULL, Figures, destination, new_daemon, phantom_series, results_in_orthanc, stub_models

pytestmark = pytest.mark.reliability

SENDERS = 8
PER_SENDER = 250 if FULL else 30
DONE = re.compile(r"job (\d+) done: ")


def _done_jobs(d: Daemon) -> Counter[int]:
    return Counter(int(m.group(1)) for m in DONE.finditer(d.log()))


def _node_of(d: Daemon) -> str:
    assert d.proc is not None
    return f":{d.proc.pid}:"


class Cluster:
    def __init__(self, tmp: Path, figures: Figures, db_url: str, orthanc_port: int, delay_s: float):
        self.tmp, self.figures = tmp, figures
        self.port = free_port()
        self.env = {
            **stub_models(tmp / "models", delay_s=delay_s),
            "TRIAGE_NODE__STORAGE__DATABASE_URL": db_url,
            "TRIAGE_NODE__STORAGE__SPOOL_DIR": str(tmp / "shared" / "spool"),
            "TRIAGE_NODE__STORAGE__LEASE_S": "8",
            "TRIAGE_NODE__SCP__PORT": str(self.port),
            "TRIAGE_NODE__SCP__REUSE_PORT": "true",
            "TRIAGE_NODE__SERIES__QUIET_PERIOD_S": "30",  # the series declare their size: complete by count
            "TRIAGE_NODE__DESTINATIONS": destination(orthanc_port),
        }
        self.nodes: list[Daemon] = []

    def node(self, name: str, roles: str) -> Daemon:
        env = dict(self.env)
        if roles != "web":
            env["TRIAGE_NODE__WEB__ENABLED"] = "false"
        d = new_daemon(self.figures, self.tmp / name, **env)
        d.port = self.port
        d.args = ("--roles", roles)
        self.nodes.append(d)
        return d

    def stop(self) -> None:
        for d in self.nodes:
            d.stop(timeout=30)


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[object]:
    with start_orthanc(tmp_path / "orthanc") as o:
        yield o


def _storescu(port: int, folders: list[Path]) -> list[subprocess.Popen[str]]:
    exe = find_tool("storescu")
    return [subprocess.Popen([exe, "-aet", f"CT{i}", "-aec", "TRIAGE_NODE", "+sd", "127.0.0.1", str(port), str(f)],
                             env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i, f in enumerate(folders)]


@pytest.mark.timeout(1800)
def test_a_cluster_on_postgresql_loses_nothing_and_does_every_job_once(
    tmp_path: Path, figures: Figures, postgres, orthanc  # type: ignore[no-untyped-def]
) -> None:
    folders = []
    for i in range(SENDERS):
        phantom_series(tmp_path / f"sender{i}", seed=9700 + i, slices=PER_SENDER, size=64)
        folders.append(tmp_path / f"sender{i}")
    total = SENDERS * PER_SENDER
    with postgres.database(migrated=False) as url:  # the nodes migrate it, all starting at once
        c = Cluster(tmp_path, figures, url, orthanc.dicom_port, delay_s=2.0)
        recv = [c.node("recv1", "receive"), c.node("recv2", "receive")]
        work = [c.node("work1", "work"), c.node("work2", "work")]
        send, web = c.node("send", "send"), c.node("web", "web")
        try:
            for d in c.nodes:
                d.start(wait=False)
            for d in c.nodes:
                wait_for(d._ready, timeout=600, interval=0.2, what=f"{d.workdir.name} to be ready")

            # load, and a receiver killed in the middle of it
            t0 = time.monotonic()
            senders = _storescu(c.port, folders)
            wait_for(lambda: recv[0].sql("select count(*) from instances")[0][0] >= total // 3, timeout=300,
                     interval=0.02, what="a third of the load")
            recv[0].kill()
            for s in senders:
                s.communicate(timeout=600)
            recv[0].start(timeout=600)
            # every sender sends its series again (the ones cut off by the kill, and the rest: stored once)
            for s in _storescu(c.port, folders):
                out = s.communicate(timeout=600)[0]
                assert s.returncode == 0, out
            ingest_s = time.monotonic() - t0
            assert recv[0].sql("select count(*), count(distinct sop_instance_uid) from instances") == [(total, total)]

            # a worker killed in the middle of inference
            def processing_on(d: Daemon) -> bool:
                return bool(d.sql(f"select id from jobs where state = 'processing' and claimed_by like "
                                  f"'%{_node_of(d)}%'"))

            wait_for(lambda: processing_on(work[0]), timeout=120, interval=0.05, what="work1 inside a job")
            time.sleep(0.5)
            work[0].kill()
            work[0].start(wait=False)

            # PostgreSQL away for 10 s while jobs run
            wait_for(lambda: work[0].sql("select count(*) from jobs where state = 'processing'")[0][0] > 0,
                     timeout=120, interval=0.05, what="a job in processing before the outage")
            postgres.stop("fast")
            time.sleep(10)
            postgres.start()
            postgres.wait_ready()

            def settled() -> bool:
                rows = send.sql("select state from jobs")
                return len(rows) == SENDERS and {r[0] for r in rows} == {"delivered"}

            wait_for(settled, timeout=600, interval=0.5, what="every job delivered")
            jobs = send.sql("select j.id, s.series_instance_uid, j.version, j.attempts from jobs j "
                            "join series s on s.id = j.series_id order by j.id")
            assert len({r[1] for r in jobs}) == SENDERS and {r[2] for r in jobs} == {1}
            done = [_done_jobs(w) for w in work]
            per_job = done[0] + done[1]
            assert sorted(per_job) == sorted(r[0] for r in jobs) and set(per_job.values()) == {1}, per_job
            # Both workers took part (how many each gets depends on scheduling and on which one was killed).
            for w, counts in zip(work, done, strict=True):
                assert sum(counts.values()) >= 1, f"{w.workdir.name} did no job"
            in_pacs = results_in_orthanc(orthanc)
            assert len(in_pacs) == SENDERS
            assert all(v == Counter({"SEG": 1, "SR": 1}) for v in in_pacs.values()), in_pacs
            assert "taken over from" in work[0].log() + work[1].log()
            with urllib.request.urlopen(f"http://127.0.0.1:{web.web_port}/healthz", timeout=10) as r:
                assert r.status == 200
            figures.instances_acked += total
            figures.instances_stored += total
            figures.result_sets_delivered += SENDERS
            figures.kills += 2
            figures.kills_by_phase["cluster:receive"] += 1
            figures.kills_by_phase["cluster:inference"] += 1
            figures.load["cluster"] = {
                "nodes": "2 receive, 2 work, 1 send, 1 web on PostgreSQL", "instances": total,
                "ingest_with_resend_s": round(ingest_s, 1), "jobs_per_worker": [sum(d.values()) for d in done],
                "postgres_outage_s": 10, "lost": 0, "duplicates_in_pacs": 0,
            }
        finally:
            c.stop()


@pytest.mark.timeout(600)
def test_two_workers_on_one_database_never_process_a_job_twice(
    tmp_path: Path, figures: Figures, postgres, orthanc  # type: ignore[no-untyped-def]
) -> None:
    n = 10
    with postgres.database() as url:
        c = Cluster(tmp_path, figures, url, orthanc.dicom_port, delay_s=0.5)
        recv = c.node("recv", "receive,send")
        work = [c.node("work1", "work"), c.node("work2", "work")]
        try:
            for d in c.nodes:
                d.start(wait=False)
            for d in c.nodes:
                wait_for(d._ready, timeout=600, interval=0.2, what=f"{d.workdir.name} to be ready")
            folders = []
            for i in range(n):
                phantom_series(tmp_path / f"s{i}", seed=9800 + i, slices=6, size=32)
                folders.append(tmp_path / f"s{i}")
            threads = [threading.Thread(target=lambda f=f: _storescu(c.port, [f])[0].communicate(timeout=120))
                       for f in folders]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wait_for(lambda: [r[0] for r in recv.sql("select state from jobs")] == ["delivered"] * n, timeout=300,
                     interval=0.3, what="every job delivered")
            done = [_done_jobs(w) for w in work]
            both = done[0] + done[1]
            assert len(both) == n and set(both.values()) == {1}, done  # each job done once, by one worker
            assert not set(done[0]) & set(done[1])
            assert all(done), f"one worker did nothing: {done}"
            assert all(v == Counter({"SEG": 1, "SR": 1}) for v in results_in_orthanc(orthanc).values())
        finally:
            c.stop()
