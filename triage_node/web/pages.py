"""HTML routes: the worklist page (and the fragment it polls), the study view, acknowledgement, key images."""

from __future__ import annotations

import logging
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from triage_node.web.actions import UnknownStudy, acknowledge, detail_with_urls, key_image_files, key_image_url
from triage_node.web.auth import Session as WebSession
from triage_node.web.context import WebContext
from triage_node.web.review import review_items, viewer_jobs
from triage_node.web.security import csrf_session, current_session
from triage_node.worklist.db import read_transaction
from triage_node.worklist.key_images import RenderError, render_key_image
from triage_node.worklist.models import Priority, Series
from triage_node.worklist.queries import READ_FILTERS, StudyStatus, check_filters, count_unread, worklist

log = logging.getLogger(__name__)

UNREAD_CRITICAL_HEADER = "X-Unread-Critical"


def _filters(priority: str | None, modality: str | None, state: str | None) -> dict[str, str]:
    """The non-empty filters; raises 422 on an unknown value."""
    chosen = {k: v for k, v in (("priority", priority), ("modality", modality), ("state", state)) if v}
    try:
        check_filters(chosen.get("priority"), chosen.get("state"))
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    return chosen


def add_routes(app: FastAPI, ctx: WebContext, templates: Jinja2Templates) -> None:
    poll_ms = int(ctx.config.web.poll_interval_s * 1000)

    def rows_and_count(filters: dict[str, str]) -> tuple[list[dict[str, Any]], bool, int]:
        """The rows to show, whether more matched than the page shows, and the unread critical count."""
        with read_transaction(ctx.sessions) as s:
            rows = worklist(
                s,
                priority=filters.get("priority"),
                modality=filters.get("modality"),
                state=filters.get("state"),
                limit=ctx.page_rows + 1,
            )
            return rows[: ctx.page_rows], len(rows) > ctx.page_rows, count_unread(s, Priority.CRITICAL)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def worklist_page(
        request: Request,
        session: Annotated[WebSession, Depends(current_session)],
        priority: str | None = None,
        modality: str | None = None,
        state: str | None = None,
    ) -> Response:
        filters = _filters(priority, modality, state)
        rows, truncated, unread = rows_and_count(filters)
        with read_transaction(ctx.sessions) as s:
            modalities = sorted({m for m in s.scalars(select(Series.modality).distinct()) if m} | {"CT", "MR"})
        return templates.TemplateResponse(
            request,
            "worklist.html",
            {
                "user": session.user,
                "csrf": session.csrf,
                "rows": rows,
                "truncated": truncated,
                "filters": filters,
                "priorities": [p.value for p in Priority],
                "modalities": modalities,
                "states": [s.value for s in StudyStatus] + list(READ_FILTERS),
                "poll_url": "/partials/worklist" + (f"?{urlencode(filters)}" if filters else ""),
                "poll_ms": poll_ms,
                "unread_critical": unread,
            },
        )

    @app.get("/partials/worklist", response_class=HTMLResponse, include_in_schema=False)
    def worklist_rows(
        request: Request,
        session: Annotated[WebSession, Depends(current_session)],
        priority: str | None = None,
        modality: str | None = None,
        state: str | None = None,
    ) -> Response:
        """The table body the page polls for; does not extend the session."""
        rows, truncated, unread = rows_and_count(_filters(priority, modality, state))
        response = templates.TemplateResponse(request, "_rows.html", {"rows": rows, "truncated": truncated})
        response.headers[UNREAD_CRITICAL_HEADER] = str(unread)
        return response

    @app.get("/studies/{uid}", response_class=HTMLResponse, include_in_schema=False)
    def study_page(request: Request, uid: str, session: Annotated[WebSession, Depends(current_session)]) -> Response:
        try:
            study = detail_with_urls(ctx.sessions, uid, session.user, ctx.clock())
        except UnknownStudy as exc:
            raise HTTPException(status_code=404, detail="unknown study") from exc
        for image in study["key_images"]:
            image["large_url"] = key_image_url(uid, image["job_id"], image["sop_instance_uid"], image["label"], 768)
        return templates.TemplateResponse(
            request,
            "study.html",
            {
                "user": session.user,
                "csrf": session.csrf,
                "study": study,
                "review": review_items(study),
                "viewer_jobs": viewer_jobs(study),
            },
        )

    @app.post("/studies/{uid}/ack", include_in_schema=False)
    def study_ack(uid: str, session: Annotated[WebSession, Depends(csrf_session)]) -> Response:
        try:
            acknowledge(ctx.sessions, uid, session.user, ctx.clock())
        except UnknownStudy as exc:
            raise HTTPException(status_code=404, detail="unknown study") from exc
        return RedirectResponse(f"/studies/{quote(uid, safe='')}", status_code=303)

    @app.get(
        "/studies/{uid}/key-images/{job_id}/{sop_uid}",
        tags=["worklist"],
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    def key_image(
        uid: str,
        job_id: int,
        sop_uid: str,
        session: Annotated[WebSession, Depends(current_session)],
        label: str | None = None,
        size: Annotated[int, Query(ge=64, le=1024)] = 256,
    ) -> Response:
        """A key slice (brain window) as PNG with the lesion outline and the Grad-CAM map of ``label`` (all labels
        when the masks file has none by that name)."""
        files = key_image_files(ctx.sessions, ctx.spool_dir, uid, job_id, sop_uid)
        if files is None or not files.instance_file.is_file():
            raise HTTPException(status_code=404, detail="key image not stored (unknown, or removed by retention)")
        try:
            png = render_key_image(files.instance_file, files.masks_file, sop_uid, label, max_size=size)
        except RenderError as exc:
            log.warning("job %s: key image not rendered: %s", job_id, exc)
            raise HTTPException(status_code=500, detail="key image could not be rendered") from exc
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})
