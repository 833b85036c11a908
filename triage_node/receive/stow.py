"""STOW-RS receive (PS3.18 10.5): ``POST /dicomweb/studies`` and ``POST /dicomweb/studies/{study}`` with a
``multipart/related; type="application/dicom"`` body, served on its own HTTP listener in the receive role.

Every part goes through ``StorageSCP.store``, the C-STORE path itself: the file is fsynced under its final name and its
row committed (with series completion by declared size in the same transaction) before the response, so durability,
duplicates, versions, completion and routing are exactly those of a C-STORE. Each instance's outcome is its C-STORE
status: success and warnings are listed in the Referenced SOP Sequence (warnings with a Warning Reason), failures in
the Failed SOP Sequence with the status as Failure Reason. HTTP status: 200 all stored, 202 some failed or warned,
409 none stored (PS3.18 10.5.3).

Senders are allowed by bearer token (``dicomweb.allowed_senders``, the counterpart of ``scp.allowed_callers``): the
sender's name becomes the instances' calling AE, and an entry with ``host`` only accepts that peer address.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from triage_node.config import DicomWeb, StowSender
from triage_node.receive.contexts import (
    STATUS_CANNOT_UNDERSTAND,
    STATUS_DATASET_DOES_NOT_MATCH,
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
)
from triage_node.receive.header import file_meta_prefix

log = logging.getLogger(__name__)

STATUS_SOP_CLASS_NOT_SUPPORTED = 0x0122  # PS3.18 table 10.5.3-3 failure reasons are C-STORE statuses
STATUS_TRANSFER_SYNTAX_NOT_SUPPORTED = 0xC122
DICOM_JSON = "application/dicom+json"

Store = Callable[[str, str, str, str, str, memoryview, int], int]


class StowError(ValueError):
    """The request as a whole cannot be read (HTTP 400 / 415)."""

    def __init__(self, http_status: int, message: str):
        super().__init__(message)
        self.http_status = http_status


@dataclass(frozen=True)
class Part10:
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset: memoryview  # the data set after the file meta


def boundary_of(content_type: str) -> str:
    """The boundary of a ``multipart/related; type="application/dicom"`` request; StowError(415) otherwise."""
    main, _, params = content_type.partition(";")
    if main.strip().lower() != "multipart/related":
        raise StowError(415, f"Content-Type must be multipart/related, got {main.strip() or '(none)'}")
    values = {
        m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
        for m in re.finditer(r'\s*([\w-]+)\s*=\s*(?:"([^"]*)"|([^;\s]+))', params)
    }
    kind = values.get("type", "application/dicom").lower()
    if kind != "application/dicom":
        raise StowError(415, f"only type=application/dicom parts are accepted (no metadata + bulk data), got {kind}")
    boundary = values.get("boundary")
    if not boundary:
        raise StowError(400, "multipart/related without a boundary")
    return boundary


def split_parts(body: bytes, boundary: str) -> list[tuple[dict[str, str], memoryview]]:
    """The parts of a multipart body (RFC 2046): (headers with lower-case names, content) each."""
    delimiter = b"--" + boundary.encode("latin-1")
    view = memoryview(body)
    start = body.find(delimiter)
    if start < 0:
        raise StowError(400, "the body holds no multipart boundary")
    parts: list[tuple[dict[str, str], memoryview]] = []
    pos = start + len(delimiter)
    while True:
        if body.startswith(b"--", pos):
            break  # the close delimiter
        line_end = body.find(b"\r\n", pos)
        if line_end < 0:
            raise StowError(400, "truncated multipart body")
        head_end = body.find(b"\r\n\r\n", line_end)
        if head_end < 0 or line_end > head_end:
            raise StowError(400, "a multipart part has no header block")
        headers: dict[str, str] = {}
        if head_end > line_end:
            for line in body[line_end + 2 : head_end].decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        content_start = head_end + 4
        nxt = body.find(b"\r\n" + delimiter, head_end + 2)  # the CRLF before a delimiter belongs to it
        if nxt < 0:
            raise StowError(400, "truncated multipart body (no closing boundary)")
        parts.append((headers, view[content_start : max(nxt, content_start)]))
        pos = nxt + 2 + len(delimiter)
    return parts


_LONG_VRS = {b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN", b"OD", b"OL", b"OV", b"UC", b"UR"}


def read_part10(data: memoryview) -> Part10:
    """The file meta of a DICOM Part 10 stream (explicit VR little endian group 0002) and where its data set starts."""
    raw = bytes(data[:132])
    if len(raw) < 132 or raw[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 stream (no DICM prefix)")
    pos, meta = 132, {}
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if group != 0x0002:
            break
        vr = bytes(data[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            (length,) = struct.unpack_from("<I", data, pos + 8)
            value_at = pos + 12
        else:
            (length,) = struct.unpack_from("<H", data, pos + 6)
            value_at = pos + 8
        if value_at + length > len(data):
            raise ValueError("truncated file meta information")
        meta[element] = bytes(data[value_at : value_at + length]).rstrip(b"\0 ").decode("ascii", "replace")
        pos = value_at + length
    try:
        sop_class, sop_uid, syntax = meta[0x0002], meta[0x0003], meta[0x0010]
    except KeyError as exc:
        raise ValueError(f"file meta information lacks (0002,{exc.args[0]:04X})") from exc
    return Part10(sop_class, sop_uid, syntax, data[pos:])


def study_uid(part: Part10) -> str | None:
    """The Study Instance UID of the data set (for POST /studies/{study}); None when it cannot be found cheaply."""
    try:
        from io import BytesIO

        import pydicom

        prefix = file_meta_prefix(part.sop_class_uid, part.sop_instance_uid, part.transfer_syntax_uid)
        ds = pydicom.dcmread(BytesIO(prefix + bytes(part.dataset)), stop_before_pixels=True)
        return str(ds.StudyInstanceUID) if "StudyInstanceUID" in ds else None
    except Exception:
        return None


def _sequence_item(
    sop_class: str, sop_uid: str, reason_tag: str | None = None, reason: int | None = None
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
        "00081155": {"vr": "UI", "Value": [sop_uid]} if sop_uid else {"vr": "UI"},
    }
    if reason_tag is not None and reason is not None:
        item[reason_tag] = {"vr": "US", "Value": [reason]}
    return item


class StowService:
    """The sender check and the per-part store of one STOW-RS request; ``store`` is ``StorageSCP.store``."""

    def __init__(self, cfg: DicomWeb, store: Store):
        self.cfg = cfg
        self.store = store

    def reload(self, cfg: DicomWeb) -> None:
        self.cfg = cfg

    def sender(self, authorization: str | None, address: str | None) -> StowSender | None:
        """The allowed sender this bearer token (and peer address) belongs to, or None."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return None
        digest = hashlib.sha256(authorization[7:].strip().encode()).hexdigest()
        for s in self.cfg.allowed_senders:
            want = s.token_sha256 or hashlib.sha256((s.token or "").encode()).hexdigest()
            if hmac.compare_digest(digest, want) and (s.host is None or s.host == address):
                return s
        return None

    def store_all(
        self, sender: str, content_type: str, body: bytes, study: str | None, base_url: str
    ) -> tuple[int, dict[str, Any]]:
        """Store every part; return the HTTP status and the DICOM JSON response body."""
        parts = split_parts(body, boundary_of(content_type))
        if not parts:
            raise StowError(400, "the request holds no parts")
        referenced: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        for headers, content in parts:
            ctype = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
            try:
                if ctype != "application/dicom":
                    raise _Refusal("", "", STATUS_SOP_CLASS_NOT_SUPPORTED, f"part of type {ctype}")
                status, item = self._store_one(sender, content, study)
            except _Refusal as r:
                log.warning("STOW-RS of %s from %s refused with 0x%04X: %s", r.sop_uid or "?", sender, r.status, r.why)
                failed.append(_sequence_item(r.sop_class, r.sop_uid, "00081197", r.status))
                continue
            if status == 0 or 0xB000 <= status <= 0xBFFF:
                if status:
                    item["00081196"] = {"vr": "US", "Value": [status]}
                referenced.append(item)
            else:
                failed.append({**item, "00081197": {"vr": "US", "Value": [status]}})
        response: dict[str, Any] = {}
        if study is not None:
            response["00081190"] = {"vr": "UR", "Value": [f"{base_url}/studies/{study}"]}
        if failed:
            response["00081198"] = {"vr": "SQ", "Value": failed}
        if referenced:
            response["00081199"] = {"vr": "SQ", "Value": referenced}
        warned = any("00081196" in item for item in referenced)
        if not referenced:
            return 409, response
        return (202 if failed or warned else 200), response

    def _store_one(self, sender: str, content: memoryview, study: str | None) -> tuple[int, dict[str, Any]]:
        try:
            part = read_part10(content)
        except (ValueError, struct.error) as exc:
            raise _Refusal("", "", STATUS_CANNOT_UNDERSTAND, str(exc)) from exc
        item = _sequence_item(part.sop_class_uid, part.sop_instance_uid)
        if part.sop_class_uid not in STORAGE_SOP_CLASSES:
            raise _Refusal(part.sop_class_uid, part.sop_instance_uid, STATUS_SOP_CLASS_NOT_SUPPORTED, "SOP class")
        if part.transfer_syntax_uid not in TRANSFER_SYNTAXES:
            raise _Refusal(
                part.sop_class_uid,
                part.sop_instance_uid,
                STATUS_TRANSFER_SYNTAX_NOT_SUPPORTED,
                f"transfer syntax {part.transfer_syntax_uid}",
            )
        if study is not None and study_uid(part) != study:
            raise _Refusal(
                part.sop_class_uid,
                part.sop_instance_uid,
                STATUS_DATASET_DOES_NOT_MATCH,
                "Study Instance UID differs from the one in the request URL",
            )
        # The stored file is what a C-STORE of the same data set stores: our file meta, then the sender's data set.
        prefix = file_meta_prefix(part.sop_class_uid, part.sop_instance_uid, part.transfer_syntax_uid)
        data = memoryview(prefix + bytes(part.dataset))
        status = self.store(
            sender,
            part.sop_class_uid,
            part.sop_instance_uid,
            part.sop_class_uid,
            part.transfer_syntax_uid,
            data,
            len(prefix),
        )
        return status, item


