"""Ingest: 1000 synthetic 512 x 512 CT slices sent by ``TCP_NODELAY=1 storescu +sd`` (one association, then 4 in
parallel) into triage-node (a real ``triage-node serve``, durability on), tuned DCMTK storescp and Orthanc.

Prints images/s, MB/s and the ratio triage-node / DCMTK; writes bench/results/ingest.json. Every receiver is
measured in the same run, ``--repeats`` times per setting (median reported: the machine is shared and noisy).

    .venv/bin/python bench/ingest.py [--slices 1000] [--repeats 3] [--only triage-node,dcmtk,orthanc]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    NO_MODELS,
    WORK,
    PeerMissing,
    daemon,
    median,
    orthanc,
    split_into_folders,
    storescp,
    storescu_folders,
    write_result,
)

RECEIVERS = ("triage-node", "dcmtk", "orthanc")

# No job may start while the next run sends: no declared count in the data, and a quiet period longer than the bench.
INGEST_ENV = {**NO_MODELS, "TRIAGE_NODE__SERIES__QUIET_PERIOD_S": "3600", "TRIAGE_NODE__LOGGING__LEVEL": "INFO"}


def _done(work: Path, seconds: float) -> float:
    """A run that stored everything leaves nothing behind: 18 runs of 525 MB each had filled `bench/work` with
    13 GB, and creating a file in that part of the file system had become ten times slower (for every receiver)."""
    shutil.rmtree(work, ignore_errors=True)
    return seconds


def _run_triage_node(folders: list[Path], n: int, tag: str) -> float:
    work = WORK / "ingest" / f"triage-node-{tag}"
    with daemon(work, **INGEST_ENV) as d:
        seconds = storescu_folders(d.port, folders, "TRIAGE_NODE")
        stored = d.sql("select count(*) from instances")[0][0]
    if stored != n:
        raise RuntimeError(f"triage-node stored {stored} of {n} instances")
    return _done(work, seconds)


def _run_dcmtk(folders: list[Path], n: int, tag: str) -> float:
    work = WORK / "ingest" / f"dcmtk-{tag}"
    with storescp(work) as scp:
        seconds = storescu_folders(scp.port, folders, "STORESCP")
        stored = scp.count()
    if stored != n:
        raise RuntimeError(f"storescp stored {stored} of {n} instances")
    return _done(work, seconds)


def _run_orthanc(folders: list[Path], n: int, tag: str) -> float:
    work = WORK / "ingest" / f"orthanc-{tag}"
    with orthanc(work) as o:
        seconds = storescu_folders(o.dicom_port, folders, o.ae_title)
        stored = o.instance_count()
    if stored != n:
        raise RuntimeError(f"Orthanc stored {stored} of {n} instances")
    return _done(work, seconds)


def durability_floor(sample: Path, n: int = 200) -> dict[str, float]:
    """What one association cannot beat while every instance is durable before its response: per instance, write the
    file and fsync it, rename it and fsync the folder, commit one small row in SQLite (WAL, synchronous=FULL).
    -> milliseconds per step (median) and the images/s bound they make together."""
    import os
    import sqlite3
    import time

    from common import fresh

    data = sample.read_bytes()
    work = fresh(WORK / "ingest" / "floor")
    db = sqlite3.connect(work / "floor.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (path TEXT)")
    dir_fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    steps: dict[str, list[float]] = {"write_fsync_ms": [], "rename_dir_fsync_ms": [], "sqlite_commit_ms": []}
    try:
        for i in range(n):
            t0 = time.perf_counter()
            fd = os.open(work / f".{i}.tmp", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, data)
            os.fsync(fd)
            os.close(fd)
            t1 = time.perf_counter()
            os.replace(work / f".{i}.tmp", work / f"{i}.dcm")
            os.fsync(dir_fd)
            t2 = time.perf_counter()
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?)", (f"{i}.dcm",))
            db.execute("COMMIT")
            t3 = time.perf_counter()
            steps["write_fsync_ms"].append((t1 - t0) * 1e3)
            steps["rename_dir_fsync_ms"].append((t2 - t1) * 1e3)
            steps["sqlite_commit_ms"].append((t3 - t2) * 1e3)
    finally:
        os.close(dir_fd)
        db.close()
    out = {k: round(median(v), 2) for k, v in steps.items()}
    total = sum(out.values())
    out["total_ms"] = round(total, 2)
    out["images_per_s_bound_one_association"] = round(1000 / total, 1)
    return out


RUNNERS: dict[str, Callable[[list[Path], int, str], float]] = {
    "triage-node": _run_triage_node,
    "dcmtk": _run_dcmtk,
    "orthanc": _run_orthanc,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=1000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--parallel", default="1,4", help="association counts to measure (comma separated)")
    ap.add_argument("--only", default=",".join(RECEIVERS))
    ap.add_argument("--no-write", action="store_true", help="print only; do not write bench/results/ingest.json")
    args = ap.parse_args(argv)
    from common import ct_series

    paths = ct_series(args.slices, args.size)
    n = len(paths)
    total_mb = sum(p.stat().st_size for p in paths) / 1e6
    receivers = [r for r in args.only.split(",") if r]
    floor = durability_floor(paths[0])
    print(f"durability floor, one association: {floor}", flush=True)
    rows: list[dict[str, Any]] = []
    for par in (int(p) for p in args.parallel.split(",")):
        folders = [paths[0].parent] if par == 1 else split_into_folders(paths, par)
        # Interleave the receivers within each repeat so background load hits all of them alike.
        times: dict[str, list[float]] = {r: [] for r in receivers}
        skipped: dict[str, str] = {}
        for rep in range(args.repeats):
            for r in receivers:
                if r in skipped:
                    continue
                try:
                    s = RUNNERS[r](folders, n, f"{par}x{rep}")
                except PeerMissing as exc:
                    skipped[r] = str(exc)
                    continue
                times[r].append(s)
                print(f"  {r:12s} {par} assoc  run {rep + 1}: {n / s:7.1f} images/s", flush=True)
        dcmtk = median(times.get("dcmtk", []))
        for r in receivers:
            if r in skipped:
                rows.append({"receiver": r, "associations": par, "skipped": skipped[r]})
                continue
            s = median(times[r])
            rows.append({
                "receiver": r, "associations": par, "seconds_median": round(s, 3),
                "seconds_all": [round(t, 3) for t in times[r]],
                "images_per_s": round(n / s, 1), "mb_per_s": round(total_mb / s, 1),
                "ratio_to_dcmtk": round(dcmtk / s, 3) if dcmtk == dcmtk else None,
            })
    print(f"\ningest: {n} slices of {args.size}x{args.size} ({total_mb:.0f} MB), median of {args.repeats}")
    print(f"{'receiver':12s} {'assoc':>5s} {'images/s':>9s} {'MB/s':>7s} {'x DCMTK':>8s}")
    for row in rows:
        if "skipped" in row:
            print(f"{row['receiver']:12s} {row['associations']:5d}  skipped: {row['skipped']}")
        else:
            print(f"{row['receiver']:12s} {row['associations']:5d} {row['images_per_s']:9.1f} {row['mb_per_s']:7.1f}"
                  f" {row['ratio_to_dcmtk'] or float('nan'):8.2f}")
    print(f"durability floor (fsync file + fsync folder + SQLite commit, serial): {floor['total_ms']} ms per image "
          f"= at most {floor['images_per_s_bound_one_association']} images/s on one association")
    if not args.no_write:
        path = write_result("ingest", {
            "slices": n, "matrix": args.size, "megabytes": round(total_mb, 1), "repeats": args.repeats,
            "sender": "TCP_NODELAY=1 storescu +sd (one process per association)",
            "receivers": {
                "triage-node": "triage-node serve, fsync file + dir, SQLite WAL synchronous=FULL commit before success",
                "dcmtk": "TCP_NODELAY=1 storescp +B -pdu 131072 (no fsync)",
                "orthanc": "Orthanc (Debian), default storage, DicomThreadsCount 4, MaximumPduLength 131072",
            },
            "durability_floor": floor,
            "rows": rows,
        })
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
