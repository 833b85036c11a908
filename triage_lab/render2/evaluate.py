"""Evaluate the shipped models on second-renderer cases, through the daemon's own DICOM decode path.

For each case: render and write a DICOM series (:mod:`triage_lab.render2.cases`), read it back the way
``triage_node.pipeline`` does (headers, routing rules, image selection, diffusion selection, geometry plan, the
blank-slice filter, ``build_volume``), run the pipeline's analyzers with the daemon's gates, and score the findings
against the truth. A case that fails to render or to decode is reported with its error and counted as failed.

The figures are those of issue 15's "Done when": any-hemorrhage sensitivity / specificity at the shipped threshold,
AUC, subtype "present" on normals, subtype precision / recall, segmenter Dice; infarct side + region correct and
normal DWI clean; microbleed count within +-1 and false microbleeds per normal subject.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from triage_lab.render2.cases import SEED_BASE, CaseSpec, Written, default_specs, render_and_write
from triage_lab.render2.ct_lesions import SUBTYPES
from triage_node.config import Config, Pipeline
from triage_node.inference.types import Analyzer, ModelOutput
from triage_node.preprocess.volume import Volume

log = logging.getLogger(__name__)

TARGETS: dict[str, tuple[str, float]] = {
    "ct.sensitivity": (">=", 0.95),
    "ct.specificity": (">=", 0.95),
    "ct.subtype_present_on_normals": ("<=", 0.10),
    "ct.dice": (">=", 0.75),
    "dwi.located": (">=", 0.90),
    "dwi.normal_clean": (">=", 0.90),
    "swi.count_within_1": (">=", 0.90),
    "swi.false_per_normal": ("<=", 0.2),
}
PIPELINE_OF = {"ct": Pipeline.CT_HEAD, "dwi": Pipeline.MR_DWI, "swi": Pipeline.MR_SWI}


# ---------------------------------------------------------------------------------------------------------------------
# The daemon's decode path


def decode(paths: Sequence[Path], config: Config) -> tuple[Volume, Pipeline]:
    """Files of one series -> (Volume, pipeline) exactly as ``triage_node.pipeline._process`` builds it."""
    from triage_node.pipeline import decode_and_filter, with_b0  # the daemon's decode, filter and b=0 pairing
    from triage_node.series.diffusion import select_dwi
    from triage_node.series.geometry import build_volume, plan
    from triage_node.series.routing import SeriesAttributes, describe, route, select_images

    datasets: list[Dataset] = [dcmread(p, stop_before_pixels=True) for p in paths]
    attrs = SeriesAttributes.from_datasets(datasets)
    rule = route(config.series.rules, attrs)
    if rule is None:
        raise ValueError(f"no routing rule matched ({describe(attrs)})")
    diffusion_images = datasets  # the whole series, as the pipeline does (with_b0)
    datasets = select_images(rule.match, attrs, datasets)
    if rule.pipeline == Pipeline.MR_DWI:
        datasets = select_dwi(datasets)
    slices = plan(datasets)
    ct = attrs.modality.upper() == "CT"
    min_pct = config.filter.min_brain_pct if ct else config.filter.min_tissue_pct_mr
    planes, keep = decode_and_filter(slices, attrs.modality, min_pct, {})
    if not keep.any():
        raise ValueError(f"none of the {len(keep)} slices holds brain or tissue")
    volume = build_volume(slices, planes, keep, planes_are_kept=True)
    if rule.pipeline == Pipeline.MR_DWI:
        volume = with_b0(volume, diffusion_images, [slices[i] for i in np.flatnonzero(keep)])
    return volume, rule.pipeline


def run_models(
    volume: Volume, pipeline: Pipeline, analyzers: dict[str, Analyzer], config: Config, ungated: bool = True
) -> dict[str, ModelOutput]:
    """The pipeline's analyzers in order with the daemon's gates. With ``ungated``, a gated-off model still runs
    and its output is kept under ``<name>:ungated`` (the daemon would not have shown it)."""
    outputs: dict[str, ModelOutput] = {}
    for name in config.models.pipelines.get(pipeline, ()):
        if name not in analyzers:
            continue
        gate = config.models.gates.get(name)
        open_ = gate is None or any(f.label == gate and f.present for o in outputs.values() for f in o.findings)
        if open_:
            outputs[name] = analyzers[name].analyze(volume)
        elif ungated:
            outputs[f"{name}:ungated"] = analyzers[name].analyze(volume)
    return outputs


# ---------------------------------------------------------------------------------------------------------------------
# Scoring


def _findings(outputs: dict[str, ModelOutput]) -> dict[str, Any]:
    out = {}
    for name, o in outputs.items():
        if name.endswith(":ungated"):
            continue
        for f in o.findings:
            out[f.label] = f
    return out


def _truth_in_volume(w: Written, volume: Volume, mask: np.ndarray) -> np.ndarray:
    """The truth mask (written slices) restricted and ordered to the Volume's slices."""
    index = {u: k for k, u in enumerate(w.slice_uids)}
    return np.stack([mask[index[u]] for u in volume.sop_instance_uids])