@dataclass
class _Refusal(Exception):
    sop_class: str
    sop_uid: str
    status: int
    why: str


def create_stow_app(service: StowService) -> FastAPI:
    """The FastAPI app of the DICOMweb listener (STOW-RS only)."""
    app = FastAPI(title="triage-node DICOMweb (STOW-RS)", docs_url=None, redoc_url=None, openapi_url=None)
    limit = service.cfg.max_request_mb * 1024 * 1024

    async def handle(request: Request, study: str | None) -> JSONResponse:
        address = request.client.host if request.client else None
        sender = service.sender(request.headers.get("authorization"), address)
        if sender is None:
            log.warning("STOW-RS from %s refused: no or unknown bearer token for this address", address)
            return JSONResponse(
                {"detail": "a bearer token from dicomweb.allowed_senders is required"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer realm="triage-node"'},
            )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return JSONResponse({"detail": f"request larger than {service.cfg.max_request_mb} MB"}, status_code=413)
            chunks.append(chunk)
        body = b"".join(chunks)
        base = str(request.base_url).rstrip("/") + "/dicomweb"
        from starlette.concurrency import run_in_threadpool

        try:
            status, payload = await run_in_threadpool(
                service.store_all, sender.name, request.headers.get("content-type", ""), body, study, base
            )
        except StowError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=exc.http_status)
        stored = len(payload.get("00081199", {}).get("Value", []))
        log.info(
            "STOW-RS from %s: %d stored, %d failed",
            sender.name,
            stored,
            len(payload.get("00081198", {}).get("Value", [])),
        )
        return JSONResponse(payload, status_code=status, media_type=DICOM_JSON)

    @app.post("/dicomweb/studies")
    async def stow(request: Request) -> JSONResponse:
        return await handle(request, None)

    @app.post("/dicomweb/studies/{study}")
    async def stow_study(request: Request, study: str) -> JSONResponse:
        return await handle(request, study)

    return app


