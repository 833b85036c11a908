"""Training and per-subject evaluation of the microbleed model on synthetic SWI (``triage_lab.synth.mr``).

Data: every synthetic case is run through the same candidate detector as inference; candidates within
``max(3 mm, radius + 1.5 mm)`` of a true bleed are positives, all others negatives (veins, skull base, noise). Bleeds
the detector misses are added as extra training positives (patch at the true centre) but count as misses in
evaluation.
Patches are cached as ``.npz`` per seed under the cache directory (derived data: never commit it; part of it comes from
the GPL head CT).

Seeds: training 0.., validation 100000.., test 200000..: held-out seeds are never used in training.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from triage_lab.training.int8_metrics import record_int8_metrics
from triage_lab.training.loop import TrainConfig, fit, mixed_precision_text, model_device
from triage_node.inference.cmb import (
    CandidateConfig,
    CmbDetector,
    CmbNet,
    build_cmb_net,
    extract_patches,
    find_candidates,
)

if TYPE_CHECKING:
    from triage_lab.training.nifti_mr import SubjectSplit, ValdoCase

log = logging.getLogger(__name__)

SPLIT_BASE = {"train": 0, "val": 100_000, "test": 200_000}
CMB_ANALYZER = "triage_node.inference.cmb:CmbAnalyzer"
DEFAULT_CACHE = Path("/tmp/triage-node-cache/cmb")


def split_seeds(split: str, n: int) -> list[int]:
    if split not in SPLIT_BASE:
        raise ValueError(f"split must be one of {sorted(SPLIT_BASE)}, got {split!r}")
    return list(range(SPLIT_BASE[split], SPLIT_BASE[split] + n))


def match_radius_mm(radius: float) -> float:
    """How far a detection may be from a true bleed centre and still count as that bleed."""
    return max(3.0, radius + 1.5)


def case_record(seed: int, cfg: CandidateConfig) -> dict[str, np.ndarray]:
    """Synthesize one SWI case and return its candidate patches, labels and ground truth (see module docstring)."""
    from triage_lab.synth.mr_randomise import randomised_swi_case

    case = randomised_swi_case(seed)
    return record_from_arrays(case.volume, case.spacing, case.centres, case.radii, case.source, cfg)


def record_from_arrays(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    centres: np.ndarray,
    radii: np.ndarray,
    source: str,
    cfg: CandidateConfig,
) -> dict[str, np.ndarray]:
    """Candidate patches, labels and ground truth of one SWI / T2* volume (synthetic or read from a VALDO folder).

    ``volume`` float (z, y, x); ``centres`` (N, 3) voxel (z, y, x) of the true bleeds; ``radii`` (N,) mm.
    """
    cands = find_candidates(volume, spacing, cfg)
    centres = np.asarray(centres, np.float64).reshape(-1, 3)
    radii = np.asarray(radii, np.float32)
    sp = np.asarray(spacing)
    labels = np.zeros(len(cands.centres), dtype=np.int8)
    nearest = np.full(len(centres), np.inf)
    for k, (c, r) in enumerate(zip(centres, radii, strict=True)):
        if len(cands.centres):
            d = np.linalg.norm((cands.centres - c) * sp, axis=1)
            labels[d <= match_radius_mm(r)] = 1
            nearest[k] = d.min()
    patches = extract_patches(volume, spacing, cands.centres, cands.scale, cfg)
    missed = [k for k in range(len(centres)) if nearest[k] > match_radius_mm(radii[k])]
    extra = extract_patches(volume, spacing, centres[missed], cands.scale, cfg)
    return {
        "patches": patches.astype(np.float16),
        "labels": labels,
        "centres": cands.centres.astype(np.float32),
        "extra_pos": extra.astype(np.float16),
        "truth": centres.astype(np.float32),
        "radii": radii,
        "spacing": np.asarray(spacing, np.float32),
        "source": np.asarray(source),
    }


def _write_record(args: tuple[Path, int, CandidateConfig]) -> int:
    cache, seed, cfg = args
    path = cache / f"swi_{seed}.npz"
    if not path.exists():
        rec = case_record(seed, cfg)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")  # unique per process: workers may overlap
        np.savez(tmp, **rec)  # type: ignore[arg-type]
        tmp.replace(path)
    return seed


def generate(cache: Path, seeds: Sequence[int], cfg: CandidateConfig, workers: int = 1, progress: bool = True) -> None:
    """Write missing ``swi_<seed>.npz`` records (``workers`` processes)."""
    from tqdm import tqdm

    cache.mkdir(parents=True, exist_ok=True)
    todo = [s for s in seeds if not (cache / f"swi_{s}.npz").exists()]
    jobs = [(cache, s, cfg) for s in todo]
    if workers <= 1:
        for j in tqdm(jobs, desc="swi cases", disable=not progress):
            _write_record(j)
        return
    with ProcessPoolExecutor(workers) as ex:
        for _ in tqdm(ex.map(_write_record, jobs), total=len(jobs), desc="swi cases", disable=not progress):
            pass


def load_records(cache: Path, seeds: Sequence[int]) -> list[dict[str, np.ndarray]]:
    out = []
    for s in seeds:
        with np.load(cache / f"swi_{s}.npz") as z:
            out.append({k: z[k] for k in z.files})
    return out


@dataclass(frozen=True)
class PatchSet:
    x: torch.Tensor  # float16 (N, 3, p, p)
    y: torch.Tensor  # float32 (N,)

    def __len__(self) -> int:
        return int(self.x.shape[0])


def patch_set(records: list[dict[str, np.ndarray]], with_extra: bool = True) -> PatchSet:
    xs = [r["patches"] for r in records]
    ys = [r["labels"].astype(np.float32) for r in records]
    if with_extra:
        xs += [r["extra_pos"] for r in records if len(r["extra_pos"])]
        ys += [np.ones(len(r["extra_pos"]), np.float32) for r in records if len(r["extra_pos"])]
    return PatchSet(torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys)))


def augment_patches(x: torch.Tensor, g: torch.Generator, rotate_deg: float = 180.0) -> torch.Tensor:
    """Flips (both in-plane axes) and a random in-plane rotation, as in the source study; z order also flips."""
    n = x.shape[0]
    f = torch.rand(n, generator=g) < 0.5
    x = torch.where(f[:, None, None, None], x.flip(-1), x)
    f = torch.rand(n, generator=g) < 0.5
    x = torch.where(f[:, None, None, None], x.flip(-2), x)
    f = torch.rand(n, generator=g) < 0.5
    x = torch.where(f[:, None, None, None], x.flip(1), x)  # swap the slices above and below
    if rotate_deg > 0:
        ang = (torch.rand(n, generator=g) * 2 - 1) * np.deg2rad(rotate_deg)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = torch.cos(ang), -torch.sin(ang)
        theta[:, 1, 0], theta[:, 1, 1] = torch.sin(ang), torch.cos(ang)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    gain = 1.0 + (torch.rand(n, 1, 1, 1, generator=g) * 2 - 1) * 0.1
    return x * gain


def balanced_batches(data: PatchSet, batch_size: int, pos_fraction: float, augment: bool) -> Any:
    """Batches with a fixed share of positives (they are ~1-5% of candidates), augmented on the fly."""
    pos = torch.nonzero(data.y > 0.5).flatten()
    neg = torch.nonzero(data.y <= 0.5).flatten()
    n_pos = max(1, int(round(batch_size * pos_fraction)))

    def gen(epoch: int, size: int | None, g: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            ip = pos[torch.randint(len(pos), (n_pos,), generator=g)]
            ineg = neg[torch.randint(len(neg), (batch_size - n_pos,), generator=g)]
            idx = torch.cat([ip, ineg])
            x = data.x[idx].float()
            if augment:
                x = augment_patches(x, g)
            yield x, data.y[idx]

    return gen


# --------------------------------------------------------------------------------------------------------------------
# Per-subject evaluation


def subject_counts(
    detector: CmbDetector, rec: dict[str, np.ndarray], probs: np.ndarray, threshold: float
) -> tuple[int, int, int]:
    """(true bleeds, detected bleeds, false positives) for one case at ``threshold`` after merging."""
    from triage_node.inference.cmb import Candidates

    spacing = tuple(float(v) for v in rec["spacing"])
    cands = Candidates(
        rec["centres"].astype(np.float64), np.zeros(len(rec["centres"]), np.float32), np.zeros((1, 1, 1), bool), 1.0
    )
    centres, _ = detector.select(cands, probs, spacing, threshold, patches=rec["patches"])  # type: ignore[arg-type]
    sp = np.asarray(spacing)
    truth, radii = rec["truth"].astype(np.float64), rec["radii"]
    used = np.zeros(len(centres), dtype=bool)
    found = 0
    for c, r in zip(truth, radii, strict=True):
        if len(centres) == 0:
            continue
        d = np.linalg.norm((centres - c) * sp, axis=1)
        d[used] = np.inf
        k = int(np.argmin(d))
        if d[k] <= match_radius_mm(float(r)):
            used[k] = True
            found += 1
    return len(truth), found, int((~used).sum())


def froc(detector: CmbDetector, records: list[dict[str, np.ndarray]], thresholds: Sequence[float]) -> dict[str, Any]:
    """Per-subject sensitivity (pooled over bleeds and mean over subjects) and FP/subject at each threshold."""
    probs = [detector.score(r["patches"].astype(np.float32)) for r in records]
    rows = []
    for t in thresholds:
        counts = [subject_counts(detector, r, p, t) for r, p in zip(records, probs, strict=True)]
        n_true = sum(c[0] for c in counts)
        n_found = sum(c[1] for c in counts)
        per_subj = [c[1] / c[0] for c in counts if c[0] > 0]
        fps = [c[2] for c in counts]
        exact = [int(c[1] + c[2] == c[0]) for c in counts]
        rows.append(
            {
                "threshold": float(t),
                "sensitivity": n_found / max(n_true, 1),
                "mean_subject_sensitivity": float(np.mean(per_subj)) if per_subj else None,
                "fp_per_subject": float(np.mean(fps)),
                "subjects_without_fp": float(np.mean([f == 0 for f in fps])),
                "count_exact": float(np.mean(exact)),
            }
        )
    return {"subjects": len(records), "bleeds": int(sum(len(r["truth"]) for r in records)), "curve": rows}


def pick_threshold(curve: list[dict[str, Any]], max_fp: float) -> dict[str, Any]:
    """The most sensitive operating point with FP/subject <= ``max_fp`` (ties: the higher threshold)."""
    ok = [r for r in curve if r["fp_per_subject"] <= max_fp]
    if not ok:
        return max(curve, key=lambda r: r["threshold"])
    return max(ok, key=lambda r: (r["sensitivity"], r["threshold"]))


def candidate_recall(records: list[dict[str, np.ndarray]]) -> float:
    """Share of true bleeds that the candidate detector reaches at all (the ceiling on sensitivity)."""
    n = sum(len(r["truth"]) for r in records)
    hit = 0
    for r in records:
        sp = r["spacing"].astype(np.float64)
        for c, rad in zip(r["truth"], r["radii"], strict=True):
            if len(r["centres"]) and np.linalg.norm((r["centres"] - c) * sp, axis=1).min() <= match_radius_mm(
                float(rad)
            ):
                hit += 1
    return hit / max(n, 1)


# --------------------------------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class CmbRecipe:
    n_train: int = 160
    n_val: int = 40
    batch_size: int = 64
    pos_fraction: float = 0.25
    steps_per_epoch: int = 150
    augment: bool = True
    max_fp_per_subject: float = 0.5
    transfer_from: Path | None = None
    freeze_blocks: int = 0
    widths: tuple[int, ...] = (16, 32, 48, 64, 64)
    train_seeds: tuple[int, ...] = ()  # explicit seeds instead of the first n_train / n_val of each split
    val_seeds: tuple[int, ...] = ()


def parse_seeds(text: str) -> tuple[int, ...]:
    """``"0-45,100000-100004"`` -> the seeds, inclusive ranges."""
    out: list[int] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return tuple(out)


def _ranges(seeds: Sequence[int]) -> str:
    s = sorted(seeds)
    parts: list[str] = []
    start = s[0]
    for k, a in enumerate(s):
        if k + 1 == len(s) or s[k + 1] != a + 1:
            parts.append(f"{start}-{a}" if a != start else str(a))
            if k + 1 < len(s):
                start = s[k + 1]
    return ",".join(parts)


def _stay_in_eval(module: torch.nn.Module, args: Any) -> None:
    module.eval()


def freeze(net: CmbNet, n_blocks: int) -> None:
    """Transfer-learning variant: keep the first ``n_blocks`` conv blocks fixed (batch-norm statistics too)."""
    for b in list(net.blocks)[:n_blocks]:
        for p in b.parameters():
            p.requires_grad_(False)
        b.eval()
        # fit() switches the whole net to train mode every epoch; this puts the frozen blocks back before each forward,
        # so their batch norm keeps normalising with (and never updates) the transferred statistics.
        b.register_forward_pre_hook(_stay_in_eval)


def cmb_net_for(recipe: CmbRecipe, seed: int) -> CmbNet:
    """The network to train: initial weights from ``seed``, then the matching tensors of ``recipe.transfer_from``,
    then the first ``recipe.freeze_blocks`` blocks frozen."""
    from triage_lab.training.loop import load_init, seed_everything

    seed_everything(seed)
    net = build_cmb_net(widths=recipe.widths)
    if recipe.transfer_from is not None:
        load_init(net, recipe.transfer_from)
    if recipe.freeze_blocks:
        freeze(net, recipe.freeze_blocks)
    return net


class TrainingDetector(CmbDetector):
    """The detector as training validates with it: patches go to the network's device (the one :func:`fit` trains
    on), probabilities come back to the CPU. The analyzer's :class:`CmbDetector` runs on the CPU only."""

    def score(self, patches: np.ndarray) -> np.ndarray:
        if not isinstance(self.net, torch.nn.Module):
            return super().score(patches)
        dev = model_device(self.net)
        self.net.eval()
        out = []
        with torch.inference_mode():
            for i in range(0, len(patches), self.batch_size):
                x = torch.from_numpy(np.ascontiguousarray(patches[i : i + self.batch_size])).to(dev)
                out.append(torch.sigmoid(self.net(x).float()).cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def train_cmb(
    cache: Path,
    out: Path,
    recipe: CmbRecipe,
    cfg: TrainConfig,
    version: str = "1.0.0",
    workers: int = 1,
    progress: bool = True,
    cases: SubjectSplit[ValdoCase] | None = None,
) -> dict[str, Any]:
    """Generate (if missing) and load the cached cases, train, pick the operating point on validation, write ``out``.

    ``cases``: train and validate on these real subjects (a VALDO folder, :func:`nifti_mr.valdo_split`) instead of
    synthetic seeds."""
    from triage_lab.training.mr_cards import write_cmb_dir

    ccfg = CandidateConfig()
    if cases is None:
        tr = list(recipe.train_seeds) or split_seeds("train", recipe.n_train)
        va = list(recipe.val_seeds) or split_seeds("val", recipe.n_val)
        if set(tr) & set(va):
            raise ValueError(f"training and validation seeds overlap: {sorted(set(tr) & set(va))[:5]}")
        generate(cache, tr + va, ccfg, workers=workers, progress=progress)
        train_recs, val_recs = load_records(cache, tr), load_records(cache, va)
        data_desc = (
            f"synthetic SWI: {len(tr)} cases (seeds {tr[0]}-{tr[-1]}), ~70% from MNI152 tissue maps, ~30% from "
            "the invesalius head CT; 0-8 microbleeds each (2-10 mm, blooming), veins as distractors"
        )
        val_desc = f"{len(va)} cases (seeds {_ranges(va)}), used to pick the operating threshold"
    else:
        train_recs = [
            record_from_arrays(c.volume, c.spacing, c.centres, c.radii, c.source, ccfg) for c in cases.cases("train")
        ]
        val_recs = [
            record_from_arrays(c.volume, c.spacing, c.centres, c.radii, c.source, ccfg) for c in cases.cases("val")
        ]
        data_desc = f"{cases.describe('train')}: {cases.content}"
        val_desc = f"{cases.describe('val')}, used to pick the operating threshold"
    data = patch_set(train_recs)
    log.info("cmb: %d training patches (%d positive)", len(data), int(data.y.sum()))
    net = cmb_net_for(recipe, cfg.seed)
    cfg_fit = cfg if recipe.transfer_from is None else TrainConfig(**{**cfg.__dict__, "init_from": None})
    pos_w = torch.tensor(1.0, device=cfg.device)

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x, y = batch
        return F.binary_cross_entropy_with_logits(m(x).float(), y, pos_weight=pos_w)

    val_set = patch_set(val_recs, with_extra=False)
    detector = TrainingDetector(net, ccfg)

    def validate(m: torch.nn.Module) -> dict[str, float]:
        p = detector.score(val_set.x.float().numpy())
        y = val_set.y.numpy()
        eps = 1e-6
        loss = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
        curve = froc(detector, val_recs, [0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.98])["curve"]
        best = pick_threshold(curve, recipe.max_fp_per_subject)
        # Model selection on what the card promises: sensitivity within the FP budget (not the patch-level loss).
        score = best["sensitivity"] if best["fp_per_subject"] <= recipe.max_fp_per_subject else 0.0
        return {"val_loss": loss, "val_sens": best["sensitivity"], "val_fp": best["fp_per_subject"], "val_score": score}

    t0 = time.monotonic()
    hist, best = fit(
        net,
        balanced_batches(data, recipe.batch_size, recipe.pos_fraction, recipe.augment),
        recipe.steps_per_epoch,
        loss_fn,
        validate,
        cfg_fit,
        monitor="val_score",
        lower_is_better=False,
    )
    net.load_state_dict(best)
    grid = [float(t) for t in np.round(np.linspace(0.05, 0.99, 48), 3)]
    val_curve = froc(detector, val_recs, grid)
    op = pick_threshold(val_curve["curve"], recipe.max_fp_per_subject)
    training = {
        "data": data_desc,
        "patches": len(data),
        "positive_patches": int(data.y.sum()),
        "validation": val_desc,
        "recipe": {
            "optimizer": f"AdamW lr {cfg.lr} weight_decay {cfg.weight_decay}",
            "schedule": "one-cycle" if cfg.one_cycle else "constant",
            "epochs": cfg.epochs,
            "steps_per_epoch": recipe.steps_per_epoch,
            "batch_size": recipe.batch_size,
            "positive_fraction": recipe.pos_fraction,
            "augmentation": "flips (x, y, slice order), rotation +-180 deg, gain +-10%" if recipe.augment else "off",
            "mixed_precision": mixed_precision_text(cfg),
            "transfer_from": str(recipe.transfer_from) if recipe.transfer_from else None,
            "freeze_blocks": recipe.freeze_blocks,
            "seed": cfg.seed,
        },
        "seconds": round(time.monotonic() - t0, 1),
        "command": " ".join(shlex.quote(a) for a in sys.argv),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "history.json").write_text(json.dumps(hist.to_json(), indent=1))
    from triage_lab.training.plots import history_plot

    history_plot(out / "train_history.png", hist.to_json())
    write_cmb_dir(
        out,
        best,
        ccfg,
        {"widths": list(recipe.widths)},
        float(op["threshold"]),
        training,
        version,
        {"validation_operating_point": op},
    )
    if cases is not None:
        from triage_lab.training.nifti import declare_real_data

        declare_real_data(out, f"the {cases.dataset} NIfTI folder {cases.root}")
    return {"operating_point": op, "history": hist.to_json()}


def evaluate_cmb(
    model_dir: Path, cache: Path, n_test: int, workers: int = 1, progress: bool = True, precision: str = "fp32"
) -> dict[str, Any]:
    """Per-subject sensitivity and FP/subject on held-out test seeds; writes ``eval.json`` and FROC / count plots.

    ``precision``: the analyzer's (fp32 | bf16 | auto, the daemon's default)."""
    from triage_lab.synth.mr import make_swi_case, swi_volume
    from triage_lab.training.mr_cards import update_metrics
    from triage_lab.training.mr_plots import count_plot, froc_plot
    from triage_node.inference.card import ModelCard
    from triage_node.inference.cmb import CmbAnalyzer, analyze_with

    card = ModelCard.load(model_dir / "model.yaml")
    an = CmbAnalyzer(card, precision=precision)
    det = an.detector
    seeds = split_seeds("test", n_test)
    generate(cache, seeds, det.cfg, workers=workers, progress=progress)
    recs = load_records(cache, seeds)
    grid = [float(t) for t in np.round(np.linspace(0.05, 0.99, 48), 3)]
    res = froc(det, recs, sorted(set(grid + [det.threshold])))
    at = next(r for r in res["curve"] if abs(r["threshold"] - det.threshold) < 1e-9)
    # End-to-end speed and count agreement on a few whole volumes through the analyzer itself.
    t_sec, counts = [], []
    for s in seeds[: min(8, len(seeds))]:
        case = make_swi_case(s)
        out = analyze_with(det, swi_volume(case), an.name, an.version)
        t_sec.append(out.seconds)
        counts.append((len(case.centres), int(out.findings[0].count or 0)))
    all_counts = []
    for r in recs:
        p = det.score(r["patches"].astype(np.float32))
        n_true, found, fp = subject_counts(det, r, p, det.threshold)
        all_counts.append((n_true, found + fp))
    report = {
        "test_seeds": f"{seeds[0]}-{seeds[-1]} (never used in training or threshold selection)",
        "subjects": res["subjects"],
        "bleeds": res["bleeds"],
        "threshold": det.threshold,
        "sensitivity": at["sensitivity"],
        "mean_subject_sensitivity": at["mean_subject_sensitivity"],
        "fp_per_subject": at["fp_per_subject"],
        "subjects_without_fp": at["subjects_without_fp"],
        "count_exact": at["count_exact"],
        "candidate_recall": candidate_recall(recs),
        "seconds_per_volume_mean": float(np.mean(t_sec)),
        "precision": det.precision,
        "target": "sensitivity >= 0.90 at <= 1 FP/subject",
        "target_met": bool(at["sensitivity"] >= 0.9 and at["fp_per_subject"] <= 1.0),
        "curve": res["curve"],
    }
    if det.precision == "int8":  # the export's figures go next to the float model's, never over them
        record_int8_metrics(model_dir, {k: v for k, v in report.items() if k != "curve"})
        return report
    (model_dir / "eval.json").write_text(json.dumps(report, indent=1))
    froc_plot(model_dir / "froc.png", res["curve"], det.threshold)
    count_plot(model_dir / "counts.png", all_counts)
    update_metrics(model_dir, {k: v for k, v in report.items() if k != "curve"})
    return report


def reselect(
    model_dir: Path,
    cache: Path,
    val_seeds: Sequence[int],
    max_fp: float,
    checkpoint: Path | None = None,
    note: str = "",
) -> dict[str, Any]:
    """Re-pick the operating threshold on validation seeds (optionally for the weights in ``checkpoint``, e.g. the last
    epoch's ``checkpoints/last.pt``) and rewrite the model directory, keeping the card's training record."""
    from triage_lab.training.mr_cards import write_cmb_dir
    from triage_node.inference.card import ModelCard, _thaw

    card = ModelCard.load(model_dir / "model.yaml")
    params = dict(_thaw(card.architecture)).get("params", {})
    net = build_cmb_net(**params)
    if checkpoint is not None:
        state = torch.load(checkpoint, map_location="cpu")["model"]
    else:
        from safetensors.torch import load_file

        state = load_file(str(card.weights_path))
    net.load_state_dict(state)
    ccfg = CandidateConfig.from_dict(dict(card.input.get("candidates", {})))
    det = CmbDetector(net.eval(), ccfg)
    recs = load_records(cache, val_seeds)
    grid = [float(t) for t in np.round(np.linspace(0.05, 0.99, 48), 3)] + [0.995, 0.998, 0.999]
    op = pick_threshold(froc(det, recs, grid)["curve"], max_fp)
    training = dict(_thaw(card.training))
    training["selection"] = (
        f"threshold {op['threshold']} picked on validation seeds {_ranges(val_seeds)} as the most sensitive point with "
        f"<= {max_fp} FP/subject"
        + (f"; weights from {checkpoint.name}" if checkpoint else "")
        + (f"; {note}" if note else "")
    )
    write_cmb_dir(
        model_dir,
        {k: v.detach().cpu() for k, v in net.state_dict().items()},
        ccfg,
        params,
        float(op["threshold"]),
        training,
        card.version,
        {"validation_operating_point": op},
    )
    return op
