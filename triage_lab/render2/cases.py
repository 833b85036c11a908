"""Render a case and write it as DICOM: the truth that the evaluation compares the daemon's findings with.

Case seeds for ``render-test`` start at 7,000,000 (CT), 7,100,000 (DWI) and 7,200,000 (SWI): far from any seed the
training generator, its validation or its held-out splits use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from triage_lab.render2.ct_lesions import SUBTYPES
from triage_lab.render2.dicomio import CT_STORAGES, SeriesInfo, uid, write_ct, write_mr

SEED_BASE = 7_000_000
KIND_OFFSET = {"ct": 0, "dwi": 100_000, "swi": 200_000}
CT_CYCLE: tuple[tuple[str, ...] | None, ...] = (
    (),
    ("epidural",),
    ("subdural",),
    (),
    ("intraparenchymal",),
    ("intraventricular",),
    ("subarachnoid",),
    None,  # two subtypes, drawn
)


@dataclass(frozen=True)
class CaseSpec:
    """One case to render: ``kind`` ct | dwi | swi, its seed and fixed choices (``options``)."""

    kind: str
    seed: int
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.kind}-{self.seed}"


def default_specs(kind: str, n: int, seed_base: int = SEED_BASE, matrix: int | None = None) -> list[CaseSpec]:
    """``n`` cases of ``kind`` with a fixed mix: CT 3 of 8 normal (mimics), the rest one subtype each or a pair;
    DWI and SWI alternate lesion and normal."""
    out = []
    for i in range(n):
        seed = seed_base + KIND_OFFSET[kind] + i
        if kind == "ct":
            sub = CT_CYCLE[i % len(CT_CYCLE)]
            if sub is None:
                rng = np.random.default_rng([seed, 7_001])
                sub = tuple(sorted(str(s) for s in rng.choice(SUBTYPES, 2, replace=False)))
            opts: dict[str, Any] = {"subtypes": sub}
            if matrix is not None:
                opts["matrix"] = matrix
            out.append(CaseSpec("ct", seed, opts))
        elif kind == "dwi":
            out.append(CaseSpec("dwi", seed, {"infarct": i % 2 == 0}))
        elif kind == "swi":
            out.append(CaseSpec("swi", seed, {"n_bleeds": None if i % 2 == 1 else 0}))
        else:
            raise ValueError(f"kind must be ct, dwi or swi, got {kind!r}")
    return out


@dataclass
class Written:
    """A written case: its series' files, the instance UID of every slice in order, and the truth."""

    spec: CaseSpec
    paths: list[Path]
    slice_uids: list[str]
    truth: dict[str, Any]
    case: Any


def render_and_write(spec: CaseSpec, out_dir: Path) -> Written:
    if spec.kind == "ct":
        return _ct(spec, out_dir)
    if spec.kind == "dwi":
        return _dwi(spec, out_dir)
    if spec.kind == "swi":
        return _swi(spec, out_dir)
    raise ValueError(f"unknown kind {spec.kind!r}")


def _ct(spec: CaseSpec, out_dir: Path) -> Written:
    from triage_lab.render2.ct import make_ct_case

    case = make_ct_case(spec.seed, **spec.options)
    rng = np.random.default_rng([spec.seed, 7_002])
    desc = str(rng.choice(["CT HEAD WO CONTRAST", "CT BRAIN NATIVE", "CT SCHAEDEL NATIV", "HEAD ROUTINE"]))
    series = str(rng.choice(["Head 5.0 H30s", "AX BRAIN", "Brain Std", "Axial 2.5"]))
    info = SeriesInfo(spec.key, "CT", desc, series, 3, str(rng.choice(["HEAD", "BRAIN", ""])), bool(rng.random() < 0.3))
    acq = case.acquisition
    paths = write_ct(out_dir, case.hu, case.planes, info, CT_STORAGES[acq.storage], acq.tilt_deg, acq.kernel)
    uids = [uid("instance", spec.key, k) for k in range(case.hu.shape[0])]
    return Written(spec, paths, uids, case.truth(), case)


def _dwi(spec: CaseSpec, out_dir: Path) -> Written:
    from triage_lab.render2.mr import make_dwi_case

    case = make_dwi_case(spec.seed, **spec.options)
    rng = np.random.default_rng([spec.seed, 7_003])
    siemens = rng.random() < 0.5
    info = SeriesInfo(
        spec.key,
        "MR",
        "MR BRAIN STROKE",
        "ep2d_diff_3scan_trace" if siemens else "AX DWI",
        5,
        "BRAIN" if rng.random() < 0.7 else "HEAD",
        bool(rng.random() < 0.3),
    )
    trace = ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW"] if siemens else ["ORIGINAL", "PRIMARY", "OTHER"]
    common: dict[str, object] = {
        "ScanningSequence": "EP",
        "SequenceVariant": "SK",
        "EchoTime": 80,
        "RepetitionTime": 5000,
    }
    per = [
        {**common, "DiffusionBValue": 0.0, "DiffusionDirectionality": "NONE", "SequenceName": "*ep_b0"},
        {**common, "DiffusionBValue": 1000.0, "DiffusionDirectionality": "ISOTROPIC", "SequenceName": "*ep_b1000t"},
    ]
    spacing = case.acquisition.thickness + case.acquisition.gap
    paths = write_mr(out_dir, [case.b0, case.b1000], case.planes, info, spec.key, per, [trace, trace], "dwi", spacing)
    adc_desc = "ep2d_diff_3scan_trace_ADC"
    adc_info = SeriesInfo(spec.key + "-adc", "MR", info.study_description, adc_desc, 6, info.body_part)
    adc_dir = out_dir.parent / (out_dir.name + "-adc")
    adc_type = [["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]]
    write_mr(adc_dir, [case.adc], case.planes, adc_info, spec.key, [common], adc_type, "adc", spacing)
    n = case.b1000.shape[0]
    uids = [uid("instance", spec.key, 1, k) for k in range(n)]
    truth = {
        "infarct": case.region is not None,
        "region": case.region.name.lower() if case.region is not None else None,
        "side": case.side,
        "location": case.location,
        "volume_ml": round(case.volume_ml, 2),
        "mimics": list(case.mimics),
    }
    return Written(spec, paths, uids, truth, case)


def _swi(spec: CaseSpec, out_dir: Path) -> Written:
    from triage_lab.render2.mr import make_swi_case

    case = make_swi_case(spec.seed, **spec.options)
    rng = np.random.default_rng([spec.seed, 7_004])
    siemens = rng.random() < 0.5
    info = SeriesInfo(
        spec.key, "MR", "MR BRAIN", "SWI_Images" if siemens else "AX SWI", 7, "BRAIN", bool(rng.random() < 0.3)
    )
    tags: dict[str, object] = {
        "ScanningSequence": "GR",
        "SequenceVariant": "SP",
        "SequenceName": "*swi3d1r",
        "EchoTime": 20,
        "RepetitionTime": 28,
        "FlipAngle": 15,
    }
    image_type = ["ORIGINAL", "PRIMARY", "M", "SWI"] if siemens else ["ORIGINAL", "PRIMARY", "M", "NONE"]
    paths = write_mr(out_dir, [case.magnitude], case.planes, info, spec.key, [tags], [image_type], "swi")
    uids = [uid("instance", spec.key, 0, k) for k in range(case.magnitude.shape[0])]
    truth = {
        "count": case.count,
        "centres_mm": [[round(float(v), 1) for v in c] for c in case.centres],
        "radii_mm": [round(float(r), 2) for r in case.radii],
        "mimics": list(case.mimics),
    }
    return Written(spec, paths, uids, truth, case)
