"""Ingest on every core: 4 associations (``TCP_NODELAY=1 storescu +sd``, one process each) into triage-node with ONE
receive process against TWO (``serve --roles receive`` twice on one port, ``scp.reuse_port``), on PostgreSQL and on
SQLite, side by side with tuned DCMTK storescp in the same run. Durability stays on in every triage-node setting:
fsync file + folder and the database commit before each success status.

Prints images/s and the ratio to DCMTK; writes bench/results/ingest_scale.json.

    .venv/bin/python bench/ingest_scale.py [--slices 1000] [--repeats 3] [--associations 4]
                                           [--work DIR --label NAME]

``--work`` puts every receiver's folders (DCMTK's and triage-node's spools and SQLite files) on another file system,
e.g. a journaled ext4 when the checkout's has none; ``--label`` then writes results/ingest_scale_NAME.json.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common import (
    NO_MODELS,
    WORK,
    Daemon,
    PeerMissing,
    filesystem,
    free_port,
    fresh,
    make_daemon,
    median,
    split_into_folders,
    storescp,
    storescu_folders,
    write_result,
)

SPLITS: dict[str, list[list[int]]] = {}  # setting -> per round, how many associations each receive process held


def association_split(port: int, after_s: float = 0.7) -> Callable[[], list[int]]:
    """Starts watching ``port``; the returned call gives how many established associations each process held
    ``after_s`` into the run (``ss``), largest first: how SO_REUSEPORT spread them."""
    import re
    import subprocess
    import threading
    from collections import Counter

    found: list[int] = []

    def sample() -> None:
        time.sleep(after_s)
        out = subprocess.run(["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True).stdout
        found.extend(sorted(Counter(re.findall(r"pid=(\d+)", out)).values(), reverse=True))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()

    def result() -> list[int]:
        thread.join()
        return found

    return result


INGEST_ENV = {**NO_MODELS, "TRIAGE_NODE__SERIES__QUIET_PERIOD_S": "3600", "TRIAGE_NODE__WEB__ENABLED": "false"}


@contextlib.contextmanager
def receivers(work: Path, url: str, processes: int) -> Iterator[list[Daemon]]:
    """``processes`` receive-only triage-node processes on one port, one database, one spool."""
    fresh(work)
    port = free_port()
    env = {**INGEST_ENV, "TRIAGE_NODE__STORAGE__DATABASE_URL": url, "TRIAGE_NODE__STORAGE__SPOOL_DIR":
           str(work / "spool"), "TRIAGE_NODE__SCP__PORT": str(port), "TRIAGE_NODE__SCP__REUSE_PORT": "true"}
    nodes = []
    try:
        for i in range(processes):
            d = make_daemon(work / f"recv{i}", **env)
            d.port, d.args = port, ("--roles", "receive")
            nodes.append(d.start())
        yield nodes
    finally:
        for d in nodes:
            d.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=1000)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--associations", type=int, default=4)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--only", default="", help="run only the settings that contain one of these (comma-separated)")
    ap.add_argument("--work", type=Path, default=WORK / "ingest_scale", help="where the receivers write")
    ap.add_argument("--label", default="", help="results/ingest_scale_LABEL.json instead of ingest_scale.json")
    args = ap.parse_args(argv)
    from common import ct_series
    from pgserver import start_server

    paths = ct_series(args.slices, args.size)
    n, total_mb = len(paths), sum(p.stat().st_size for p in paths) / 1e6
    folders = split_into_folders(paths, args.associations)
    pg = start_server()
    settings: dict[str, Callable[[str], float]] = {}

    def dcmtk(tag: str) -> float:
        work = args.work / f"dcmtk-{tag}"
        with storescp(work) as scp:
            s = storescu_folders(scp.port, folders, "STORESCP")
            stored = scp.count()
        shutil.rmtree(work, ignore_errors=True)
        if stored != n:
            raise RuntimeError(f"storescp stored {stored} of {n}")
        return s

    def triage(backend: str, processes: int) -> Callable[[str], float]:
        def run(tag: str) -> float:
            work = args.work / f"{backend}-{processes}-{tag}"
            if backend == "postgresql":
                if isinstance(pg, str):
                    raise PeerMissing(pg)
                db: contextlib.AbstractContextManager[str] = pg.database()
            else:
                db = contextlib.nullcontext(f"sqlite:///{work / 'db' / 'triage.db'}")
            with db as url, receivers(work, url, processes) as nodes:
                split = association_split(nodes[0].port)
                s = storescu_folders(nodes[0].port, folders, "TRIAGE_NODE")
                SPLITS.setdefault(f"triage-node {backend} x{processes}", []).append(split())
                stored = nodes[0].sql("select count(*) from instances")[0][0]
            shutil.rmtree(work, ignore_errors=True)
            if stored != n:
                raise RuntimeError(f"triage-node ({backend}, {processes}) stored {stored} of {n}")
            return s
        return run

    settings["dcmtk"] = dcmtk
    for backend in ("postgresql", "sqlite"):
        for processes in (1, 2):
            settings[f"triage-node {backend} x{processes}"] = triage(backend, processes)
    if args.only:
        keep = args.only.split(",")
        settings = {k: v for k, v in settings.items() if any(w in k for w in keep)}
    times: dict[str, list[float]] = {k: [] for k in settings}
    skipped: dict[str, str] = {}
    try:
        for rep in range(args.repeats):  # interleaved, so background load hits every setting alike
            for name, run in settings.items():
                if name in skipped:
                    continue
                try:
                    times[name].append(run(str(rep)))
                except PeerMissing as exc:
                    skipped[name] = str(exc)
                    continue
                split = f"  associations per process {SPLITS[name][-1]}" if name in SPLITS else ""
                print(f"  {name:28s} run {rep + 1}: {n / times[name][-1]:7.1f} images/s{split}", flush=True)
    finally:
        if not isinstance(pg, str):
            pg.stop("immediate")
            shutil.rmtree(pg.folder, ignore_errors=True)
    dc = median(times["dcmtk"]) if times.get("dcmtk") else float("nan")
    rows: list[dict[str, Any]] = []
    for name in settings:
        if name in skipped:
            rows.append({"receiver": name, "skipped": skipped[name]})
            continue
        s = median(times[name])
        rows.append({"receiver": name, "associations": args.associations, "seconds_median": round(s, 3),
                     "seconds_all": [round(t, 3) for t in times[name]], "images_per_s": round(n / s, 1),
                     "mb_per_s": round(total_mb / s, 1), "ratio_to_dcmtk": round(dc / s, 3),
                     **({"associations_per_process": SPLITS[name]} if name in SPLITS else {})})
    print(f"\ningest, {args.associations} associations: {n} slices of {args.size}x{args.size} ({total_mb:.0f} MB), "
          f"median of {args.repeats}")
    for row in rows:
        if "skipped" in row:
            print(f"{row['receiver']:28s} skipped: {row['skipped']}")
        else:
            print(f"{row['receiver']:28s} {row['images_per_s']:8.1f} images/s {row['mb_per_s']:7.1f} MB/s "
                  f"{row['ratio_to_dcmtk']:6.3f} x DCMTK")
    if not args.no_write and not args.only:  # a partial run never replaces the full record
        path = write_result("ingest_scale" + (f"_{args.label}" if args.label else ""), {
            "work_filesystem": filesystem(args.work),
            "slices": n, "matrix": args.size, "megabytes": round(total_mb, 1), "repeats": args.repeats,
            "associations": args.associations,
            "sender": "TCP_NODELAY=1 storescu +sd (one process per association)",
            "receivers": {
                "dcmtk": "TCP_NODELAY=1 storescp +B -pdu 131072 (no fsync)",
                "triage-node BACKEND xN": "N `serve --roles receive` processes on one port (SO_REUSEPORT), fsync "
                "file + folder and a database commit (PostgreSQL: synchronous_commit on, fsync on; SQLite: WAL, "
                "synchronous=FULL) before each success status",
            },
            "rows": rows,
        })
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
