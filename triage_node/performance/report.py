"""The performance figures, from the database: per model, version and mode (live or shadow) the flags per day, PPV and
sensitivity on audited negatives from the radiologists' current verdicts (with 95% Wilson intervals, per label
too), time to flag per pipeline, and the recent series' acquisition against each model card's ``input.ranges``.

The window is the jobs whose flag (or, without one, creation) falls in the last ``days`` days; drift looks at the
series processed in the last ``recent_days`` days. One shape feeds the page, the JSON API and the CSV.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from triage_node.config import Config
from triage_node.inference.card import CardError, ModelCard
from triage_node.performance.acquisition import fill_missing
from triage_node.performance.stats import drift_flags, percentiles, ppv, sensitivity
from triage_node.worklist.db import read_transaction
from triage_node.worklist.models import FindingRow, Job, SeriesAcquisition, Verdict, VerdictKind
from triage_node.worklist.verdicts import NO_FINDING, latest

log = logging.getLogger(__name__)

ALL = "(all)"
Key = tuple[str, str, bool]  # model, version, shadow


@dataclass(frozen=True)
class Window:
    now: dt.datetime
    days: int = 30
    recent_days: int = 7
    warn_fraction: float = 0.1
    min_series: int = 3

    @property
    def start(self) -> dt.datetime:
        return self.now - dt.timedelta(days=self.days)

    @property
    def recent_start(self) -> dt.datetime:
        return self.now - dt.timedelta(days=self.recent_days)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _mode(shadow: bool) -> str:
    return "shadow" if shadow else "live"


def load_cards(config: Config, names: Iterable[str]) -> dict[str, ModelCard]:
    """The cards of ``names`` (folders under models.dir) by card name; unreadable ones are logged and left out."""
    cards: dict[str, ModelCard] = {}
    for name in sorted(set(names)):
        path = Path(config.models.dir) / name / "model.yaml"
        if not path.is_file():
            continue
        try:
            card = ModelCard.load(path)
        except CardError as exc:
            log.warning("performance: model card %s not read: %s", path, exc)
            continue
        cards[card.name] = card
    return cards


def _card_ranges(card: ModelCard | None) -> dict[str, Any] | None:
    if card is None:
        return None
    ranges = card.input.get("ranges")
    if ranges is None:
        return None
    return {str(k): (list(v) if isinstance(v, (list, tuple)) else v) for k, v in dict(ranges).items()}


def performance(
    sessions: sessionmaker[Session], config: Config, spool_dir: Path, window: Window
) -> dict[str, Any]:
    """Every figure of the page (see the module docstring) as one JSON-ready dict."""
    start = window.start
    job_time = func.coalesce(Job.flagged_at, Job.created_at)
    with read_transaction(sessions) as s:
        finding_rows = s.execute(
            select(
                FindingRow.job_id, FindingRow.model, FindingRow.model_version, FindingRow.label, FindingRow.present,
                FindingRow.shadow, Job.flagged_at, Job.created_at, Job.series_id,
            )
            .join(Job, Job.id == FindingRow.job_id)
            .where(job_time >= start)
        ).all()
        current = [
            (v.job_id, v.label, v.model, v.model_version, bool(v.present), bool(v.shadow), v.verdict)
            for v in latest(
                s.scalars(select(Verdict).join(Job, Job.id == Verdict.job_id).where(job_time >= start))
            ).values()
        ]
        flag_rows = s.execute(
            select(Job.pipeline, Job.priority, Job.flagged_at, Job.last_instance_at)
            .where(Job.flagged_at.is_not(None), Job.last_instance_at.is_not(None), Job.flagged_at >= start)
        ).all()

    # ---- flags per day and positive calls ---------------------------------------------------------------------
    flags_by_day: dict[Key, Counter[str]] = defaultdict(Counter)
    flagged_jobs: dict[Key, set[int]] = defaultdict(set)
    positives: dict[tuple[str, str, bool, str], int] = Counter()
    models_by_job: dict[int, set[Key]] = defaultdict(set)
    series_by_model: dict[str, set[int]] = defaultdict(set)
    recent_series_by_model: dict[str, set[int]] = defaultdict(set)
    for job_id, model, version, label, present, shadow, flagged_at, created_at, series_id in finding_rows:
        key: Key = (model, version, bool(shadow))
        models_by_job[job_id].add(key)
        when = flagged_at or created_at
        series_by_model[model].add(series_id)
        if when >= window.recent_start:
            recent_series_by_model[model].add(series_id)
        if present:
            positives[(model, version, bool(shadow), label)] += 1
            if job_id not in flagged_jobs[key]:
                flagged_jobs[key].add(job_id)
                flags_by_day[key][when.astimezone(dt.UTC).date().isoformat()] += 1

    # ---- verdicts -------------------------------------------------------------------------------------------------
    tallies: dict[tuple[str, str, bool, str], Counter[str]] = defaultdict(Counter)
    audited_negatives: Counter[Key] = Counter()
    unattributed_missed = 0
    for job_id, label, v_model, v_version, present, v_shadow, verdict in current:
        if verdict == VerdictKind.MISSED.value:
            if v_model is None:
                unattributed_missed += 1
                continue
            tallies[(v_model, v_version or "?", v_shadow, label)]["missed"] += 1
        elif present and v_model is not None:
            tallies[(v_model, v_version or "?", v_shadow, label)][verdict] += 1
        elif label == NO_FINDING and verdict == VerdictKind.AGREE.value:
            for key in models_by_job.get(job_id, ()):
                audited_negatives[key] += 1

    # ---- per model, version and mode --------------------------------------------------------------------------
    keys: set[Key] = set(flags_by_day) | set(models_by_job_keys(models_by_job)) | {k[:3] for k in tallies}
    days = [(start + dt.timedelta(days=i)).date().isoformat() for i in range(window.days + 1)]
    models: list[dict[str, Any]] = []
    for model, version, shadow in sorted(keys, key=lambda k: (k[0], k[1], k[2])):
        labels = sorted(
            {lab for (m, ver, sh, lab) in positives if (m, ver, sh) == (model, version, shadow)}
            | {lab for (m, ver, sh, lab) in tallies if (m, ver, sh) == (model, version, shadow)}
        )
        label_rows = []
        total: Counter[str] = Counter()
        total_positive = 0
        for label in labels:
            t = tallies.get((model, version, shadow, label), Counter())
            n_pos = positives.get((model, version, shadow, label), 0)
            total.update(t)
            total_positive += n_pos
            label_rows.append(_figures(label, n_pos, t))
        per_day = flags_by_day.get((model, version, shadow), Counter())
        models.append(
            {
                "model": model,
                "model_version": version,
                "mode": _mode(shadow),
                "flags": len(flagged_jobs.get((model, version, shadow), ())),
                "flags_per_day": [{"date": d, "flags": per_day.get(d, 0)} for d in days],
                "audited_negatives": audited_negatives.get((model, version, shadow), 0),
                **_figures(ALL, total_positive, total),
                "labels": label_rows,
            }
        )

    # ---- time to flag -------------------------------------------------------------------------------------------
    seconds: dict[str, list[float]] = defaultdict(list)
    flagged_seconds: dict[str, list[float]] = defaultdict(list)
    for pipeline, priority, flagged_at, last in flag_rows:
        if flagged_at is None or last is None:
            continue
        value = max(0.0, (flagged_at - last).total_seconds())
        for name in (pipeline or "?", ALL):
            seconds[name].append(value)
            if priority != "none":
                flagged_seconds[name].append(value)
    time_to_flag = [
        {
            "pipeline": name,
            "jobs": len(values),
            **{k: _round(v) for k, v in percentiles(values, (50, 90, 95, 100)).items()},
            "flagged_jobs": len(flagged_seconds.get(name, [])),
            **{f"flagged_{k}": _round(v) for k, v in percentiles(flagged_seconds.get(name, []), (50, 90)).items()},
        }
        for name, values in sorted(seconds.items(), key=lambda kv: (kv[0] == ALL, kv[0]))
    ]

    # ---- input drift ----------------------------------------------------------------------------------------------
    configured = {n for names in config.models.pipelines.values() for n in names}
    cards = load_cards(config, configured | set(series_by_model))
    recent_ids = set().union(*recent_series_by_model.values()) if recent_series_by_model else set()
    fill_missing(sessions, spool_dir, recent_ids, window.now)
    with read_transaction(sessions) as s:
        acquisition = {
            a.series_id: {
                "manufacturer": a.manufacturer,
                "kernel": a.kernel,
                "slice_thickness_mm": a.slice_thickness_mm,
                "pixel_spacing_mm": a.pixel_spacing_mm,
                "head_width_mm": a.head_width_mm,
            }
            for a in s.scalars(select(SeriesAcquisition).where(SeriesAcquisition.series_id.in_(recent_ids)))
            if a.error is None
        }
    drift = []
    for name in sorted(set(cards) | set(recent_series_by_model)):
        card = cards.get(name)
        ranges = _card_ranges(card)
        series = [acquisition[i] for i in sorted(recent_series_by_model.get(name, ())) if i in acquisition]
        attributes = drift_flags(series, ranges, warn_fraction=window.warn_fraction, min_series=window.min_series)
        warnings = [
            f"{a.outside} of {a.known} recent series outside the card's {a.title}: "
            + (f"{a.expected[0]:g}-{a.expected[1]:g}" if a.kind == "numeric" else ", ".join(a.expected))
            for a in attributes
            if a.warning
        ]
        drift.append(
            {
                "model": name,
                "model_version": card.version if card is not None else None,
                "ranges_declared": ranges is not None,
                "recent_series": len(series),
                "attributes": [a.as_dict() for a in attributes],
                "warnings": warnings,
                "_values": {a.name: a.values for a in attributes if a.kind == "numeric"},
            }
        )

    return {
        "generated_at": _iso(window.now),
        "window": {
            "from": _iso(start),
            "to": _iso(window.now),
            "days": window.days,
            "recent_days": window.recent_days,
            "warn_fraction": window.warn_fraction,
            "min_series": window.min_series,
        },
        "models": models,
        "unattributed_missed": unattributed_missed,
        "time_to_flag": time_to_flag,
        "drift": drift,
    }


def models_by_job_keys(models_by_job: Mapping[int, set[tuple[str, str, bool]]]) -> set[tuple[str, str, bool]]:
    out: set[tuple[str, str, bool]] = set()
    for keys in models_by_job.values():
        out |= keys
    return out


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _figures(label: str, positives: int, t: Mapping[str, int]) -> dict[str, Any]:
    agree, disagree, unsure, missed = (t.get(k, 0) for k in ("agree", "disagree", "unsure", "missed"))
    return {
        "label": label,
        "positives": positives,
        "agree": agree,
        "disagree": disagree,
        "unsure": unsure,
        "missed": missed,
        "ppv": ppv(agree, disagree).as_dict(),
        "sensitivity": sensitivity(agree, missed).as_dict(),
    }


def public(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report without the page's private plotting data."""
    out = dict(report)
    out["drift"] = [{k: v for k, v in d.items() if not k.startswith("_")} for d in report["drift"]]
    return out