def _dice(pred: np.ndarray, truth: np.ndarray, truth_total: int) -> float:
    """Dice with the truth's voxels on dropped slices counted as missed."""
    inter = int((pred & truth).sum())
    denom = int(pred.sum()) + truth_total
    return 2.0 * inter / denom if denom else 1.0


def score_ct(w: Written, volume: Volume, outputs: dict[str, ModelOutput]) -> dict[str, Any]:
    f = _findings(outputs)
    any_f = f.get("any_hemorrhage")
    rec: dict[str, Any] = {
        "truth": w.truth["any_hemorrhage"],
        "truth_subtypes": w.truth["subtypes"],
        "p_any": float(any_f.probability) if any_f else None,
        "flagged": bool(any_f and any_f.present),
        "subtypes": [s for s in SUBTYPES if s in f and f[s].present],
        "p_subtypes": {s: round(float(f[s].probability), 4) for s in SUBTYPES if s in f},
        "not_assessed": [k for k, v in f.items() if "not_assessed" in k and v.present],
    }
    truth_mask = w.case.lesion_mask
    total = int(truth_mask.sum())
    tv = _truth_in_volume(w, volume, truth_mask)
    for key, gated in (("ct_segmenter", True), ("ct_segmenter:ungated", False)):
        if key in outputs:
            masks = outputs[key].masks
            pred = np.asarray(next(iter(masks.values())), bool) if masks else np.zeros(tv.shape, bool)
            rec["seg_ml" if gated else "seg_ml_ungated"] = round(float(pred.sum()) * volume.voxel_volume_ml, 2)
            if w.truth["any_hemorrhage"]:
                rec["dice_ungated"] = round(_dice(pred, tv, total), 4)
                if gated:
                    rec["dice"] = rec["dice_ungated"]
    if w.truth["any_hemorrhage"] and "dice" not in rec:
        rec["dice"] = 0.0  # gated off: the daemon outlined nothing
    return rec


def score_dwi(w: Written, volume: Volume, outputs: dict[str, ModelOutput]) -> dict[str, Any]:
    f = _findings(outputs).get("infarct")
    present = bool(f and f.present)
    rec: dict[str, Any] = {
        "truth": w.truth["infarct"],
        "truth_location": w.truth["location"],
        "truth_volume_ml": w.truth["volume_ml"],
        "present": present,
        "location": f.location if f else None,
        "laterality": f.laterality if f else None,
        "volume_ml": f.volume_ml if f else None,
    }
    if w.truth["infarct"]:
        pred = np.asarray(outputs["infarct"].masks.get("infarct"), bool) if "infarct" in outputs else None
        tv = _truth_in_volume(w, volume, w.case.mask)
        dice = _dice(pred, tv, int(w.case.mask.sum())) if pred is not None else 0.0
        rec["dice"] = round(dice, 4)
        rec["detected"] = present and dice > 0.0
        rec["side_correct"] = bool(present and f is not None and f.laterality == w.truth["side"])
        rec["located"] = bool(rec["detected"] and f is not None and f.location == w.truth["location"])
    return rec


