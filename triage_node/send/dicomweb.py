"""STOW-RS client for ``type: dicomweb`` destinations: a batch is one ``POST {url}/studies`` with a
``multipart/related; type="application/dicom"`` body, and each object's outcome comes from the response's Referenced
and Failed SOP Sequences (PS3.18 10.5.3). With ``qido_check`` every stored object is then looked up with QIDO-RS
(``GET {url}/instances?SOPInstanceUID=``), the DICOMweb counterpart of storage commitment: one that the archive
acknowledged but does not list is sent again.

The outbox (send/outbox.py) gives this the same retries, backoff, dead letters and exactly-once as C-STORE: the rows
are per (job, destination, kind) and the objects keep their UIDs, so a resend replaces what the archive holds.
Like ``send/scu.send_batch`` nothing raises past ``send_batch``: every failure is a ``SendResult``.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from triage_node.config import Destination
from triage_node.send.scu import Outcome, Outgoing, SendResult, classify

log = logging.getLogger(__name__)


def _read(items: Sequence[Outgoing]) -> tuple[list[tuple[Outgoing, bytes]], list[SendResult]]:
    ready, failed = [], []
    for item in items:
        try:
            data = Path(item.path).read_bytes()
        except OSError as exc:
            failed.append(SendResult(item.key, Outcome.PERMANENT, None, f"cannot read {item.path}: {exc}"))
            continue
        if item.sop_instance_uid.encode() not in data[:4096]:
            failed.append(SendResult(item.key, Outcome.PERMANENT, None, f"{item.path} holds another SOP instance"))
            continue
        ready.append((item, data))
    return ready, failed


def multipart(parts: Sequence[bytes]) -> tuple[str, bytes]:
    """The Content-Type and body of a STOW-RS request holding ``parts`` (DICOM Part 10 files)."""
    digest = hashlib.sha256()
    for data in parts:
        digest.update(hashlib.sha256(data).digest())
    boundary = f"triage-node-{digest.hexdigest()[:32]}"
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + data + b"\r\n" for data in parts
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body


def _uids(payload: Any, tag: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not isinstance(payload, dict):
        return out
    for item in (payload.get(tag) or {}).get("Value") or []:
        uid = ((item.get("00081155") or {}).get("Value") or [None])[0]
        if uid:
            out[str(uid)] = item
    return out


def _reason(item: dict[str, Any], tag: str) -> int | None:
    value = (item.get(tag) or {}).get("Value") or []
    return int(value[0]) if value else None


def _client(dest: Destination) -> httpx.Client:
    headers = {"Accept": "application/dicom+json"}
    if dest.token:
        headers["Authorization"] = f"Bearer {dest.token}"
    verify: ssl.SSLContext | bool = True
    if dest.tls.ca_file is not None:
        verify = ssl.create_default_context(cafile=str(dest.tls.ca_file))
        if dest.tls.cert_file is not None and dest.tls.key_file is not None:
            verify.load_cert_chain(str(dest.tls.cert_file), str(dest.tls.key_file))
    return httpx.Client(headers=headers, timeout=dest.timeout_s, verify=verify, follow_redirects=False)


def send_batch(dest: Destination, calling_ae: str, items: Sequence[Outgoing]) -> list[SendResult]:
    """STOW-RS ``items`` to ``dest`` in one request; one result per item."""
    ready, results = _read(items)
    if not ready:
        return results
    base = (dest.url or "").rstrip("/")
    content_type, body = multipart([data for _, data in ready])
    try:
        with _client(dest) as client:
            response = client.post(f"{base}/studies", content=body, headers={"Content-Type": content_type})
            outcome = _outcomes(dest, ready, response)
            if dest.qido_check:
                outcome = _qido_check(client, base, dest, ready, outcome)
    except httpx.HTTPError as exc:
        why = f"{type(exc).__name__}: {exc}"
        log.warning("destination %s: STOW-RS failed (%s); %d item(s) will retry", dest.name, why, len(ready))
        return results + [SendResult(item.key, Outcome.RETRY, None, why) for item, _ in ready]
    return results + outcome


def _outcomes(dest: Destination, ready: list[tuple[Outgoing, bytes]], response: httpx.Response) -> list[SendResult]:
    status = response.status_code
    if status in (400, 413, 415):  # the request as such can never be accepted
        why = f"STOW-RS answered HTTP {status}"
        log.warning("destination %s: %s; %d item(s) dead-lettered", dest.name, why, len(ready))
        return [SendResult(item.key, Outcome.PERMANENT, None, why) for item, _ in ready]
    if status not in (200, 202, 409):  # 401/403 (a token to fix), 404, 5xx, a proxy's error page: retry
        why = f"STOW-RS answered HTTP {status}"
        log.warning("destination %s: %s; %d item(s) will retry", dest.name, why, len(ready))
        return [SendResult(item.key, Outcome.RETRY, None, why) for item, _ in ready]
    try:
        payload = response.json() if response.content else {}
    except ValueError:
        payload = {}
    stored, failed = _uids(payload, "00081199"), _uids(payload, "00081198")
    out = []
    for item, _ in ready:
        if item.sop_instance_uid in failed:
            reason = _reason(failed[item.sop_instance_uid], "00081197")
            code = reason if reason is not None else 0x0110
            verdict = classify(code)
            if verdict is Outcome.DELIVERED:
                verdict = Outcome.RETRY
            out.append(SendResult(item.key, verdict, code, f"STOW-RS failure reason 0x{code:04X}"))
        elif item.sop_instance_uid in stored or status == 200:
            warning = _reason(stored.get(item.sop_instance_uid, {}), "00081196")
            out.append(SendResult(item.key, Outcome.DELIVERED, warning or 0, None))
        else:
            out.append(SendResult(item.key, Outcome.RETRY, None, f"HTTP {status} without this instance in the answer"))
    return out


def _qido_check(
    client: httpx.Client, base: str, dest: Destination, ready: list[tuple[Outgoing, bytes]], results: list[SendResult]
) -> list[SendResult]:
    """Look each delivered object up with QIDO-RS; one the archive does not list is sent again."""
    uid_of = {item.key: item.sop_instance_uid for item, _ in ready}
    checked = []
    for r in results:
        if r.outcome is Outcome.DELIVERED:
            uid = uid_of[r.key]
            found = client.get(f"{base}/instances", params={"SOPInstanceUID": uid})
            listed = found.status_code == 200 and bool(found.content) and any(
                uid in ((hit.get("00080018") or {}).get("Value") or []) for hit in found.json()
            )
            if not listed:
                log.warning("destination %s: %s acknowledged but not listed by QIDO-RS (HTTP %d)",
                            dest.name, uid, found.status_code)
                r = SendResult(r.key, Outcome.RETRY, r.status, f"QIDO-RS does not list it (HTTP {found.status_code})")
        checked.append(r)
    return checked


__all__ = ["multipart", "send_batch"]
