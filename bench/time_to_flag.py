"""Time to flag: a synthetic head CT with a hemorrhage sent by storescu into a real ``triage-node serve``; from the last
instance stored to (a) the flag in the worklist (Job.flagged_at) and (b) SEG and SR accepted by Orthanc (outbox
delivered_at). Median of ``--runs`` (5) series, with the per-stage breakdown from Job.timings; then a 300-slice
thin-slice CT.

All times come from the daemon's own clock in its database (last_instance_at, created_at, started_at, flagged_at,
delivered_at), so sender and receiver clocks never mix. Models run when their cards and weights are in models/;
otherwise the pipeline runs without them (load, filter, commit only) and the JSON says so.

    .venv/bin/python bench/time_to_flag.py [--runs 5] [--thin-slices 300] [--skip-thin]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, WORK, PeerMissing, daemon, median, orthanc, storescu_folders, wait_for, write_result

PIPELINE_MODELS = ("ich", "ct_segmenter")


def available_models(wanted: tuple[str, ...] = PIPELINE_MODELS) -> list[str]:
    from triage_node.inference.registry import list_models

    ok = {m.name for m in list_models(ROOT / "models") if m.status == "ok"}
    return [m for m in wanted if m in ok]


def dwi_series(runs: int) -> list[Path]:
    """``runs`` copies (distinct UIDs) of one synthetic DWI with an infarct, as ``triage-lab synth dwi`` writes it."""
    from triage_lab.synth.dicom import write_series
    from triage_lab.synth.mr import make_dwi_case

    base = WORK / "data" / "dwi"
    folders = [base / f"run{i}" for i in range(runs)]
    if all(f.with_name(f.name + ".complete").exists() for f in folders):
        return folders
    case = make_dwi_case(11)
    for i, folder in enumerate(folders):
        if not folder.with_name(folder.name + ".complete").exists():
            write_series(folder, case.dwi, case.spacing, 8000 + i, modality="MR", study_description="MR BRAIN",
                         series_description="DWI b1000 TRACE", extra={"DiffusionBValue": 1000.0})
            folder.with_name(folder.name + ".complete").touch()
    return folders


def hemorrhage_series(n_slices: int, matrix: int, runs: int) -> list[Path]:
    """``runs`` copies (distinct UIDs) of one synthetic hemorrhage case, cached in bench/work/data."""
    from triage_lab.synth.cases import make_ct_case
    from triage_lab.synth.dicom import write_ct_series

    base = WORK / "data" / f"ich_{n_slices}x{matrix}"
    folders = [base / f"run{i}" for i in range(runs)]
    if all(f.with_name(f.name + ".complete").exists() for f in folders):
        return folders
    case = make_ct_case(7, ("intraparenchymal",), n_slices=n_slices, matrix=matrix)
    for i, folder in enumerate(folders):
        if not folder.with_name(folder.name + ".complete").exists():
            write_ct_series(folder, case.hu.astype(np.float32), case.spacing, seed=7000 + 100 * n_slices + i,
                            series_description=f"Head {case.spacing[0]:.1f}mm")
            folder.with_name(folder.name + ".complete").touch()
    return folders


def _seconds(a: Any, b: Any) -> float | None:
    import datetime as dt

    if a is None or b is None:
        return None
    ta, tb = (dt.datetime.fromisoformat(str(x)) for x in (a, b))
    return round((tb - ta).total_seconds(), 3)


def measure(folders: list[Path], models: list[str], with_orthanc: bool, tag: str, pipeline: str = "ct_head",
            precision: str = "auto", quiet_period_s: float = 30) -> dict[str, Any]:
    pipelines: dict[str, list[str]] = {"ct_head": [], "mr_swi": [], "mr_dwi": []}
    pipelines[pipeline] = models
    env = {
        "TRIAGE_NODE__MODELS__PIPELINES": json.dumps(pipelines),
        "TRIAGE_NODE__MODELS__PRECISION": precision,
        "TRIAGE_NODE__MODELS__THREADS": "2",
        # 30 (default): completion must come from the declared size, not the timer
        "TRIAGE_NODE__SERIES__QUIET_PERIOD_S": f"{quiet_period_s:g}",
    }
    runs: list[dict[str, Any]] = []
    ctx = orthanc(WORK / "ttf" / f"orthanc-{tag}") if with_orthanc else None
    pacs = ctx.__enter__() if ctx else None
    try:
        if pacs is not None:
            env["TRIAGE_NODE__DESTINATIONS"] = json.dumps([{
                "name": "pacs", "ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port,
                "backoff_initial_s": 1,
            }])
        with daemon(WORK / "ttf" / f"triage-node-{tag}", **env) as d:
            for i, folder in enumerate(folders):
                storescu_folders(d.port, [folder], "TRIAGE_NODE")

                def done(i: int = i) -> bool:
                    rows = d.sql("select state from jobs order by id")
                    return len(rows) > i and rows[i][0] in ("delivered", "failed", "rejected", "dead_letter",
                                                            "skipped")

                wait_for(done, timeout=600, interval=0.05, what="the job to finish")
                [(job_id, state, last, created, started, flagged, timings, reason)] = d.sql(
                    "select id, state, last_instance_at, created_at, started_at, flagged_at, timings, reason "
                    f"from jobs order by id limit 1 offset {i}"
                )
                delivered = d.sql(f"select kind, delivered_at from outbox where job_id = {job_id}")
                stages = json.loads(str(timings)) if timings else {}
                last_delivery = max((str(t) for _, t in delivered if t), default=None)
                run = {
                    "state": state, "reason": reason,
                    "completion_s": _seconds(last, created),
                    "queue_s": _seconds(created, started),
                    "stages_s": {k: round(float(v), 3) for k, v in stages.items()},
                    "flag_s": _seconds(last, flagged),
                    "results_sent": len(delivered),
                    "delivered_s": _seconds(last, last_delivery) if delivered and all(t for _, t in delivered)
                    else None,
                }
                runs.append(run)
                print(f"  {tag} run {i + 1}: flag {run['flag_s']} s, delivered {run['delivered_s']} s, "
                      f"stages {run['stages_s']}", flush=True)
    finally:
        if ctx is not None:
            ctx.__exit__(None, None, None)
    stage_names = sorted({k for r in runs for k in r["stages_s"]})
    flags = [r["flag_s"] for r in runs if r["flag_s"] is not None]
    delivered_all = [r["delivered_s"] for r in runs if r["delivered_s"] is not None]
    return {
        "runs": runs,
        "median": {
            "completion_s": median([r["completion_s"] for r in runs if r["completion_s"] is not None]),
            "queue_s": median([r["queue_s"] for r in runs if r["queue_s"] is not None]),
            **{f"{k}_s": round(median([r["stages_s"][k] for r in runs if k in r["stages_s"]]), 3)
               for k in stage_names},
            "flag_s": median(flags),
            "delivered_s": median(delivered_all) if delivered_all else None,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--thin-slices", type=int, default=300)
    ap.add_argument("--thin-matrix", type=int, default=256,
                    help="matrix of the thin-slice case (synth 512 cases have a ~480 mm field of view, so the blank-"
                    "slice filter drops every slice)")
    ap.add_argument("--skip-thin", action="store_true")
    ap.add_argument("--skip-dwi", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    models = available_models()
    print(f"models available for ct_head: {models or 'none (pipeline runs load, filter and commit only)'}")
    try:
        from common import tool

        tool("Orthanc")
        with_orthanc = True
    except PeerMissing as exc:
        print(f"Orthanc missing: {exc}; delivery is not measured")
        with_orthanc = False
    cases: dict[str, Any] = {}
    cases["head_40"] = {"slices": 40, "matrix": 256, **measure(hemorrhage_series(40, 256, args.runs), models,
                                                              with_orthanc, "40")}
    from triage_node.inference.registry import read_card

    if models and all("int8" in read_card(ROOT / "models", m).exports for m in models):
        cases["head_40_int8"] = {"slices": 40, "matrix": 256, "precision": "int8",
                                 **measure(hemorrhage_series(40, 256, args.runs), models, with_orthanc, "40i",
                                           precision="int8")}
    if not args.skip_thin:
        cases[f"thin_{args.thin_slices}"] = {
            "slices": args.thin_slices, "matrix": args.thin_matrix,
            **measure(hemorrhage_series(args.thin_slices, args.thin_matrix, 1), models, with_orthanc, "thin"),
        }
    dwi_models = available_models(("infarct",))
    if dwi_models and not args.skip_dwi:
        # The one pipeline with a model today: shows SEG + SR built and accepted by Orthanc.
        cases["MR DWI 44 slices"] = {"slices": None, "matrix": None, "models": dwi_models,
                           **measure(dwi_series(args.runs), dwi_models, with_orthanc, "dwi", pipeline="mr_dwi")}
    print("\ntime to flag (median, seconds from the last instance stored):")
    for name, c in cases.items():
        print(f"  {name}: {c['median']}")
    if not args.no_write:
        path = write_result("time_to_flag", {
            "models": models,
            "note": "no model weights in models/: the pipeline ran load, filter and commit only; SEG/SR are built "
            "and sent only when models produce findings" if not models else "",
            "cases": cases,
        })
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
