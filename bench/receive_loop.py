"""The receive path alone, in process: a StorageSCP on a fresh database and spool, ``storescu +sd`` sends N slices;
tuned DCMTK ``storescp`` receives the same folders in the same run, interleaved, for the ratio.

A quick loop for the speed work (no daemon start-up): prints images/s for 1 and K associations. Profile it with
``.venv/bin/py-spy record -o profile.svg -- .venv/bin/python bench/receive_loop.py --only triage-node``.

    .venv/bin/python bench/receive_loop.py [--slices 300] [--parallel 1,4] [--repeats 1] [--max-pdu 262144]
                                           [--backend sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from common import (
    WORK,
    PeerMissing,
    ct_series,
    free_port,
    fresh,
    median,
    split_into_folders,
    storescp,
    storescu_folders,
)
from sqlalchemy import Engine, event

from triage_node.config import SCP
from triage_node.receive.scp import ReceiveHooks, StorageSCP
from triage_node.receive.spool import Spool
from triage_node.worklist.db import make_engine, migrate, session_factory

CPU_MS: list[float] = []
SYS_MS: list[float] = []
SERVER_MS: list[float] = []  # PostgreSQL's processes, per image


def pg_cpu_s() -> float:
    """CPU seconds used so far by every PostgreSQL process on this machine (the bench's throwaway server)."""
    total = 0
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if (proc / "comm").read_text().startswith("postgres"):
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def _no_durability(engine: Engine) -> None:
    """For the CPU view only (``--durability off``): no fsync of files, folders or the SQLite WAL."""
    import triage_node.receive.spool as spool

    spool.os = SimpleNamespace(**{**vars(os), "fsync": lambda fd: None})  # type: ignore[attr-defined]

    @event.listens_for(engine, "connect")
    def _sync_off(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.execute("PRAGMA synchronous=OFF")


def run_triage_node(
    folders: list[Path], n: int, max_pdu: int, durable: bool, transport: str = "fast", pg: Any = None
) -> float:
    """One round; on PostgreSQL when ``pg`` (a started ``pgserver.PostgresServer``) is given, else on SQLite."""
    work = fresh(WORK / "receive_loop")
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(pg.database()) if pg is not None else f"sqlite:///{work / 'db.sqlite'}"
        return _round(folders, n, max_pdu, durable, transport, work, url, pg)


def _round(
    folders: list[Path], n: int, max_pdu: int, durable: bool, transport: str, work: Path, url: str, pg: Any
) -> float:
    engine = make_engine(url)
    if not durable:
        if pg is not None:
            raise SystemExit("--durability off is for SQLite only")
        _no_durability(engine)
    migrate(engine)
    cfg = SCP(host="127.0.0.1", port=free_port(), max_pdu=max_pdu, transport=transport)  # type: ignore[arg-type]
    scp = StorageSCP(cfg, Spool(work / "spool"), session_factory(engine), ReceiveHooks())
    scp.start()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    server0 = pg_cpu_s() if pg is not None else 0.0
    try:
        seconds = storescu_folders(scp.port, folders, "TRIAGE_NODE")
    finally:
        scp.stop()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    if pg is not None:
        SERVER_MS.append((pg_cpu_s() - server0) * 1e3 / n)
    # This process's CPU per image (storescu is another process): steadier than images/s on a shared machine.
    CPU_MS.append((cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) * 1e3 / n)
    SYS_MS.append((cpu1.ru_stime - cpu0.ru_stime) * 1e3 / n)
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("select count(*) from instances").scalar()
    engine.dispose()
    if stored != n:
        raise RuntimeError(f"stored {stored} of {n}")
    return n / seconds


def run_dcmtk(folders: list[Path], n: int) -> float:
    with storescp(WORK / "receive_loop_dcmtk") as scp:
        seconds = storescu_folders(scp.port, folders, "STORESCP")
        stored = scp.count()
    if stored != n:
        raise RuntimeError(f"storescp stored {stored} of {n}")
    return n / seconds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--parallel", default="1,4")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--max-pdu", type=int, default=SCP().max_pdu, help="scp.max_pdu of triage-node (0: unlimited)")
    ap.add_argument("--only", default="triage-node,dcmtk")
    ap.add_argument(
        "--durability",
        choices=("on", "off"),
        default="on",
        help="off: no fsync at all in triage-node, to see its CPU-bound path (never in production)",
    )
    ap.add_argument(
        "--transport",
        choices=("fast", "stock"),
        default="fast",
        help="stock: scp.transport stock, every association on plain pynetdicom (for A/B)",
    )
    ap.add_argument("--floor", action="store_true", help="also measure the disk's durability floor in this run")
    ap.add_argument(
        "--backend",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="postgresql: a throwaway server (tests/support/pgserver.py), a fresh database each round",
    )
    args = ap.parse_args()
    receivers = [r for r in args.only.split(",") if r]
    paths = ct_series(1000)[: args.slices] if args.slices <= 1000 else ct_series(args.slices)
    pg = None
    if args.backend == "postgresql":
        from pgserver import start_server

        pg = start_server()
        if isinstance(pg, str):
            raise SystemExit(pg)
    if args.floor:
        from ingest import durability_floor

        print(f"durability floor now: {durability_floor(paths[0], 100)}", flush=True)
    try:
        for par in (int(p) for p in args.parallel.split(",")):
            folders = split_into_folders(paths, par)
            rates: dict[str, list[float]] = {r: [] for r in receivers}
            CPU_MS.clear()
            SYS_MS.clear()
            SERVER_MS.clear()
            for _ in range(args.repeats):
                for r in receivers:
                    try:
                        if r == "triage-node":
                            rate = run_triage_node(
                                folders, len(paths), args.max_pdu, args.durability == "on", args.transport, pg
                            )
                        else:
                            rate = run_dcmtk(folders, len(paths))
                    except PeerMissing as exc:
                        print(f"{r}: skipped ({exc})")
                        continue
                    rates[r].append(rate)
            parts = [f"{r} {median(v):.1f} images/s" for r, v in rates.items() if v]
            tn, dc = median(rates.get("triage-node", [])), median(rates.get("dcmtk", []))
            ratio = f" = {tn / dc:.3f}x DCMTK" if tn == tn and dc == dc else ""
            cpu = ""
            if CPU_MS:
                cpu = f" (triage-node CPU {median(CPU_MS):.2f} ms/image, {median(SYS_MS):.2f} of it in the kernel"
                cpu += f"; PostgreSQL {median(SERVER_MS):.2f} ms/image)" if SERVER_MS else ")"
            print(f"{par} association(s), {len(paths)} slices: " + ", ".join(parts) + ratio + cpu, flush=True)
    finally:
        if pg is not None:
            pg.stop("immediate")
            shutil.rmtree(pg.folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
