"""Sending one message on one channel: an HTTP webhook or SMTP. The network edge: every failure becomes a
NotificationError whose text names the peer but never a webhook's path or query (Slack and Teams put the secret
there)."""

from __future__ import annotations

import datetime as dt
import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any
from urllib.parse import urlsplit

import httpx

from triage_node.config import Email

log = logging.getLogger(__name__)


class NotificationError(RuntimeError):
    """A message could not be delivered; the text is safe to store and log."""


def redact(url: str) -> str:
    """``https://hooks.slack.com/services/T0/B0/secret`` -> ``https://hooks.slack.com/…``"""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}{f':{parts.port}' if parts.port else ''}/…"


def post_webhook(url: str, payload: dict[str, Any], timeout_s: float) -> None:
    """POST ``payload`` as JSON; any 2xx answer is success. Redirects are not followed."""
    where = redact(url)
    try:
        response = httpx.post(url, json=payload, timeout=timeout_s, follow_redirects=False)
    except httpx.HTTPError as exc:
        raise NotificationError(f"webhook {where}: {type(exc).__name__}: {str(exc).replace(url, where)}") from exc
    if not 200 <= response.status_code < 300:
        raise NotificationError(f"webhook {where} answered HTTP {response.status_code}")


def send_email(cfg: Email, subject: str, body: str, now: dt.datetime, timeout_s: float) -> None:
    """One plain-text message to all ``cfg.recipients`` (STARTTLS and login when configured)."""
    msg = EmailMessage()
    msg["From"] = cfg.sender
    msg["To"] = ", ".join(cfg.recipients)
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = make_msgid(domain="triage-node.invalid")
    msg.set_content(body)
    where = f"{cfg.smtp_host}:{cfg.smtp_port}"
    try:
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=timeout_s) as smtp:
            if cfg.starttls:
                smtp.starttls(context=ssl.create_default_context())
            if cfg.username:
                smtp.login(cfg.username, cfg.password or "")
            refused = smtp.send_message(msg)
    except (smtplib.SMTPException, OSError) as exc:
        raise NotificationError(f"smtp {where}: {type(exc).__name__}: {exc}") from exc
    if refused:
        log.warning("smtp %s refused %d of %d recipients", where, len(refused), len(cfg.recipients))
