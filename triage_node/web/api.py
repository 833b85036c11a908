"""The JSON API: the worklist, one study, acknowledgement, and the caller's session (for its CSRF token).

The shapes are the contract in docs/api.md, enforced by the response models in ``triage_node.web.schemas``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query

from triage_node.web.actions import UnknownStudy, acknowledge, detail_with_urls
from triage_node.web.auth import Session as WebSession
from triage_node.web.context import WebContext
from triage_node.web.schemas import PriorityName, SessionOut, StudyDetailOut, StudyOut
from triage_node.web.security import csrf_session, current_session
from triage_node.worklist.db import read_transaction
from triage_node.worklist.queries import worklist

UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {"description": "No session: log in first"}}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No study with this Study Instance UID"}}


def add_routes(app: FastAPI, ctx: WebContext) -> None:
    @app.get("/api/session", response_model=SessionOut, tags=["session"], responses=UNAUTHORIZED)
    def api_session(session: Annotated[WebSession, Depends(current_session)]) -> Any:
        """Who is logged in, and the CSRF token every POST must send as ``X-CSRF-Token``."""
        return {"user": session.user, "csrf_token": session.csrf}

    @app.get("/api/worklist", response_model=list[StudyOut], tags=["worklist"], responses=UNAUTHORIZED)
    def api_worklist(
        session: Annotated[WebSession, Depends(current_session)],
        priority: PriorityName | None = None,
        modality: Annotated[str | None, Query(max_length=16)] = None,
        state: Annotated[
            str | None,
            Query(description="receiving | processing | sending | error | done, or read | unread"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=5000)] = 500,
    ) -> Any:
        """Studies by priority (critical, urgent, routine, none), then arrival, oldest first."""
        try:
            with read_transaction(ctx.sessions) as s:
                return worklist(s, priority=priority, modality=modality, state=state, limit=limit)
        except ValueError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from exc

    @app.get(
        "/api/studies/{uid}", response_model=StudyDetailOut, tags=["worklist"], responses={**UNAUTHORIZED, **NOT_FOUND}
    )
    def api_study(uid: str, session: Annotated[WebSession, Depends(current_session)]) -> Any:
        """One study with its key images and audit trail."""
        try:
            return detail_with_urls(ctx.sessions, uid, session.user, ctx.clock())
        except UnknownStudy as exc:
            raise HTTPException(status_code=404, detail="unknown study") from exc

    @app.post(
        "/api/studies/{uid}/ack",
        response_model=StudyDetailOut,
        tags=["worklist"],
        responses={**UNAUTHORIZED, **NOT_FOUND, 403: {"description": "CSRF token missing or wrong"}},
    )
    def api_ack(uid: str, session: Annotated[WebSession, Depends(csrf_session)]) -> Any:
        """Mark the study read by the caller (user and time are stored, with an audit entry). The first
        acknowledgement stays; repeating it changes nothing."""
        try:
            acknowledge(ctx.sessions, uid, session.user, ctx.clock())
            return detail_with_urls(ctx.sessions, uid, None, ctx.clock())
        except UnknownStudy as exc:
            raise HTTPException(status_code=404, detail="unknown study") from exc
