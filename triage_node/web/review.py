"""The radiologist's loop: the series viewer (slice layers rendered from the spool), verdicts on the models' calls
(form and JSON API), and the performance page with its JSON and CSV.

Viewer URLs name a job and a slice index only; every route here needs a session, and every POST the CSRF token.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from triage_node.performance import svg
from triage_node.performance.report import Window, performance, public, to_csv
from triage_node.web.actions import UnknownStudy, detail_with_urls
from triage_node.web.auth import Session as WebSession
from triage_node.web.context import WebContext
from triage_node.web.schemas import StudyDetailOut, VerdictIn
from triage_node.web.security import csrf_session, current_session
from triage_node.web.viewer import LAYERS, LayerCache, ViewerError, load_series_view, masks_stamp, render_layer
from triage_node.worklist.db import transaction
from triage_node.worklist.key_images import RenderError
from triage_node.worklist.verdicts import NO_FINDING, OTHER, UnknownTarget, VerdictError, record_verdict

log = logging.getLogger(__name__)

VERDICT_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "No session: log in first"},
    403: {"description": "CSRF token missing or wrong"},
    404: {"description": "No such study, or the job is not one of the study's"},
    422: {"description": "The verdict does not fit the finding (e.g. disagree on an absent finding)"},
}

Days = Annotated[int, Query(ge=1, le=366, description="The window: jobs flagged in the last N days")]
Recent = Annotated[int, Query(ge=1, le=366, description="Drift: series processed in the last N days")]


def review_items(study: dict[str, Any]) -> list[dict[str, Any]]:
    """Per processed series of a StudyDetail, what the study page's verdict forms need: its present findings (live
    first) with their current verdicts, and for a job that flagged nothing the labels a missed finding can name."""
    current = {(v["job_id"], v["label"], v["model"]): v for v in study.get("verdicts", []) if v["current"]}
    items = []
    for series in study["series"]:
        job_id = series["job_id"]
        findings = [f for f in study["findings"] if f["series_instance_uid"] == series["series_instance_uid"]]
        if job_id is None or not findings:
            continue
        present = [
            {**f, "current": current.get((job_id, f["label"], f["model"]))}
            for f in sorted(findings, key=lambda f: (f["shadow"], -f["probability"]))
            if f["present"]
        ]
        flagged = any(not f["shadow"] for f in present)
        absent: dict[str, str] = {}
        for f in sorted(findings, key=lambda f: (f["shadow"], f["label"])):
            if not f["present"]:
                absent.setdefault(f"{f['model']}|{f['label']}", f"{f['label'].replace('_', ' ')} ({f['model']})")
        absent[f"|{OTHER}"] = "other finding"
        negative = None
        if not flagged:
            negative = current.get((job_id, NO_FINDING, None)) or next(
                (v for (j, _l, _m), v in current.items() if j == job_id and v["verdict"] == "missed"), None
            )
        items.append(
            {
                "job_id": job_id,
                "series": series,
                "flagged": flagged,
                "present": present,
                "absent_targets": absent,
                "negative": negative,
            }
        )
    return items


def viewer_jobs(study: dict[str, Any]) -> list[dict[str, Any]]:
    """The series the viewer can show (a job with a pipeline), the flagged one first."""
    flagged = {f["series_instance_uid"] for f in study["findings"] if f["present"] and not f["shadow"]}
    jobs = [
        {
            "job_id": s["job_id"],
            "text": " · ".join(
                str(x) for x in (s["series_number"], s["series_description"], s["modality"], s["pipeline"]) if x
            ),
            "flagged": s["series_instance_uid"] in flagged,
        }
        for s in study["series"]
        if s["job_id"] is not None and s["pipeline"] is not None
    ]
    return sorted(jobs, key=lambda j: not j["flagged"])


def add_routes(app: FastAPI, ctx: WebContext, templates: Jinja2Templates) -> None:
    cache = LayerCache()

    # ---- viewer -----------------------------------------------------------------------------------------------

    def view_of(job_id: int) -> Any:
        stamp = masks_stamp(ctx.sessions, job_id)
        try:
            return cache.view(job_id, stamp, lambda: load_series_view(ctx.sessions, ctx.spool_dir, job_id))
        except ViewerError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        except RenderError as exc:
            log.warning("job %s: viewer not available: %s", job_id, exc)
            raise HTTPException(status_code=500, detail="the series could not be read") from exc

    @app.get("/api/viewer/jobs/{job_id}", tags=["viewer"])
    def viewer_meta(job_id: int, session: Annotated[WebSession, Depends(current_session)]) -> Any:
        """The viewer's slice list for a job's series: count, windows, which slices carry an outline or a heat map,
        jumps to key slices and findings, and the layer URL template. No patient data."""
        return view_of(job_id).meta()

    @app.get(
        "/viewer/jobs/{job_id}/slices/{index}/{layer}.png",
        tags=["viewer"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def viewer_layer(
        job_id: int,
        index: int,
        layer: str,
        session: Annotated[WebSession, Depends(current_session)],
        window: Annotated[str | None, Query(max_length=16)] = None,
    ) -> Response:
        """One layer of one slice as PNG: ``image`` (grey, in the window preset: brain, subdural, bone on CT;
        auto on MR), ``outline`` (lesion outline, transparent) or ``heat`` (Grad-CAM, transparent)."""
        if layer not in LAYERS:
            raise HTTPException(status_code=404, detail=f"layer must be one of {list(LAYERS)}")
        view = view_of(job_id)
        chosen = window or view.default_window
        key = (job_id, masks_stamp(ctx.sessions, job_id), index, layer, chosen if layer == "image" else "")
        data = cache.get(key)
        if data is None:
            try:
                data = render_layer(view, index, layer, chosen)
            except ViewerError as exc:
                raise HTTPException(status_code=404, detail=str(exc)) from exc
            except RenderError as exc:
                log.warning("job %s slice %s: not rendered: %s", job_id, index, exc)
                raise HTTPException(status_code=500, detail="slice could not be rendered") from exc
            cache.put(key, data)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    # ---- verdicts -----------------------------------------------------------------------------------------------

    def give_verdict(uid: str, user: str, body: VerdictIn) -> None:
        try:
            with transaction(ctx.sessions) as s:
                record_verdict(
                    s, uid, user, ctx.clock(), job_id=body.job_id, verdict=body.verdict, label=body.label,
                    model=body.model, comment=body.comment,
                )
        except UnknownTarget as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        except VerdictError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc

    @app.post(
        "/api/studies/{uid}/verdicts", response_model=StudyDetailOut, tags=["worklist"], responses=VERDICT_ERRORS
    )
    def api_verdict(uid: str, body: VerdictIn, session: Annotated[WebSession, Depends(csrf_session)]) -> Any:
        """Record the caller's verdict on a finding (agree, disagree, unsure), on a job that flagged nothing (agree
        or unsure without a label), or a missed finding (``missed`` with the label the model would have used, or
        ``other``). Stored with user and time and audited; returns the StudyDetail."""
        give_verdict(uid, session.user, body)
        try:
            return detail_with_urls(ctx.sessions, uid, None, ctx.clock())
        except UnknownStudy as exc:
            raise HTTPException(status_code=404, detail="unknown study") from exc

    @app.post("/studies/{uid}/verdicts", include_in_schema=False)
    def form_verdict(
        uid: str,
        session: Annotated[WebSession, Depends(csrf_session)],
        job_id: Annotated[int, Form()],
        verdict: Annotated[str, Form(max_length=16)],
        target: Annotated[str, Form(max_length=140)] = "",
        comment: Annotated[str, Form(max_length=2000)] = "",
    ) -> Response:
        model, _, label = target.partition("|")
        try:
            body = VerdictIn(job_id=job_id, verdict=verdict, label=label or None, model=model or None,  # type: ignore[arg-type]
                             comment=comment or None)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail="verdict must be agree, disagree, unsure or missed") from exc
        give_verdict(uid, session.user, body)
        return RedirectResponse(f"/studies/{quote(uid, safe='')}#job-{job_id}", status_code=303)

    # ---- performance ------------------------------------------------------------------------------------------

    def report(days: int, recent_days: int) -> dict[str, Any]:
        return performance(ctx.sessions, ctx.config, ctx.spool_dir,
                           Window(now=ctx.clock(), days=days, recent_days=recent_days))

    @app.get("/api/performance", tags=["performance"])
    def api_performance(
        session: Annotated[WebSession, Depends(current_session)], days: Days = 30, recent_days: Recent = 7
    ) -> Any:
        """Per model, version and mode: flags per day, PPV and sensitivity on audited negatives with 95% Wilson
        intervals (per label too); time to flag per pipeline; input drift against each card's ranges."""
        return JSONResponse(public(report(days, recent_days)))

    @app.get("/api/performance.csv", tags=["performance"], response_class=Response,
             responses={200: {"content": {"text/csv": {}}}})
    def csv_performance(
        session: Annotated[WebSession, Depends(current_session)], days: Days = 30, recent_days: Recent = 7
    ) -> Response:
        """The same figures as CSV, one value per line."""
        return Response(
            to_csv(report(days, recent_days)),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="triage-node-performance.csv"'},
        )

    @app.get("/performance", response_class=HTMLResponse, include_in_schema=False)
    def performance_page(
        request: Request, session: Annotated[WebSession, Depends(current_session)], days: Days = 30,
        recent_days: Recent = 7,
    ) -> Response:
        data = report(days, recent_days)
        for m in data["models"]:
            m["svg_days"] = svg.bars_per_day(m["flags_per_day"], f"flags per day, {m['model']} {m['model_version']}")
            m["svg_ppv"] = svg.interval(m["ppv"]["value"], m["ppv"]["low"], m["ppv"]["high"], "PPV, 95% interval")
            m["svg_sens"] = svg.interval(m["sensitivity"]["value"], m["sensitivity"]["low"],
                                         m["sensitivity"]["high"], "sensitivity, 95% interval")
        for d in data["drift"]:
            for a in d["attributes"]:
                if a["kind"] == "numeric":
                    a["svg"] = svg.distribution(d["_values"].get(a["name"], []), a["expected"], a["title"])
                else:
                    a["svg"] = svg.categories(a["counts"], a["outside_values"], a["title"])
        return templates.TemplateResponse(
            request,
            "performance.html",
            {"user": session.user, "csrf": session.csrf, "report": data, "days": days, "recent_days": recent_days},
        )
