"""Memory: peak RSS of a real ``triage-node serve`` while it receives and then processes a 1000-slice 512 x 512 CT
series (goal: under 1.5 GB). RSS is sampled from /proc every 20 ms: at rest after start, while receiving, and while
the job runs (load, filter, models when available, results).

    .venv/bin/python bench/memory.py [--slices 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from common import WORK, ct_series, daemon, rss_sampler, storescu_folders, wait_for, write_result
from time_to_flag import available_models

GOAL_BYTES = 1.5e9


class Peak:
    """Samples RSS in a thread; ``mark(phase)`` starts a new phase, ``peaks`` holds the maximum per phase."""

    def __init__(self, rss: Any, interval: float = 0.02):
        self.rss = rss
        self.interval = interval
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = self.rss()
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), value)

    def mark(self, phase: str) -> None:
        self.peaks[phase] = max(self.peaks.get(phase, 0), self.rss())
        self.phase = phase

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=1000)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    paths = ct_series(args.slices, 512, seed=9100, declare_count=True)
    models = available_models()
    env = {
        "TRIAGE_NODE__MODELS__PIPELINES": json.dumps({"ct_head": models, "mr_swi": [], "mr_dwi": []}),
        "TRIAGE_NODE__SERIES__QUIET_PERIOD_S": "30",
    }
    with daemon(WORK / "memory" / "triage-node", **env) as d:
        assert d.proc is not None
        with Peak(rss_sampler(d.proc.pid)) as peak:
            peak.mark("idle")
            peak.mark("receiving")
            t0 = time.perf_counter()
            storescu_folders(d.port, [paths[0].parent], "TRIAGE_NODE")
            t_recv = time.perf_counter() - t0
            peak.mark("processing")
            wait_for(lambda: d.sql("select state from jobs") and d.sql("select state from jobs")[0][0]
                     in ("delivered", "failed", "rejected", "skipped", "results_ready"),
                     timeout=900, interval=0.1, what="the job to finish")
            t_job = time.perf_counter() - t0 - t_recv
            peak.mark("after")
        [(state, kept, dropped, timings, reason)] = d.sql(
            "select state, slices_kept, slices_dropped, timings, reason from jobs")
    mb = {k: round(v / 2**20) for k, v in peak.peaks.items()}
    overall = max(peak.peaks.values())
    print(f"peak RSS by phase (MiB): {mb}")
    print(f"job {state} ({reason or ''}): {kept} kept / {dropped} dropped slices, timings {timings}")
    verdict = "met" if overall < GOAL_BYTES else "MISSED"
    print(f"peak {overall / 2**20:.0f} MiB, goal {GOAL_BYTES / 2**20:.0f} MiB: {verdict}")
    if not args.no_write:
        path = write_result("memory", {
            "slices": len(paths), "matrix": 512, "models": models,
            "peak_rss_mib_by_phase": mb, "peak_rss_mib": round(overall / 2**20),
            "goal_mib": round(GOAL_BYTES / 2**20), "goal_met": overall < GOAL_BYTES,
            "receive_s": round(t_recv, 2), "job_s": round(t_job, 2),
            "job": {"state": state, "reason": reason, "slices_kept": kept, "slices_dropped": dropped,
                    "timings": json.loads(str(timings)) if timings else None},
        })
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
