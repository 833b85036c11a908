"""Worklist logins: argon2id hashes, kept in the database's ``web_users`` table by ``triage-node user``.

Where users live: ``web.users`` in the config file (read at start; for configuration management) and the
``web_users`` table of the daemon's own database (``triage-node user add|passwd|remove|list``, no YAML to edit). The
web app looks a name up at each login, in the config file first and then the table, so a user added, changed or
removed with the command applies to the running daemon at once: no restart, no SIGHUP.

Light on purpose: argon2 and SQLAlchemy only (the ``user`` command starts quickly, without the web stack).
"""

from __future__ import annotations

import datetime as dt
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from triage_node.config import User
from triage_node.worklist.models import WebUser

_hasher = PasswordHasher()
_dummy_hash: str | None = None
MAX_NAME = 128


class UserError(ValueError):
    """A user command cannot be done as asked (name taken, unknown, invalid); the message says why."""


def hash_password(password: str) -> str:
    """An argon2id hash (``triage-node hash-password``, ``triage-node user add``)."""
    if not password:
        raise ValueError("password must not be empty")
    return _hasher.hash(password)


def _dummy() -> str:
    # Verified when the user name is unknown, so a wrong name costs as long as a wrong password; made on first use.
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = _hasher.hash("triage-node: no such user")
    return _dummy_hash


def check_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME or any(ord(c) < 32 for c in name):
        raise UserError(f"user name must be 1-{MAX_NAME} printable characters, got {name!r}")
    return name


def verify(stored_hash: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored_hash``; None (no such user) costs one argon2 check too."""
    try:
        return _hasher.verify(stored_hash or _dummy(), password) and stored_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


@dataclass(frozen=True)
class UserRow:
    name: str
    source: str  # "database" | "config"
    created_at: dt.datetime | None
    updated_at: dt.datetime | None


class UserStore:
    """The logins the web app accepts: ``web.users`` of the config file, then the ``web_users`` table."""

    def __init__(self, sessions: sessionmaker[Session] | None, config_users: Sequence[User] = ()):
        self.sessions = sessions
        self.config_users = tuple(config_users)

    def stored_hash(self, name: str) -> str | None:
        user = next((u for u in self.config_users if hmac.compare_digest(u.name, name)), None)
        if user is not None:
            return user.password_hash
        if self.sessions is None:
            return None
        with self.sessions() as s:
            return s.scalar(select(WebUser.password_hash).where(WebUser.name == name))

    def verify(self, name: str, password: str) -> bool:
        return verify(self.stored_hash(name), password)

    def count(self) -> int:
        n = len(self.config_users)
        if self.sessions is not None:
            with self.sessions() as s:
                n += int(s.scalar(select(func.count()).select_from(WebUser)) or 0)
        return n


def add_user(session: Session, name: str, password_hash: str, now: dt.datetime, replace: bool = False) -> bool:
    """Add ``name`` (or, with ``replace``, set its password). -> True when the user is new."""
    name = check_name(name)
    row = session.scalar(select(WebUser).where(WebUser.name == name))
    if row is not None:
        if not replace:
            raise UserError(f"user {name!r} exists (set a new password with: triage-node user passwd {name})")
        row.password_hash, row.updated_at = password_hash, now
        return False
    session.add(WebUser(name=name, password_hash=password_hash, created_at=now, updated_at=now))
    return True


def set_password(session: Session, name: str, password_hash: str, now: dt.datetime) -> None:
    row = session.scalar(select(WebUser).where(WebUser.name == check_name(name)))
    if row is None:
        raise UserError(f"no user {name!r} in the database (add one with: triage-node user add {name})")
    row.password_hash, row.updated_at = password_hash, now


def remove_user(session: Session, name: str) -> None:
    row = session.scalar(select(WebUser).where(WebUser.name == name))
    if row is None:
        raise UserError(f"no user {name!r} in the database")
    session.delete(row)


def list_users(session: Session, config_users: Sequence[User] = ()) -> list[UserRow]:
    rows = [UserRow(u.name, "config", None, None) for u in config_users]
    for u in session.scalars(select(WebUser).order_by(WebUser.name)):
        rows.append(UserRow(u.name, "database", u.created_at, u.updated_at))
    return rows
