"""Who is asking: argon2 password checks, signed session cookies with an idle timeout, CSRF tokens.

The session lives in a cookie signed with itsdangerous (nothing server-side): user, CSRF token, login time and last
activity, all as seconds from the injected clock so tests never wait for a timeout.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from itsdangerous import BadSignature, URLSafeSerializer

from triage_node.config import User
from triage_node.users import hash_password as hash_password
from triage_node.users import verify

SESSION_COOKIE = "tn_session"
LOGIN_COOKIE = "tn_login"  # carries the CSRF token of the login form before anyone is logged in


def verify_password(users: tuple[User, ...], name: str, password: str) -> bool:
    """True when ``name`` is one of ``users`` and ``password`` matches its argon2 hash (the web app itself checks
    through ``triage_node.users.UserStore``: the config file's users, then the database's)."""
    user = next((u for u in users if hmac.compare_digest(u.name, name)), None)
    return verify(user.password_hash if user else None, password)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_match(expected: str, given: str | None) -> bool:
    return bool(given) and hmac.compare_digest(expected.encode(), (given or "").encode())


@dataclass(frozen=True)
class Session:
    """A signed-in user. ``login_at`` / ``seen_at``: POSIX seconds of the injected clock."""

    user: str
    csrf: str
    login_at: float
    seen_at: float


class SessionCodec:
    """Signs and checks session cookies; ``timeout_s`` is the idle time after which a session is refused."""

    def __init__(self, secret: str, timeout_s: float, clock: Callable[[], datetime]):
        self._serializer = URLSafeSerializer(secret, salt="triage-node-session")
        self._login_serializer = URLSafeSerializer(secret, salt="triage-node-login")
        self.timeout_s = timeout_s
        self._clock = clock

    def now(self) -> float:
        return self._clock().timestamp()

    def start(self, user: str) -> Session:
        now = self.now()
        return Session(user=user, csrf=new_token(), login_at=now, seen_at=now)

    def touch(self, session: Session) -> Session:
        return replace(session, seen_at=self.now())

    def dump(self, session: Session) -> str:
        return self._serializer.dumps([session.user, session.csrf, session.login_at, session.seen_at])

    def load(self, cookie: str | None) -> Session | None:
        """The session in ``cookie``, or None when it is missing, forged, malformed or idle for too long."""
        if not cookie:
            return None
        try:
            user, csrf, login_at, seen_at = self._serializer.loads(cookie)
        except (BadSignature, ValueError, TypeError):
            return None
        if not (isinstance(user, str) and isinstance(csrf, str)):
            return None
        if not isinstance(seen_at, int | float) or not isinstance(login_at, int | float):
            return None
        if self.now() - float(seen_at) > self.timeout_s:
            return None
        return Session(user=user, csrf=csrf, login_at=float(login_at), seen_at=float(seen_at))

    def dump_login(self, token: str) -> str:
        return self._login_serializer.dumps(token)

    def load_login(self, cookie: str | None) -> str | None:
        if not cookie:
            return None
        try:
            token = self._login_serializer.loads(cookie)
        except BadSignature:
            return None
        return token if isinstance(token, str) else None


class LoginThrottle:
    """Slows password guessing: after ``max_failures`` failed logins for one (address, user name) within ``window``,
    that pair is refused until ``window`` has passed since its first counted failure. A success clears the pair.

    In memory: a restart forgets it, which is acceptable for a throttle (the audit log keeps every failure). The
    table is bounded: pairs whose window has passed are dropped on each failure.
    """

    def __init__(self, max_failures: int, window: timedelta, clock: Callable[[], datetime]):
        self.max_failures = max_failures
        self.window = window
        self.clock = clock
        self._failures: dict[tuple[str, str], tuple[datetime, int]] = {}
        self._lock = threading.Lock()

    def retry_after(self, address: str, user: str) -> float:
        """Seconds until ``(address, user)`` may try again; 0 when it may try now."""
        with self._lock:
            entry = self._failures.get((address, user.casefold()))
        if entry is None or entry[1] < self.max_failures:
            return 0.0
        left = (entry[0] + self.window - self.clock()).total_seconds()
        return max(left, 0.0)

    def failed(self, address: str, user: str) -> None:
        now = self.clock()
        key = (address, user.casefold())
        with self._lock:
            self._failures = {k: v for k, v in self._failures.items() if v[0] + self.window > now}
            first, count = self._failures.get(key, (now, 0))
            self._failures[key] = (first, count + 1)

    def succeeded(self, address: str, user: str) -> None:
        with self._lock:
            self._failures.pop((address, user.casefold()), None)
