"""The receive path alone, in process: a StorageSCP on a fresh database and spool, ``storescu +sd`` sends N slices.

A quick loop for the speed work (no daemon start-up): prints images/s for 1 and K associations. Profile it with
``.venv/bin/py-spy record -o profile.svg -- .venv/bin/python bench/receive_loop.py``.

    .venv/bin/python bench/receive_loop.py [--slices 300] [--parallel 1,4]
"""

from __future__ import annotations

import argparse
import sys

from common import WORK, ct_series, free_port, fresh, split_into_folders, storescu_folders

from triage_node.config import SCP
from triage_node.receive.scp import ReceiveHooks, StorageSCP
from triage_node.receive.store import Spool
from triage_node.worklist.db import make_engine, migrate, session_factory


def run(n_slices: int, parallel: int) -> float:
    paths = ct_series(1000)[:n_slices] if n_slices <= 1000 else ct_series(n_slices)
    folders = split_into_folders(paths, parallel)
    work = fresh(WORK / "receive_loop")
    engine = make_engine(f"sqlite:///{work / 'db.sqlite'}")
    migrate(engine)
    cfg = SCP(host="127.0.0.1", port=free_port())
    scp = StorageSCP(cfg, Spool(work / "spool"), session_factory(engine), ReceiveHooks())
    scp.start()
    try:
        seconds = storescu_folders(scp.port, folders, "TRIAGE_NODE")
    finally:
        scp.stop()
    with engine.connect() as conn:
        stored = conn.exec_driver_sql("select count(*) from instances").scalar()
    engine.dispose()
    if stored != len(paths):
        raise RuntimeError(f"stored {stored} of {len(paths)}")
    return len(paths) / seconds


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--parallel", default="1,4")
    args = ap.parse_args()
    for par in (int(p) for p in args.parallel.split(",")):
        print(f"{par} association(s): {run(args.slices, par):.1f} images/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