def score_swi(w: Written, volume: Volume, outputs: dict[str, ModelOutput]) -> dict[str, Any]:
    f = _findings(outputs).get("microbleed")
    count = int(f.count or 0) if f and f.present else 0
    truth = np.asarray(w.truth["centres_mm"], float).reshape(-1, 3)
    radii = np.asarray(w.truth["radii_mm"], float)
    found = np.asarray(f.positions if f else [], float).reshape(-1, 3)
    hit = np.zeros(len(truth), bool)
    false = 0
    for p in found:
        d = np.linalg.norm(truth - p, axis=1) if len(truth) else np.array([])
        ok = np.flatnonzero((d <= np.maximum(4.0, 1.6 * radii + 2.0)) & ~hit) if len(d) else np.zeros(0, int)
        if len(ok):
            hit[ok[np.argmin(d[ok])]] = True
        else:
            false += 1
    return {
        "truth_count": int(w.truth["count"]),
        "count": count,
        "within_1": abs(count - int(w.truth["count"])) <= 1,
        "matched": int(hit.sum()),
        "false": false,
        "positions_mm": [[round(float(v), 1) for v in p] for p in found],
    }


SCORERS: dict[str, Callable[[Written, Volume, dict[str, ModelOutput]], dict[str, Any]]] = {
    "ct": score_ct,
    "dwi": score_dwi,
    "swi": score_swi,
}


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """Mann-Whitney AUC (ties count half); None without both classes."""
    s = np.asarray(scores, float)
    y = np.asarray(labels, bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return None
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def _rate(values: Sequence[bool]) -> float | None:
    return float(np.mean(values)) if len(values) else None


def summarise_ct(recs: list[dict[str, Any]]) -> dict[str, Any]:
    pos = [r for r in recs if r["truth"]]
    neg = [r for r in recs if not r["truth"]]
    out: dict[str, Any] = {
        "n": len(recs),
        "positives": len(pos),
        "normals": len(neg),
        "sensitivity": _rate([r["flagged"] for r in pos]),
        "specificity": _rate([not r["flagged"] for r in neg]),
        "auc": auc([r["p_any"] or 0.0 for r in recs], [r["truth"] for r in recs]),
        "subtype_present_on_normals": _rate([bool(r["subtypes"]) for r in neg]),
        "extra_subtype_on_positives": _rate([bool(set(r["subtypes"]) - set(r["truth_subtypes"])) for r in pos]),
        "dice": _rate([r["dice"] for r in pos]) if pos else None,
        "dice_ungated": _rate([r["dice_ungated"] for r in pos if "dice_ungated" in r]),
        "normal_p_any": [round(r["p_any"] or 0.0, 3) for r in neg],
        "positive_p_any": [round(r["p_any"] or 0.0, 3) for r in pos],
    }
    per: dict[str, Any] = {}
    for s in SUBTYPES:
        tp = sum(1 for r in recs if s in r["subtypes"] and s in r["truth_subtypes"])
        fp = sum(1 for r in recs if s in r["subtypes"] and s not in r["truth_subtypes"])
        fn = sum(1 for r in recs if s not in r["subtypes"] and s in r["truth_subtypes"])
        per[s] = {
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "tp": tp,
            "fp": fp,
            "fn": fn,
        }
    out["subtypes"] = per
    return out


def summarise_dwi(recs: list[dict[str, Any]]) -> dict[str, Any]:
    pos = [r for r in recs if r["truth"]]
    neg = [r for r in recs if not r["truth"]]
    return {
        "n": len(recs),
        "infarcts": len(pos),
        "normals": len(neg),
        "detected": _rate([r["detected"] for r in pos]),
        "side_correct": _rate([r["side_correct"] for r in pos]),
        "located": _rate([r["located"] for r in pos]),
        "dice": _rate([r["dice"] for r in pos]),
        "normal_clean": _rate([not r["present"] for r in neg]),
    }


def summarise_swi(recs: list[dict[str, Any]]) -> dict[str, Any]:
    neg = [r for r in recs if r["truth_count"] == 0]
    n_true = sum(r["truth_count"] for r in recs)
    return {
        "n": len(recs),
        "normals": len(neg),
        "count_within_1": _rate([r["within_1"] for r in recs]),
        "false_per_normal": float(np.mean([r["count"] for r in neg])) if neg else None,
        "false_per_subject": float(np.mean([r["false"] for r in recs])) if recs else None,
        "sensitivity": sum(r["matched"] for r in recs) / n_true if n_true else None,
    }


SUMMARISERS: dict[str, Callable[[list[dict[str, Any]]], dict[str, Any]]] = {
    "ct": summarise_ct,
    "dwi": summarise_dwi,
    "swi": summarise_swi,
}


def check_targets(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for key, (op, target) in TARGETS.items():
        kind, metric = key.split(".")
        value = summary.get(kind, {}).get(metric)
        met = None if value is None else (value >= target if op == ">=" else value <= target)
        out[key] = {"value": value, "target": f"{op} {target}", "met": met}
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Driver


def load_models(models_dir: Path, kinds: Sequence[str], config: Config) -> dict[str, Analyzer]:
    from triage_node.inference.registry import load_analyzers

    names: list[str] = []
    for kind in kinds:
        names.extend(n for n in config.models.pipelines.get(PIPELINE_OF[kind], ()) if n not in names)
    return load_analyzers(
        models_dir, names, threads=config.models.threads, device=config.models.device, precision=config.models.precision
    )


def _evaluate_case(
    spec: CaseSpec, root: Path, config: Config, analyzers: dict[str, Analyzer], remove: bool
) -> tuple[dict[str, Any], bool]:
    """Render, write, decode and analyse one case -> (record, ok). A case that fails is reported, never fatal."""
    rec: dict[str, Any] = {"case": spec.key, "seed": spec.seed, "options": _jsonable(spec.options)}
    timing: dict[str, float] = {}
    ok = False
    try:
        t = time.perf_counter()
        w = render_and_write(spec, root / spec.key)
        timing["render_write_s"] = time.perf_counter() - t
        t = time.perf_counter()
        volume, pipeline = decode(w.paths, config)
        timing["decode_s"] = time.perf_counter() - t
        if pipeline != PIPELINE_OF[spec.kind]:
            raise ValueError(f"routed to {pipeline.value}, expected {PIPELINE_OF[spec.kind].value}")
        t = time.perf_counter()
        outputs = run_models(volume, pipeline, analyzers, config)
        timing["models_s"] = time.perf_counter() - t
        rec.update(SCORERS[spec.kind](w, volume, outputs))
        rec["truth_detail"] = _jsonable(w.truth)
        rec["slices"] = [len(w.slice_uids), int(volume.pixels.shape[0])]
        ok = True
    except Exception as exc:
        rec["error"] = f"{type(exc).__name__}: {exc}"
        rec["traceback"] = traceback.format_exc(limit=4)
        log.warning("case %s failed: %s", spec.key, rec["error"])
    rec["timing"] = {k: round(v, 2) for k, v in timing.items()}
    if remove:
        _remove_tree(root / spec.key)
    return rec, ok


# One forked worker's state: (root, config, analyzers, remove), set before the pool forks.
_WORKER: tuple[Path, Config, dict[str, Analyzer], bool] | None = None


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _worker_case(spec: CaseSpec) -> tuple[dict[str, Any], bool]:
    assert _WORKER is not None
    return _evaluate_case(spec, *_WORKER)


def evaluate(
    specs: Sequence[CaseSpec],
    models_dir: Path,
    work_dir: Path | None = None,
    config: Config | None = None,
    analyzers: dict[str, Analyzer] | None = None,
    keep_dicom: bool = False,
    jobs: int = 1,
) -> dict[str, Any]:
    """Render, write, decode and analyse every case; return the report (cases, summaries, targets, timings).

    ``jobs`` > 1 runs the cases on that many forked processes (one torch thread each); the report is the same, in
    the cases' order.
    """
    global _WORKER
    config = config or Config()
    kinds = sorted({s.kind for s in specs})
    t0 = time.perf_counter()
    analyzers = analyzers if analyzers is not None else load_models(models_dir, kinds, config)
    load_s = time.perf_counter() - t0
    records: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    failures: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="render2-") as tmp:
        root = work_dir or Path(tmp)
        remove = not keep_dicom and work_dir is None
        if jobs > 1:
            import multiprocessing as mp

            _WORKER = (root, config, analyzers, remove)
            try:
                with mp.get_context("fork").Pool(jobs, initializer=_worker_init) as pool:
                    results = pool.map(_worker_case, specs, chunksize=1)
            finally:
                _WORKER = None
        else:
            results = [_evaluate_case(spec, root, config, analyzers, remove) for spec in specs]
        for spec, (rec, ok) in zip(specs, results, strict=True):
            (records[spec.kind] if ok else failures).append(rec)
    summary = {k: SUMMARISERS[k](v) for k, v in records.items() if v}
    return {
        "renderer": "triage_lab.render2 (test-only second renderer; never used for training or thresholds)",
        "models_dir": str(models_dir),
        "models": {n: getattr(a, "version", "?") for n, a in analyzers.items()},
        "summary": summary,
        "targets": check_targets(summary),
        "failures": failures,
        "cases": records,
        "seconds": {"load_models": round(load_s, 2), "total": round(time.perf_counter() - t0, 2)},
    }


def _remove_tree(path: Path) -> None:
    import shutil

    for p in (path, path.parent / (path.name + "-adc")):
        shutil.rmtree(p, ignore_errors=True)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.generic):
        return x.item()
    return x


