"""The radiologists' worklist as a FastAPI app: login, the worklist and study pages, the JSON API, /healthz, /metrics.

``create_app(ctx)`` builds everything from a WebContext; the daemon runs the result with uvicorn in a thread. Nothing
with patient data is served without a session; every POST needs the session's CSRF token.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import secrets
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import Depends, FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from triage_node.users import UserStore
from triage_node.web import api, pages, review
from triage_node.web.actions import audit
from triage_node.web.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    LoginThrottle,
    SessionCodec,
    new_token,
    tokens_match,
)
from triage_node.web.auth import Session as WebSession
from triage_node.web.context import WebContext
from triage_node.web.schemas import Health
from triage_node.web.security import Guard, NotAuthenticated, csrf_session, not_authenticated_response, safe_next
from triage_node.web.templating import add_filters

__all__ = ["WebContext", "create_app"]

log = logging.getLogger(__name__)

HERE = Path(__file__).parent


def create_app(ctx: WebContext) -> FastAPI:
    """The whole web app for one daemon. ``config.web.secret_key`` signs sessions; without one a random key is made
    per process (sessions then end at a restart)."""
    web = ctx.config.web
    # The config file's users, then the database's (`triage-node user add`), looked up at each login.
    users = UserStore(ctx.sessions, web.users)
    secret = web.secret_key or secrets.token_urlsafe(32)
    guard = Guard(web, SessionCodec(secret, web.session_timeout_min * 60.0, ctx.clock))
    throttle = LoginThrottle(web.max_failed_logins, dt.timedelta(minutes=web.lockout_min), ctx.clock)
    templates = Jinja2Templates(directory=HERE / "templates")
    add_filters(templates.env)

    app = FastAPI(
        title="triage-node worklist",
        version="1",
        description="Flagged brain CT/MR studies. Every route except /healthz, /metrics and /openapi.json needs a "
        "session (log in at /login, or a trusted reverse proxy); every POST needs the X-CSRF-Token header "
        "(GET /api/session returns it). The JSON shape is documented in docs/api.md.",
        docs_url=None,  # Swagger UI would load scripts from a CDN; hospital networks often block it
        redoc_url=None,
    )
    app.middleware("http")(guard.middleware)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.exception_handler(NotAuthenticated)
    async def _not_authenticated(request: Request, exc: NotAuthenticated) -> Response:
        return not_authenticated_response(request, web)

    @app.get("/healthz", response_model=Health, tags=["operations"])
    def healthz() -> Any:
        """Liveness and database reachability; no authentication, no patient data."""
        try:
            with ctx.sessions() as s:
                s.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            log.error("healthz: database unreachable: %s", exc.__class__.__name__)
            return JSONResponse({"status": "error", "database": "unreachable"}, status_code=503)
        return {"status": "ok", "database": "ok"}

    if ctx.metrics_registry is not None:
        registry = ctx.metrics_registry

        @app.get("/metrics", include_in_schema=False)
        def metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str | None = None) -> Response:
        target = safe_next(unquote(next) if next else None)
        if web.auth == "proxy_header" or request.state.session is not None:
            return RedirectResponse(target, status_code=303)
        return _login_page(request, target, error=None, status_code=200)

    def _login_page(request: Request, target: str, error: str | None, status_code: int) -> Response:
        token = new_token()
        response = templates.TemplateResponse(
            request,
            "login.html",
            {"csrf": token, "next": target, "error": error, "user": None, "no_users": users.count() == 0},
            status_code=status_code,
        )
        response.set_cookie(
            LOGIN_COOKIE,
            guard.codec.dump_login(token),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/login",
        )
        request.state.session_handled = True
        return response

    @app.post("/login", include_in_schema=False)
    def login(
        request: Request,
        username: Annotated[str, Form(max_length=128)],
        password: Annotated[str, Form(max_length=1024)],
        csrf_token: Annotated[str, Form()] = "",
        next: Annotated[str, Form()] = "/",
    ) -> Response:
        if web.auth != "password":
            return JSONResponse({"detail": "log in through the reverse proxy"}, status_code=404)
        if not tokens_match(guard.codec.load_login(request.cookies.get(LOGIN_COOKIE)) or "", csrf_token):
            return JSONResponse({"detail": "CSRF token missing or wrong; reload the login page"}, status_code=403)
        now = ctx.clock()
        address = request.client.host if request.client else "?"
        wait = throttle.retry_after(address, username)
        if wait > 0:
            log.warning("login for user %r from %s refused: too many failed attempts", username, address)
            audit(ctx.sessions, username, "login_locked", now)
            minutes = max(1, math.ceil(wait / 60))
            response = _login_page(
                request, safe_next(next), error=f"Too many failed attempts. Try again in {minutes} min.",
                status_code=429,
            )
            response.headers["Retry-After"] = str(math.ceil(wait))
            return response
        if not users.verify(username, password):
            throttle.failed(address, username)
            log.warning("failed login for user %r from %s", username, address)
            audit(ctx.sessions, username, "login_failed", now)
            return _login_page(request, safe_next(next), error="Wrong user name or password.", status_code=401)
        throttle.succeeded(address, username)
        session = guard.codec.start(username)
        log.info("user %s logged in", username)
        audit(ctx.sessions, username, "login", now)
        response = RedirectResponse(safe_next(next), status_code=303)
        guard.set_cookie(response, request, session)
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        request.state.session_handled = True
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, session: Annotated[WebSession, Depends(csrf_session)]) -> Response:
        audit(ctx.sessions, session.user, "logout", ctx.clock())
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        request.state.session_handled = True
        return response

    pages.add_routes(app, ctx, templates)
    api.add_routes(app, ctx)
    review.add_routes(app, ctx, templates)
    return app
