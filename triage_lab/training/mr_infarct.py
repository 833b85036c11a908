"""Training and evaluation of the infarct model on synthetic DWI (``triage_lab.synth.mr.make_dwi_case``).

Segment + atlas: the crop-grid segmenter (``triage_node.inference.nets.CropGridSegNet``, the CT engineer's network and
training loop) is trained on 4 x 4 grid crops of the b=1000 slices; at inference the lesion is read off the MNI region
atlas registered to the patient (``triage_node.inference.atlas``). The baseline is the source study's direct location
classifier (two conv layers, dense softmax over side x region classes) trained on the same cases; both are evaluated on
the same held-out seeds so the choice is recorded with numbers.

Cases are cached as ``dwi_<seed>.npz`` under the cache directory (derived data, never committed). Seeds: training 0..
(infarcts) and 500000.. (without), validation 100000.. (infarcts) and 400000.. (without), test 200000.. (infarcts) and
300000.. (without). Every seed at or above 300000 is a case without infarct.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from triage_lab.training.int8_metrics import record_int8_metrics
from triage_node.inference.atlas import Region

if TYPE_CHECKING:
    from triage_lab.training.nifti_mr import IslesCase, SubjectSplit

log = logging.getLogger(__name__)

SPLIT_BASE = {
    "train": 0,
    "val": 100_000,
    "test": 200_000,
    "test_negative": 300_000,
    "val_negative": 400_000,
    "train_negative": 500_000,
}
DEFAULT_CACHE = Path("/tmp/triage-node-cache/infarct")
INFARCT_ANALYZER = "triage_node.inference.infarct:InfarctAnalyzer"
SIDES = ("right", "left")


def split_seeds(split: str, n: int) -> list[int]:
    if split not in SPLIT_BASE:
        raise ValueError(f"split must be one of {sorted(SPLIT_BASE)}, got {split!r}")
    return list(range(SPLIT_BASE[split], SPLIT_BASE[split] + n))


def class_index(region: Region, side: str) -> int:
    """Direct-classification label: 2 * (region - 1) + side (0 right, 1 left); 22 classes."""
    return 2 * (int(region) - 1) + SIDES.index(side)


def class_name(k: int) -> str:
    return f"{SIDES[k % 2]} {Region(k // 2 + 1).phrase}"


def _write(args: tuple[Path, int]) -> int:
    from triage_lab.synth.mr import make_dwi_case

    cache, seed = args
    path = cache / f"dwi_{seed}.npz"
    if path.exists():
        return seed
    infarct = seed < SPLIT_BASE["test_negative"]  # the *_negative seeds (300000 and above) have no infarct
    c = make_dwi_case(seed, infarct=infarct, profile="randomised")
    tmp = path.with_suffix(".tmp.npz")
    np.savez(
        tmp,
        dwi=c.dwi.astype(np.float16),
        adc=c.adc.astype(np.float16),
        mask=c.mask,
        spacing=np.asarray(c.spacing, np.float32),
        region=np.int16(int(c.region) if c.region is not None else 0),
        side=np.asarray(c.side or ""),
    )
    tmp.replace(path)
    return seed


def generate(cache: Path, seeds: Sequence[int], workers: int = 1, progress: bool = True) -> None:
    from tqdm import tqdm

    cache.mkdir(parents=True, exist_ok=True)
    jobs = [(cache, s) for s in seeds if not (cache / f"dwi_{s}.npz").exists()]
    if workers <= 1:
        for j in tqdm(jobs, desc="dwi cases", disable=not progress):
            _write(j)
        return
    with ProcessPoolExecutor(workers) as ex:
        for _ in tqdm(ex.map(_write, jobs), total=len(jobs), desc="dwi cases", disable=not progress):
            pass


@dataclass(frozen=True)
class DwiRecord:
    seed: int
    dwi: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float, float]
    region: Region | None
    side: str | None
    # The generator's ADC map (1e-6 mm^2/s at its b-value, 0 outside tissue): the b=0 image is
    # dwi * exp(adc / 1000), as the generator made it (:func:`b0_image`).
    adc: np.ndarray | None = None


def b0_image(r: DwiRecord) -> np.ndarray | None:
    """The case's b=0 image rebuilt from its b=1000 image and ADC map (ln(S0/S1000) = adc / 1000 in the generator's
    units); outside tissue, where the map is 0, it equals the b=1000 image (no diffusion contrast)."""
    if r.adc is None:
        return None
    return (r.dwi * np.exp(r.adc.astype(np.float32) / 1000.0)).astype(np.float32)


def load_records(cache: Path, seeds: Sequence[int]) -> Iterator[DwiRecord]:
    for s in seeds:
        with np.load(cache / f"dwi_{s}.npz") as z:
            reg = int(z["region"])
            yield DwiRecord(
                seed=s,
                dwi=z["dwi"].astype(np.float32),
                mask=z["mask"].astype(bool),
                spacing=tuple(float(v) for v in z["spacing"]),  # type: ignore[arg-type]
                region=Region(reg) if reg else None,
                side=str(z["side"]) or None,
                adc=z["adc"].astype(np.float32) if "adc" in z.files else None,
            )


# --------------------------------------------------------------------------------------------------------------------
# Segment + atlas (the shipped design)


@dataclass(frozen=True)
class InfarctRecipe:
    n_train: int = 120
    n_val: int = 20
    # Volumes without infarct (seeds 500000..): their tissue crops show the gate what normal DWI looks like.
    n_train_negative: int = 0
    size: int = 160
    grid: int = 4
    base: int = 16
    batch_size: int = 32
    cls_weight: float = 0.5
    neg_per_pos: float = 1.0
    min_area_mm2: float = 15.0
    steps_per_epoch: int | None = None
    kind: str = "robust"  # MR input normalisation (triage_node.inference.segmenter.normalise); 1.x used zscore
    profile: str = "randomised"  # the DWI generator (triage_lab.synth.mr_randomise); 1.x used legacy


def train_infarct(
    cache: Path,
    out: Path,
    recipe: InfarctRecipe,
    cfg: Any,
    version: str = "1.0.0",
    workers: int = 1,
    progress: bool = True,
    cases: SubjectSplit[IslesCase] | None = None,
) -> dict[str, Any]:
    """Train the crop-grid segmenter on synthetic DWI crops with the shared loop and write ``out`` (card + weights).

    ``cases``: train and validate on these real subjects (an ISLES'22 folder, :func:`nifti_mr.isles_split`) instead
    of synthetic seeds."""
    from triage_lab.training.loop import fit, mixed_precision_text, seed_everything
    from triage_lab.training.mr_cards import write_infarct_dir
    from triage_lab.training.plots import history_plot
    from triage_lab.training.seg_train import (
        SEG_AUGMENT,
        SegRecipe,
        crop_batches,
        crops_from_volumes,
        make_validate,
        seg_loss,
    )
    from triage_node.inference.nets import build_segmenter

    seg_recipe = SegRecipe(
        base=recipe.base,
        size=recipe.size,
        grid=recipe.grid,
        batch_size=recipe.batch_size,
        n_train=recipe.n_train,
        n_val=recipe.n_val,
        kind=recipe.kind,
        cls_weight=recipe.cls_weight,
        neg_per_pos=recipe.neg_per_pos,
        hard_negatives=True,
    )
    rng = np.random.default_rng(cfg.seed)
    if cases is None:
        tr, va = split_seeds("train", recipe.n_train), split_seeds("val", recipe.n_val)
        tr_neg = split_seeds("train_negative", recipe.n_train_negative)
        generate(cache, tr + tr_neg + va, workers=workers, progress=progress)
        train = crops_from_volumes(((r.dwi, r.mask) for r in load_records(cache, tr + tr_neg)), seg_recipe, rng)
        val = crops_from_volumes(((r.dwi, r.mask) for r in load_records(cache, va)), seg_recipe, rng)
        negatives = (
            f"; {len(tr_neg)} cases without infarct (seeds {tr_neg[0]}-{tr_neg[-1]}), 24 tissue crops each, half "
            "of them the brightest (hard negatives: artefacts, shine-through, cortex)"
            if tr_neg
            else ""
        )
        data_desc = (
            f"synthetic, domain-randomised DWI b=1000 (triage_lab.synth.mr_randomise) from MNI152 tissue maps and the "
            f"real head CT's tissue maps: {len(tr)} cases (seeds {tr[0]}-{tr[-1]}), one infarct each in a random "
            "region and side of the atlas, 40% of them small (2.5 mm mean radius up to the region's smallest: lacunes, "
            "small embolic infarcts); random pose, size, deformation, voxel size, slices 2.5-5.5 mm, tissue "
            "contrasts, b-value, bright cortex, scalp, susceptibility pile-up/drop-out (round or band-shaped), T2 "
            "shine-through, bias, multi-coil noise, Gibbs ringing, masked backgrounds, gain" + negatives
        )
        val_desc = f"{len(va)} cases (seeds {va[0]}-{va[-1]})"
    else:
        train = crops_from_volumes(((c.dwi, c.mask) for c in cases.cases("train")), seg_recipe, rng)
        val = crops_from_volumes(((c.dwi, c.mask) for c in cases.cases("val")), seg_recipe, rng)
        data_desc = f"{cases.describe('train')}: {cases.content}"
        val_desc = cases.describe("val")
    log.info("infarct: %d training crops, %d validation crops", len(train), len(val))
    seed_everything(cfg.seed)  # the initial weights follow the seed too, whatever ran before in this process
    model = build_segmenter(1, recipe.base)

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, mask = batch
        seg, cls = m(x)
        return seg_loss(seg, cls, mask, recipe.cls_weight)

    steps = recipe.steps_per_epoch or len(train) // recipe.batch_size
    t0 = time.monotonic()
    hist, best = fit(
        model, crop_batches(train, recipe.batch_size, SEG_AUGMENT), steps, loss_fn, make_validate(val, seg_recipe), cfg
    )
    training = {
        "data": data_desc,
        "crops": len(train),
        "validation": val_desc,
        "recipe": {
            "optimizer": f"AdamW lr {cfg.lr} weight_decay {cfg.weight_decay}",
            "schedule": "one-cycle" if cfg.one_cycle else "constant",
            "epochs": cfg.epochs,
            "batch_size": recipe.batch_size,
            "mixed_precision": mixed_precision_text(cfg),
            "augmentation": (
                "horizontal/vertical flips, zoom +-8%, contrast +-5% (flips are safe: the segmenter has "
                "no laterality label; side comes from the registered atlas)"
            ),
            "loss": f"{recipe.cls_weight} x BCE(gate) + BCE(seg, pos_weight 2) + soft Dice(seg)",
            "seed": cfg.seed,
            "steps": len(hist.train_loss) * steps,
            "init_from": str(cfg.init_from) if cfg.init_from else None,
        },
        "seconds": round(time.monotonic() - t0, 1),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(hist.to_json(), indent=1))
    history_plot(out / "train_history.png", hist.to_json())
    write_infarct_dir(out, best, recipe, training, version)
    if cases is not None:
        from triage_lab.training.nifti import declare_real_data

        declare_real_data(out, f"the {cases.dataset} NIfTI folder {cases.root}")
    return {"history": hist.to_json()}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = float(a.sum() + b.sum())
    return 2.0 * float((a & b).sum()) / s if s else 1.0


def evaluate_infarct(
    model_dir: Path,
    cache: Path,
    n_test: int,
    n_negative: int,
    workers: int = 1,
    progress: bool = True,
    baseline: dict[str, Any] | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Run the shipped analyzer end to end on held-out cases: detection, Dice, side + region, speed.

    ``precision`` is the analyzer's (``auto`` is what the daemon runs: bf16 autocast on a CPU with native bf16).
    Writes eval.json and PNG plots into ``model_dir`` and the figures into the card.
    """
    from tqdm import tqdm

    from triage_lab.synth.mr import _volume
    from triage_lab.training.mr_cards import update_metrics
    from triage_lab.training.mr_plots import confusion_plot, dice_plot
    from triage_node.inference.card import ModelCard
    from triage_node.inference.infarct import InfarctAnalyzer

    card = ModelCard.load(model_dir / "model.yaml")
    an = InfarctAnalyzer(card, precision=precision)
    pos, neg = split_seeds("test", n_test), split_seeds("test_negative", n_negative)
    generate(cache, pos + neg, workers=workers, progress=progress)
    rows = []
    conf = np.zeros((22, 23), dtype=int)  # last column: not detected
    for r in tqdm(load_records(cache, pos + neg), total=len(pos) + len(neg), desc="eval", disable=not progress):
        out = an.analyze(_volume(r.dwi, r.spacing, f"eval{r.seed}"))
        f = out.findings[0]
        pred = out.masks["infarct"]
        row: dict[str, Any] = {
            "seed": r.seed,
            "seconds": out.seconds,
            "present": f.present,
            "probability": f.probability,
            "location": f.location,
        }
        if r.region is not None and r.side is not None:
            d = dice(pred, r.mask)
            truth = f"{r.side} {r.region.phrase}"
            detected = bool(f.present and (pred & r.mask).any())
            row.update(
                truth=truth,
                dice=d,
                detected=detected,
                correct=bool(detected and f.location == truth),
                side_correct=bool(detected and f.laterality == r.side),
                volume_ml=float(r.mask.sum() * np.prod(r.spacing) / 1000.0),
            )
            k = class_index(r.region, r.side)
            pk = _class_of(f.location) if detected else None
            conf[k, pk if pk is not None else 22] += 1
        rows.append(row)
    p_rows = [r for r in rows if "truth" in r]
    n_rows = [r for r in rows if "truth" not in r]
    per_region: dict[str, float] = {}
    for reg in Region:
        sel = [r for r in p_rows if r["truth"].endswith(reg.phrase)]
        if sel:
            per_region[reg.phrase] = float(np.mean([r["correct"] for r in sel]))
    report = {
        "design": "segment (crop-grid segmenter) + location from the MNI region atlas registered to the patient",
        "test_seeds": f"{pos[0]}-{pos[-1]} with an infarct, {neg[0]}-{neg[-1]} without; never used in training",
        "cases_with_infarct": len(p_rows),
        "cases_without_infarct": len(n_rows),
        "detected": float(np.mean([r["detected"] for r in p_rows])),
        "detected_and_location_correct": float(np.mean([r["correct"] for r in p_rows])),
        "side_correct": float(np.mean([r["side_correct"] for r in p_rows])),
        "dice_mean": float(np.mean([r["dice"] for r in p_rows])),
        "dice_median": float(np.median([r["dice"] for r in p_rows])),
        "dice_mean_detected": float(np.mean([r["dice"] for r in p_rows if r["detected"]] or [0.0])),
        "false_positive_rate_negatives": float(np.mean([r["present"] for r in n_rows])) if n_rows else None,
        "location_accuracy_by_region": per_region,
        "seconds_per_volume_mean": float(np.mean([r["seconds"] for r in rows])),
        "precision": an.segmenter.precision,
        "target": "detected and side + region correct >= 0.90; Dice >= 0.75",
        "cases": rows,
    }
    loc_ok = float(np.mean([r["correct"] for r in p_rows])) >= 0.9
    report["target_met"] = bool(loc_ok and float(np.mean([r["dice"] for r in p_rows])) >= 0.75)
    if baseline is not None:
        report["baseline_direct_classification"] = baseline
    if an.segmenter.precision == "int8":  # the export's figures go next to the float model's, never over them
        record_int8_metrics(model_dir, {k: v for k, v in report.items() if k != "cases"})
        return report
    (model_dir / "eval.json").write_text(json.dumps(report, indent=1))
    names = [class_name(k) for k in range(22)] + ["missed"]
    confusion_plot(model_dir / "location_confusion.png", conf[:, :], names, "infarct location (rows: truth)")
    dice_plot(model_dir / "dice.png", [r["dice"] for r in p_rows], [r["volume_ml"] for r in p_rows])
    update_metrics(model_dir, {k: v for k, v in report.items() if k != "cases"})
    return report


# --------------------------------------------------------------------------------------------------------------------
# Operating point on validation cases


def ungated_probabilities(segmenter: Any, pixels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The segmenter's network outputs before gating, at network resolution: segmentation probability float32
    (z, size, size) and gate probability per crop float32 (z, grid * grid), row-major over the grid.

    ``segmenter``: a ``CropGridSegmenter``; its network runs once (same batching, TTA, air-crop skip and precision as
    :meth:`CropGridSegmenter.probabilities`), so every gate threshold can be scored on the same outputs.
    """
    from triage_node.inference.precision import autocast
    from triage_node.inference.segmenter import normalise

    x = normalise(pixels, segmenter.kind, segmenter.size)
    saved = segmenter.gate_threshold
    segmenter.gate_threshold = 0.0  # every crop passes: the gate is applied later, per candidate threshold
    segs, gates = [], []
    try:
        with torch.inference_mode(), autocast(segmenter.precision, segmenter.device.type):
            for i in range(0, x.shape[0], segmenter.batch):
                s, g = segmenter._forward(x[i : i + segmenter.batch])
                segs.append(s)
                gates.append(g)
    finally:
        segmenter.gate_threshold = saved
    return torch.cat(segs).float(), torch.cat(gates).float()


def gated_probability(
    seg: torch.Tensor, gates: torch.Tensor, gate: float, grid: int, shape: tuple[int, int]
) -> np.ndarray:
    """Apply a gate threshold to :func:`ungated_probabilities` and map back to the image grid ``shape`` (h, w), as
    :meth:`CropGridSegmenter.probabilities` does: float32 (z, h, w)."""
    z, size, _ = seg.shape
    cell = size // grid
    keep = (gates >= gate).float().reshape(z, grid, grid)
    keep = keep.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2)
    g = (seg * keep)[:, None]
    h, w = shape
    s = max(h, w)
    if s != size:
        g = F.interpolate(g, size=(s, s), mode="bilinear", align_corners=False)
    y0, x0 = (s - h) // 2, (s - w) // 2
    return g[:, 0, y0 : y0 + h, x0 : x0 + w].numpy()


@dataclass(frozen=True)
class OperatingGrid:
    """Candidate operating points: crop-gate thresholds x segmentation thresholds x minimum cross-sections."""

    gates: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.99)
    segmentation: tuple[float, ...] = (0.4, 0.5, 0.6)
    min_areas_mm2: tuple[float, ...] = (8.0, 15.0, 30.0, 45.0, 60.0, 90.0)
    # The ADC rule's limits (InfarctAnalyzer.max_adc_ratio); None: the b=1000 finding stands alone.
    max_adc_ratios: tuple[float | None, ...] = (None,)
    max_fp_rate: float = 0.05
    tolerance: float = 0.005


class _AdcJudge:
    """The ADC rule for one case, with each component's ratio computed once however many grid points judge it."""

    def __init__(self, dwi: np.ndarray, b0: np.ndarray, parts: tuple[np.ndarray, np.ndarray]) -> None:
        self.dwi, self.b0, self.parts = dwi, b0, parts
        self.ratios: dict[bytes, float | None] = {}

    def ratio(self, component: np.ndarray) -> float | None:
        from triage_node.inference.infarct import adc_ratio

        key = np.packbits(component).tobytes()
        if key not in self.ratios:
            self.ratios[key] = adc_ratio(self.dwi, self.b0, component, self.parts)
        return self.ratios[key]

    def accept(self, limit: float) -> Callable[[np.ndarray], bool]:
        def test(component: np.ndarray) -> bool:
            r = self.ratio(component)
            return r is None or r <= limit

        return test


def tune_infarct(
    model_dir: Path,
    cache: Path,
    pos_seeds: Sequence[int],
    neg_seeds: Sequence[int],
    grid: OperatingGrid = OperatingGrid(),
    precision: str = "auto",
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Choose the gate threshold, segmentation threshold, minimum cross-section and ADC limit on validation cases only.

    Rule: among the points whose false-positive rate on the cases without infarct is at most ``grid.max_fp_rate``,
    the highest mean Dice over the infarct cases (a missed infarct scores 0, so Dice also carries sensitivity); within
    ``grid.tolerance`` of it, the most restrictive point (higher gate, then larger minimum size, then higher
    segmentation threshold, then lower ADC limit). The ADC rule is scored as the analyzer applies it, on the b=0
    image the generator made (:func:`b0_image`); a limit of None is the rule switched off. The network runs once per
    case. Returns ``{"chosen": {...}, "grid": [...], ...}``.
    """
    from tqdm import tqdm

    from triage_node.inference.card import ModelCard
    from triage_node.inference.cropgrid import Components, keep_components
    from triage_node.inference.infarct import InfarctAnalyzer, adc_parts

    if not pos_seeds or not neg_seeds:
        raise ValueError("tune_infarct needs validation cases with and without infarct")
    if any(s >= SPLIT_BASE["test"] and s < SPLIT_BASE["val_negative"] for s in [*pos_seeds, *neg_seeds]):
        raise ValueError("tune_infarct: test seeds (200000-399999) must never choose the operating point")
    card = ModelCard.load(model_dir / "model.yaml")
    segmenter = InfarctAnalyzer(card, precision=precision).segmenter
    generate(cache, [*pos_seeds, *neg_seeds], workers=workers, progress=progress)
    Point = tuple[float, float, float, float | None]
    points: list[Point] = [
        (g, t, a, r)
        for g in grid.gates
        for t in grid.segmentation
        for a in grid.min_areas_mm2
        for r in grid.max_adc_ratios
    ]
    dices: dict[Point, list[float]] = {p: [] for p in points}
    hits: dict[Point, list[bool]] = {p: [] for p in points}
    fps: dict[Point, list[bool]] = {p: [] for p in points}
    seeds = [*pos_seeds, *neg_seeds]
    use_adc = any(r is not None for r in grid.max_adc_ratios)
    for rec in tqdm(load_records(cache, seeds), total=len(seeds), desc="tune", disable=not progress):
        seg, gates = ungated_probabilities(segmenter, rec.dwi)
        b0 = b0_image(rec) if use_adc else None
        if use_adc and b0 is None:
            raise ValueError(f"tune_infarct: case {rec.seed} has no ADC map in the cache; delete it to regenerate")
        parts = adc_parts(rec.dwi, b0) if b0 is not None else None
        judge = _AdcJudge(rec.dwi, b0, parts) if b0 is not None and parts is not None else None
        for g in grid.gates:
            prob = gated_probability(seg, gates, g, segmenter.grid, rec.dwi.shape[1:])
            for t in grid.segmentation:
                raw = prob >= t
                for a in grid.min_areas_mm2:
                    plain = keep_components(raw, rec.spacing, a, segmenter.max_components)
                    judged = Components.of(raw, rec.spacing, a) if judge is not None else None
                    for limit in grid.max_adc_ratios:
                        # As InfarctAnalyzer applies the rule (infarct.restricted): every candidate component is
                        # judged before the largest is kept.
                        kept = plain
                        if judged is not None and judge is not None and limit is not None:
                            kept = judged.keep(segmenter.max_components, judge.accept(limit))
                        p = (g, t, a, limit)
                        if rec.region is None:
                            fps[p].append(bool(kept.any()))
                        else:
                            dices[p].append(dice(kept, rec.mask))
                            hits[p].append(bool((kept & rec.mask).any()))
    rows = [
        {
            "gate": g,
            "segmentation": t,
            "min_area_mm2": a,
            **({"max_adc_ratio": r} if use_adc else {}),
            "dice_mean": round(float(np.mean(dices[(g, t, a, r)])), 4),
            "detected": round(float(np.mean(hits[(g, t, a, r)])), 4),
            "false_positive_rate_negatives": round(float(np.mean(fps[(g, t, a, r)])), 4),
        }
        for g, t, a, r in points
    ]
    chosen = choose_operating_point(rows, grid.max_fp_rate, grid.tolerance)
    return {
        "positive_seeds": f"{min(pos_seeds)}-{max(pos_seeds)}",
        "negative_seeds": f"{min(neg_seeds)}-{max(neg_seeds)}",
        "positive_cases": len(pos_seeds),
        "negative_cases": len(neg_seeds),
        "precision": segmenter.precision,
        "max_fp_rate": grid.max_fp_rate,
        "tolerance": grid.tolerance,
        "chosen": chosen,
        "grid": rows,
    }


def choose_operating_point(rows: list[dict[str, Any]], max_fp_rate: float, tolerance: float) -> dict[str, Any]:
    """:func:`tune_infarct`'s rule over scored grid rows (sorts ``rows`` in place, best Dice first)."""
    rows.sort(key=lambda r: (-r["dice_mean"], r["false_positive_rate_negatives"]))
    ok = [r for r in rows if r["false_positive_rate_negatives"] <= max_fp_rate]
    if not ok:
        raise ValueError(f"no operating point has a validation false-positive rate <= {max_fp_rate}")
    near = [r for r in ok if r["dice_mean"] >= ok[0]["dice_mean"] - tolerance]
    return max(
        near,
        key=lambda r: (
            r["gate"],
            r["min_area_mm2"],
            r["segmentation"],
            -(r["max_adc_ratio"] if r.get("max_adc_ratio") is not None else float("inf")),
        ),
    )


def rechoose_operating_point(tuned: dict[str, Any], max_fp_rate: float) -> dict[str, Any]:
    """Apply the rule again to a saved :func:`tune_infarct` result with another false-positive budget; the grid was
    scored on the same validation cases, so nothing runs again."""
    rows = [dict(r) for r in tuned["grid"]]
    chosen = choose_operating_point(rows, max_fp_rate, tuned["tolerance"])
    return {**tuned, "max_fp_rate": max_fp_rate, "chosen": chosen, "grid": rows}


def write_operating_point(model_dir: Path, tuned: dict[str, Any]) -> None:
    """Write a :func:`tune_infarct` result into the card (thresholds, ``postprocess.min_area_mm2`` and
    ``training.operating_point``) and ``tune.json``; weights and hash are untouched."""
    import dataclasses
    from types import MappingProxyType

    from triage_node.inference.card import ModelCard, _thaw

    c = tuned["chosen"]
    card = ModelCard.load(model_dir / "model.yaml")
    training = dict(_thaw(card.training))
    training["operating_point"] = (
        f"gate {c['gate']}, segmentation {c['segmentation']}, minimum cross-section {c['min_area_mm2']} mm^2"
        + (f", ADC limit {c['max_adc_ratio']}" if c.get("max_adc_ratio") is not None else "")
        + f", chosen by `triage-lab tune-mr infarct` on validation only ({tuned['positive_cases']} infarct cases seeds "
        f"{tuned['positive_seeds']}, {tuned['negative_cases']} without seeds {tuned['negative_seeds']}, precision "
        f"{tuned['precision']}): the highest mean Dice with a false-positive rate <= {tuned['max_fp_rate']} on the "
        f"cases without infarct, the most restrictive point within {tuned['tolerance']} of it; validation Dice "
        f"{c['dice_mean']}, detected {c['detected']}, false positives {c['false_positive_rate_negatives']} (tune.json)"
    )
    postprocess = {**_thaw(card.postprocess), "min_area_mm2": c["min_area_mm2"]}
    if "max_adc_ratio" in c:  # the ADC rule was in the grid (tune-mr --max-adc-ratios); None switches it off
        if c["max_adc_ratio"] is None:
            postprocess.pop("max_adc_ratio", None)
        else:
            postprocess["max_adc_ratio"] = c["max_adc_ratio"]
    new = dataclasses.replace(
        card,
        thresholds=MappingProxyType({**dict(card.thresholds), "gate": c["gate"], "segmentation": c["segmentation"]}),
        postprocess=MappingProxyType(postprocess),
        training=MappingProxyType(training),
        directory=model_dir,
    )
    new.save(model_dir / "model.yaml")
    (model_dir / "tune.json").write_text(json.dumps(tuned, indent=1))


def _class_of(location: str | None) -> int | None:
    if not location:
        return None
    for k in range(22):
        if class_name(k) == location:
            return k
    return None


# --------------------------------------------------------------------------------------------------------------------
# Baseline: the source study's direct location classifier


class DirectLocationNet(nn.Module):
    """Choragi's classifier: conv 5x5 (64) -> max-pool 4 -> conv 5x5 (64) -> max-pool 2 -> dropout -> dense softmax.

    Input (N, 1, 128, 128), one slice; output logits over 22 side x region classes (the study had 36 merged classes).
    """

    def __init__(self, n_classes: int = 22, dropout: float = 0.3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 64, 5), nn.ReLU(), nn.MaxPool2d(4), nn.Conv2d(64, 64, 5), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(64 * 13 * 13, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def lesion_slice(r: DwiRecord, size: int = 128) -> np.ndarray:
    """The slice with the largest true lesion area (generous to the baseline: an oracle slice), z-scored, resized."""
    from triage_node.inference.segmenter import normalise

    k = int(np.argmax(r.mask.sum(axis=(1, 2))))
    return normalise(r.dwi[k : k + 1], "robust", size).numpy()[0]


def direct_augment() -> Any:
    """The direct classifier's augmentation: no flips (a mirror image would need its side label swapped)."""
    from triage_lab.training.augment import AugmentConfig

    return AugmentConfig(
        hflip=False, vflip=False, rotate_deg=5.0, zoom=0.05, shift=0.05, shear=0.05, blur_p=0.0, contrast=0.05
    )


def run_direct_baseline(cache: Path, n_train: int, n_test: int, epochs: int = 12, seed: int = 0) -> dict[str, Any]:
    """Train the direct classifier on the training seeds and report its held-out accuracy (the same test seeds).

    Augmentation as in the study: small shifts, zoom and shear, no flips (a flip would need the side label swapped).
    """
    from triage_lab.training.augment import augment

    torch.manual_seed(seed)
    tr, te = split_seeds("train", n_train), split_seeds("test", n_test)
    xs, ys = [], []
    for r in load_records(cache, tr):
        if r.region is None or r.side is None:
            continue
        xs.append(lesion_slice(r))
        ys.append(class_index(r.region, r.side))
    x = torch.from_numpy(np.stack(xs)).float()
    y = torch.tensor(ys)
    xt, yt = [], []
    for r in load_records(cache, te):
        if r.region is None or r.side is None:
            continue
        xt.append(lesion_slice(r))
        yt.append(class_index(r.region, r.side))
    net = DirectLocationNet()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
    aug = direct_augment()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(perm), 20):
            idx = perm[i : i + 20]
            xb, _ = augment(x[idx], aug, g)
            loss = F.cross_entropy(net(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.inference_mode():
        pred = net(torch.from_numpy(np.stack(xt)).float()).argmax(1).numpy()
    acc = float(np.mean(pred == np.asarray(yt)))
    side_acc = float(np.mean(pred % 2 == np.asarray(yt) % 2))
    return {
        "design": "direct side x region classification (source study's CNN) on the oracle lesion slice",
        "train_cases": len(xs),
        "test_cases": len(xt),
        "epochs": epochs,
        "location_accuracy": acc,
        "side_accuracy": side_acc,
    }