def format_table(report: dict[str, Any]) -> str:
    lines = ["second renderer (test only): figure                      value    target   met"]
    for key, t in report["targets"].items():
        v = t["value"]
        shown = "-" if v is None else f"{v:.3f}"
        met = {True: "yes", False: "NO", None: "-"}[t["met"]]
        lines.append(f"  {key:<48} {shown:>7}  {t['target']:>8}  {met}")
    ct = report["summary"].get("ct")
    if ct:
        lines.append(
            f"  ct.auc {ct['auc'] if ct['auc'] is None else round(ct['auc'], 3)}; "
            f"extra subtype on positives {ct['extra_subtype_on_positives']}; "
            f"dice (segmenter alone) {ct['dice_ungated']}"
        )
        for s, m in ct["subtypes"].items():
            lines.append(f"  ct.{s:<20} precision {m['precision']}  recall {m['recall']}")
    for kind in ("dwi", "swi"):
        if kind in report["summary"]:
            lines.append(f"  {kind}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in report["summary"][kind].items()))
    lines.append(f"  failed cases: {len(report['failures'])}; total {report['seconds']['total']} s")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "render-test",
        help="evaluate the shipped models on the second renderer (test only; never used to train or tune)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--n-ct", type=int, default=16)
    p.add_argument("--n-dwi", type=int, default=6)
    p.add_argument("--n-swi", type=int, default=6)
    p.add_argument("--models-dir", type=Path, default=Path("models"))
    p.add_argument("--seed-base", type=int, default=SEED_BASE, help="first seed (CT; DWI +100000, SWI +200000)")
    p.add_argument("--matrix", type=int, choices=(256, 512), default=None, help="CT matrix (default: drawn per case)")
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    p.add_argument("--keep-dicom", type=Path, default=None, help="keep the written series in this folder")
    p.add_argument("--jobs", type=int, default=1, help="cases rendered and analysed in parallel (processes)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    specs: list[CaseSpec] = []
    for kind, n in (("ct", args.n_ct), ("dwi", args.n_dwi), ("swi", args.n_swi)):
        specs.extend(default_specs(kind, n, args.seed_base, args.matrix if kind == "ct" else None))
    if args.keep_dicom is not None:
        args.keep_dicom.mkdir(parents=True, exist_ok=True)
    report = evaluate(specs, args.models_dir, work_dir=args.keep_dicom, jobs=args.jobs)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))
    print(format_table(report))
    return 0
