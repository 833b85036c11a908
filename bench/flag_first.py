"""Flag first: a 32-slice 512x512 head CT with a hemorrhage, sent by storescu without a declared size into a real
``triage-node serve`` with a 3 s quiet period; seconds from the last instance stored to (a) the worklist flag
(``Job.flagged_at - Job.last_instance_at``) and (b) the SEG and SR accepted by Orthanc. Targets (issue 16): flag
within quiet period + 1.5 s, SEG+SR within quiet period + 4 s.

The series is ``triage-lab synth OUT --kind ct-hemorrhage --subtypes intraparenchymal --slices 32 --no-count``
(256x256 from the example head CT) resampled to a 512x512 matrix over the same field of view, as a scanner's standard
head reconstruction; each run gets new UIDs. The machine's load average is recorded before and after (a shared machine
moves the figures).

    .venv/bin/python bench/flag_first.py [--runs 3] [--quiet 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, WORK, PeerMissing, fresh, tool, write_result
from time_to_flag import available_models, measure

SLICES, MATRIX = 32, 512


def series(runs: int, seed: int = 7, subtype: str = "intraparenchymal") -> list[Path]:
    from pydicom import dcmread
    from pydicom.uid import generate_uid
    from scipy import ndimage

    base = WORK / "data" / f"flag_first_{SLICES}x{MATRIX}_{subtype}_{seed}"
    folders = [base / f"run{i}" for i in range(runs)]
    if all(f.with_name(f.name + ".complete").exists() for f in folders):
        return folders
    src = fresh(base / "synth")
    subprocess.run([sys.executable, "-m", "triage_lab.cli", "synth", str(src), "--kind", "ct-hemorrhage",
                    "--slices", str(SLICES), "--seed", str(seed), "--subtypes", subtype, "--no-count"],
                   check=True, cwd=ROOT)
    files = sorted(src.glob("*.dcm"))
    for folder in folders:
        fresh(folder)
        study, ser = generate_uid(), generate_uid()
        for path in files:
            ds = dcmread(path)
            arr = ds.pixel_array
            zoom = MATRIX / arr.shape[0]
            big = ndimage.zoom(arr.astype(np.float32), zoom, order=1)
            ds.PixelData = np.round(big).astype(arr.dtype).tobytes()
            ds.Rows, ds.Columns = big.shape
            ds.PixelSpacing = [float(v) / zoom for v in ds.PixelSpacing]
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, ser
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(folder / path.name, enforce_file_format=True)
        folder.with_name(folder.name + ".complete").touch()
    return folders


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quiet", type=float, default=3.0, help="series.quiet_period_s")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    models = available_models()
    try:
        tool("Orthanc")
        with_orthanc = True
    except PeerMissing as exc:
        print(f"Orthanc missing: {exc}; delivery is not measured")
        with_orthanc = False
    folders = series(args.runs)
    load_before = os.getloadavg()
    result = measure(folders, models, with_orthanc, "flag-first", quiet_period_s=args.quiet)
    load_after = os.getloadavg()
    m = result["median"]
    targets = {"flag_s": args.quiet + 1.5, "delivered_s": args.quiet + 4.0}
    met = {k: (m.get(k) is not None and m[k] <= v) for k, v in targets.items()}
    print(f"\n{SLICES} slices {MATRIX}x{MATRIX}, quiet period {args.quiet:g} s, models {models}: "
          f"flag {m['flag_s']} s (target <= {targets['flag_s']:g}), SEG+SR in Orthanc {m['delivered_s']} s "
          f"(target <= {targets['delivered_s']:g}); load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    if not args.no_write:
        payload: dict[str, Any] = {
            "models": models, "slices": SLICES, "matrix": MATRIX, "quiet_period_s": args.quiet,
            "load_average_1min": {"before": round(load_before[0], 2), "after": round(load_after[0], 2)},
            "targets_s": targets, "met": met, **result,
        }
        print(f"wrote {write_result('flag_first', payload)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
