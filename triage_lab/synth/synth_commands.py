"""``triage-lab synth OUTDIR``: write synthetic DICOM series for tests, demos and benchmarks."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from triage_lab.synth.dicom import resample_slices, write_series
from triage_lab.synth.phantom import phantom_head
from triage_lab.synth.storage import STORAGES

KINDS = ("ct", "ct-hemorrhage", "phantom", "swi", "dwi")


def run(args: argparse.Namespace) -> int:
    out = Path(args.outdir)
    kind = args.kind
    seed = args.seed
    if args.unsigned and args.storage:
        raise SystemExit("give either --unsigned or --storage")
    common = {"unsigned": args.unsigned, "storage": args.storage, "declare_count": not args.no_count}
    if kind == "phantom":
        hu, spacing = phantom_head(args.slices or 40, args.size or 256)
        paths = write_series(out, hu, spacing, seed, **common)
    elif kind == "ct":
        from triage_lab.synth.headct import axial_head_ct

        head = axial_head_ct()
        hu, spacing = head.hu.astype(np.float32), head.spacing
        if args.slices:
            hu, spacing = resample_slices(hu, spacing, args.slices)
        paths = write_series(out, hu, spacing, seed, **common)
    elif kind == "ct-hemorrhage":
        from triage_lab.synth.cases import make_ct_case

        case = make_ct_case(seed, subtypes=args.subtypes if args.subtypes is not None else None, n_slices=args.slices)
        paths = write_series(out, np.asarray(case.hu, dtype=np.float32), case.spacing, seed, **common)
    elif kind == "swi":
        from triage_lab.synth.mr import make_swi_case

        swi = make_swi_case(seed, n_bleeds=args.bleeds)
        paths = write_series(
            out,
            swi.volume,
            swi.spacing,
            seed,
            modality="MR",
            study_description="MR BRAIN",
            series_description="SWI",
            declare_count=not args.no_count,
        )
    else:
        from triage_lab.synth.mr import make_dwi_case

        dwi = make_dwi_case(seed, source=args.dwi_source)
        paths = write_series(
            out,
            dwi.dwi,
            dwi.spacing,
            seed,
            modality="MR",
            study_description="MR BRAIN",
            series_description="DWI b1000 TRACE",
            declare_count=not args.no_count,
            extra={"DiffusionBValue": 1000.0},
        )
    print(f"wrote {len(paths)} instance(s) to {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("synth", help="write a synthetic DICOM series (never real patient data)")
    sp.add_argument("outdir")
    sp.add_argument("--kind", choices=KINDS, default="ct")
    sp.add_argument("--seed", type=int, default=1)
    sp.add_argument("--slices", type=int, default=None, help="resample to this many slices")
    sp.add_argument("--size", type=int, default=None, help="in-plane size (phantom only)")
    sp.add_argument("--subtypes", nargs="*", help="hemorrhage subtypes (ct-hemorrhage)")
    sp.add_argument("--bleeds", type=int, default=None, help="number of microbleeds (swi)")
    sp.add_argument("--unsigned", action="store_true", help="store CT unsigned with intercept -1024")
    sp.add_argument(
        "--storage",
        choices=[*STORAGES, "seeded"],
        default=None,
        help="CT pixel storage (seeded: drawn from --seed); default signed 16 bits",
    )
    sp.add_argument(
        "--dwi-source", choices=["mni", "ct", "seeded"], default="mni", help="head the DWI is built from (dwi)"
    )
    sp.add_argument("--no-count", action="store_true", help="omit ImagesInAcquisition (forces the quiet period)")
    sp.set_defaults(func=run)
