"""Passwords, session cookies and CSRF tokens."""

from __future__ import annotations

import datetime as dt

import pytest
from web_fixtures import Clock

from triage_node.config import User
from triage_node.web.auth import SessionCodec, hash_password, tokens_match, verify_password

T = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


def test_hash_password_makes_an_argon2id_hash_that_verifies() -> None:
    digest = hash_password("s3cret pass")
    assert digest.startswith("$argon2id$")
    users = (User(name="ana", password_hash=digest),)
    assert verify_password(users, "ana", "s3cret pass")
    assert not verify_password(users, "ana", "wrong")
    assert not verify_password(users, "bob", "s3cret pass")


def test_hash_password_refuses_an_empty_password() -> None:
    with pytest.raises(ValueError, match="password must not be empty"):
        hash_password("")


def test_a_broken_hash_in_the_config_refuses_login() -> None:
    assert not verify_password((User(name="ana", password_hash="not-a-hash"),), "ana", "x")


def test_session_round_trip_and_idle_timeout() -> None:
    clock = Clock(T)
    codec = SessionCodec("k", timeout_s=600, clock=clock)
    cookie = codec.dump(codec.start("ana"))
    loaded = codec.load(cookie)
    assert loaded is not None and loaded.user == "ana" and loaded.login_at == T.timestamp()
    clock.advance(seconds=600)
    assert codec.load(cookie) is not None
    clock.advance(seconds=1)
    assert codec.load(cookie) is None
    assert codec.load(codec.dump(codec.touch(loaded))) is not None  # activity restarts the idle timer


def test_session_signed_with_another_key_or_tampered_is_refused() -> None:
    clock = Clock(T)
    cookie = SessionCodec("key-a", 600, clock).dump(SessionCodec("key-a", 600, clock).start("ana"))
    assert SessionCodec("key-b", 600, clock).load(cookie) is None
    assert SessionCodec("key-a", 600, clock).load(cookie[:-2] + "xx") is None
    assert SessionCodec("key-a", 600, clock).load("") is None


def test_login_form_token_is_separate_from_sessions() -> None:
    codec = SessionCodec("k", 600, Clock(T))
    signed = codec.dump_login("tok")
    assert codec.load_login(signed) == "tok"
    assert codec.load(signed) is None  # another salt: a login-form cookie is never a session


def test_tokens_match() -> None:
    assert tokens_match("abc", "abc")
    assert not tokens_match("abc", "abd")
    assert not tokens_match("abc", None)
    assert not tokens_match("abc", "")
