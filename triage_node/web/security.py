"""The request-side of authentication: resolving the session, requiring a user, checking CSRF tokens, headers.

Password mode: the session cookie is set at login. Proxy-header mode: the reverse proxy authenticates and names the
user in ``web.proxy_header``; a session cookie is still issued to carry the CSRF token. Only use proxy mode when the
daemon listens on 127.0.0.1 behind that proxy, since anyone who reaches the port could send the header.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import quote

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse

from triage_node.config import Web
from triage_node.web.auth import SESSION_COOKIE, Session, SessionCodec, tokens_match

log = logging.getLogger(__name__)

CSRF_HEADER = "X-CSRF-Token"
CSRF_FIELD = "csrf_token"
# Requests the page makes by itself; they must not keep an unattended session alive.
POLL_PREFIXES = ("/partials/",)
MACHINE_PREFIXES = ("/api/", "/partials/")
MAX_USER_LEN = 128

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class NotAuthenticated(Exception):
    """No valid session: pages redirect to the login form, the API answers 401."""


class Guard:
    """Session handling for one app; built from ``web`` config and the codec."""

    def __init__(self, web: Web, codec: SessionCodec):
        self.web = web
        self.codec = codec

    def resolve(self, request: Request) -> tuple[Session | None, bool]:
        """The request's session and whether it is new (proxy mode issues one on the first request)."""
        session = self.codec.load(request.cookies.get(SESSION_COOKIE))
        if self.web.auth != "proxy_header":
            return session, False
        user = request.headers.get(self.web.proxy_header, "").strip()
        if not user or len(user) > MAX_USER_LEN:
            return None, False
        if session is not None and session.user == user:
            return session, False
        return self.codec.start(user), True

    def set_cookie(self, response: Response, request: Request, session: Session) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            self.codec.dump(session),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )

    async def middleware(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        session, new = self.resolve(request)
        request.state.session = session
        request.state.session_handled = False  # login / logout set their own cookie
        response = await call_next(request)
        polling = request.url.path.startswith(POLL_PREFIXES)
        if session is not None and not request.state.session_handled and (new or not polling):
            self.set_cookie(response, request, self.codec.touch(session))
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        if not request.url.path.startswith("/static/"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response


def current_session(request: Request) -> Session:
    """FastAPI dependency: the signed-in session, or NotAuthenticated."""
    session: Session | None = getattr(request.state, "session", None)
    if session is None:
        raise NotAuthenticated()
    return session


def current_user(request: Request) -> str:
    return current_session(request).user


async def csrf_session(request: Request) -> Session:
    """FastAPI dependency for every POST: the session, after checking its CSRF token in the ``X-CSRF-Token`` header
    or the ``csrf_token`` form field (403 when missing or wrong)."""
    session = current_session(request)
    given = request.headers.get(CSRF_HEADER)
    if given is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not tokens_match(session.csrf, given):
        log.warning("refused %s %s by %s: CSRF token missing or wrong", request.method, request.url.path, session.user)
        raise HTTPException(status_code=403, detail="CSRF token missing or wrong")
    return session


def not_authenticated_response(request: Request, web: Web) -> Response:
    path = request.url.path
    if path.startswith(MACHINE_PREFIXES) or request.method != "GET":
        return JSONResponse({"detail": "login required"}, status_code=401, headers={"Cache-Control": "no-store"})
    if web.auth == "proxy_header":
        return JSONResponse({"detail": f"the reverse proxy did not name a user in {web.proxy_header}"}, status_code=401)
    target = path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def safe_next(target: str | None) -> str:
    """A local path to go to after login; anything that could leave the site becomes ``/``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
