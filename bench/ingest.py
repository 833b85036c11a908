"""Ingest: 1000 synthetic 512 x 512 CT slices sent by ``TCP_NODELAY=1 storescu +sd`` (one association, then 4 in
parallel) into triage-node (a real ``triage-node serve``, durability on), tuned DCMTK storescp and Orthanc.

Prints images/s, MB/s and the ratio triage-node / DCMTK; writes bench/results/ingest.json. Every receiver is
measured in the same run, ``--repeats`` times per setting (median reported: the machine is shared and noisy).

    .venv/bin/python bench/ingest.py [--slices 1000] [--repeats 3] [--only triage-node,dcmtk,orthanc]
"""

from __future__ import annotations

import argparse
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


def _run_triage_node(folders: list[Path], n: int, tag: str) -> float:
    with daemon(WORK / "ingest" / f"triage-node-{tag}", **INGEST_ENV) as d:
        seconds = storescu_folders(d.port, folders, "TRIAGE_NODE")
        stored = d.sql("select count(*) from instances")[0][0]
    if stored != n:
        raise RuntimeError(f"triage-node stored {stored} of {n} instances")
    return seconds


def _run_dcmtk(folders: list[Path], n: int, tag: str) -> float:
    with storescp(WORK / "ingest" / f"dcmtk-{tag}") as scp:
        seconds = storescu_folders(scp.port, folders, "STORESCP")
        stored = scp.count()
    if stored != n:
        raise RuntimeError(f"storescp stored {stored} of {n} instances")
    return seconds


def _run_orthanc(folders: list[Path], n: int, tag: str) -> float:
    with orthanc(WORK / "ingest" / f"orthanc-{tag}") as o:
        seconds = storescu_folders(o.dicom_port, folders, o.ae_title)
        stored = o.instance_count()
    if stored != n:
        raise RuntimeError(f"Orthanc stored {stored} of {n} instances")
    return seconds


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
    if not args.no_write:
        path = write_result("ingest", {
            "slices": n, "matrix": args.size, "megabytes": round(total_mb, 1), "repeats": args.repeats,
            "sender": "TCP_NODELAY=1 storescu +sd (one process per association)",
            "receivers": {
                "triage-node": "triage-node serve, fsync file + dir, SQLite WAL synchronous=FULL commit before success",
                "dcmtk": "TCP_NODELAY=1 storescp +B -pdu 131072 (no fsync)",
                "orthanc": "Orthanc (Debian), default storage, DicomThreadsCount 4, MaximumPduLength 131072",
            },
            "rows": rows,
        })
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