CSV_COLUMNS = ("section", "model", "model_version", "mode", "label", "metric", "value", "low", "high", "k", "n")


def to_csv(report: Mapping[str, Any]) -> str:
    """The same figures in long form: one value per line (section, model, version, mode, label, metric, value, 95%
    interval, k of n)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for m in report["models"]:
        head = (m["model"], m["model_version"], m["mode"])
        w.writerow(("flags", *head, ALL, "flags", m["flags"], "", "", "", ""))
        w.writerow(("flags", *head, ALL, "audited_negatives", m["audited_negatives"], "", "", "", ""))
        for day in m["flags_per_day"]:
            w.writerow(("flags_per_day", *head, ALL, day["date"], day["flags"], "", "", "", ""))
        for row in [m, *m["labels"]]:
            for metric in ("ppv", "sensitivity"):
                p = row[metric]
                w.writerow(("accuracy", *head, row["label"], metric, _fmt(p["value"]), _fmt(p["low"]),
                            _fmt(p["high"]), p["k"], p["n"]))
            for metric in ("positives", "agree", "disagree", "unsure", "missed"):
                w.writerow(("verdicts", *head, row["label"], metric, row[metric], "", "", "", ""))
    for t in report["time_to_flag"]:
        for metric in ("jobs", "p50", "p90", "p95", "p100", "flagged_jobs", "flagged_p50", "flagged_p90"):
            w.writerow(("time_to_flag_s", "", "", "", t["pipeline"], metric, _fmt(t[metric]), "", "", "", ""))
    for d in report["drift"]:
        for a in d["attributes"]:
            w.writerow(("drift", d["model"], d["model_version"] or "", "", a["name"], "fraction_outside",
                        _fmt(a["fraction_outside"]), "", "", a["outside"], a["known"]))
            w.writerow(("drift", d["model"], d["model_version"] or "", "", a["name"], "warning",
                        int(a["warning"]), "", "", "", ""))
    return buf.getvalue()


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