class StowServer:
    """The DICOMweb listener: uvicorn in a thread of its own, on ``dicomweb.host:port``."""

    def __init__(self, cfg: DicomWeb, store: Store):
        self.service = StowService(cfg, store)
        self.cfg = cfg
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._server is not None and self._server.servers:
            return int(self._server.servers[0].sockets[0].getsockname()[1])
        return self.cfg.port

    def start(self) -> None:
        import uvicorn

        self._server = uvicorn.Server(
            uvicorn.Config(
                create_stow_app(self.service),
                host=self.cfg.host,
                port=self.cfg.port,
                log_level="warning",
                access_log=False,
                lifespan="off",
            )
        )
        self._thread = threading.Thread(target=self._server.run, name="dicomweb", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.02)
        if not self._server.started:
            raise RuntimeError(f"DICOMweb listener could not start on {self.cfg.host}:{self.cfg.port}")
        log.info(
            "DICOMweb STOW-RS on http://%s:%d/dicomweb/studies (%d sender(s) allowed)",
            self.cfg.host,
            self.port,
            len(self.cfg.allowed_senders),
        )

    def stop(self) -> None:
        """Refuse new requests; a request being stored finishes (uvicorn waits for it)."""
        if self._server is not None:
            self._server.should_exit = True
            if self._thread is not None:
                self._thread.join(timeout=30)
            self._server = None
