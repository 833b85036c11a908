"""Sending on one channel: failures become NotificationError without the webhook's secret path."""

from __future__ import annotations

import datetime as dt

import pytest
from notify_fixtures import Receiver, Sink, free_port

from triage_node.config import Email
from triage_node.notify.channels import NotificationError, post_webhook, redact, send_email

NOW = dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)


def test_redact_keeps_only_scheme_host_and_port() -> None:
    assert redact("https://hooks.slack.com/services/T0/B0/xyz?token=1") == "https://hooks.slack.com/…"
    assert redact("http://127.0.0.1:8099/hook/secret") == "http://127.0.0.1:8099/…"


def test_webhook_refused_connection_names_the_peer_not_the_secret() -> None:
    url = f"http://127.0.0.1:{free_port()}/hook/s3cr3t"
    with pytest.raises(NotificationError, match=r"webhook http://127\.0\.0\.1:\d+/…: ConnectError") as info:
        post_webhook(url, {"a": 1}, timeout_s=2)
    assert "s3cr3t" not in str(info.value)


def test_webhook_non_2xx_is_an_error(receiver: Receiver) -> None:
    receiver.statuses[:] = [404]
    with pytest.raises(NotificationError, match=r"answered HTTP 404"):
        post_webhook(receiver.url(), {"a": 1}, timeout_s=2)
    assert receiver.requests[0].body == {"a": 1}


def test_email_to_a_closed_port_is_an_error() -> None:
    cfg = Email(smtp_host="127.0.0.1", smtp_port=free_port(), sender="t@example.org", recipients=("a@example.org",))
    with pytest.raises(NotificationError, match=r"smtp 127\.0\.0\.1:\d+: ConnectionRefusedError"):
        send_email(cfg, "subject", "body", NOW, timeout_s=2)


def test_email_headers(smtp: Sink) -> None:
    cfg = Email(
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        sender="t@example.org",
        recipients=("a@example.org", "b@example.org"),
    )
    send_email(cfg, "Hello", "Body text", NOW, timeout_s=5)
    ((rcpts, msg),) = smtp.messages
    assert rcpts == ["a@example.org", "b@example.org"]
    assert (msg["To"], msg["Subject"], msg["Date"]) == (
        "a@example.org, b@example.org",
        "Hello",
        "Sun, 01 Mar 2026 08:00:00 +0000",
    )
